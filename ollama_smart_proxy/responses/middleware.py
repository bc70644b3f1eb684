"""OpenAI's Responses API (``POST /v1/responses``) as a dialect of the model entry,
translated to one native chat exchange, so every agent, command, alias, key and limit
applies; and ``ResponsesCompat``, that entry alone."""

from __future__ import annotations

from typing import Unpack

from ..entry import BodyLimits, Dialect, Endpoint, LimitOptions, ModelEntry, Translation
from ..exchange import Exchange
from ..types import ASGIApp
from .render import ResponsesEncoder
from .translate import responses_request


def responses_dialect(*, default_max_output_tokens: int | None = None) -> Dialect:
    """``default_max_output_tokens`` caps generation for requests that name no
    ``max_output_tokens`` (Codex sends none). Codex first tries a WebSocket on ``GET
    /v1/responses``: it gets a plain 405 at once, and falls back to POST."""

    def translate(raw: bytes, limits: BodyLimits) -> Translation:
        body = limits.parse_object(raw)
        limits.check_messages(body.get("input"))
        request, options = responses_request(body, default_max_output_tokens)
        exchange = Exchange("chat", request, dialect="responses")
        return Translation(exchange, ResponsesEncoder(options), "/api/chat")

    return Dialect("responses", "responses", {"responses": Endpoint(("POST",), translate)})


class ResponsesCompat(ModelEntry):
    """``ResponsesCompat(app, *, default_max_output_tokens=None, max_body_bytes=64 MiB,
    max_messages=None, max_json_objects=None, max_line_bytes=16 MiB)``: see
    :func:`responses_dialect`. Other paths pass through to ``app``."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        default_max_output_tokens: int | None = None,
        **limits: Unpack[LimitOptions],
    ) -> None:
        dialect = responses_dialect(default_max_output_tokens=default_max_output_tokens)
        super().__init__(app, dialects=[dialect], **limits)


__all__ = ["ResponsesCompat", "responses_dialect"]
