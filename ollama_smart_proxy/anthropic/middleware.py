"""Anthropic's Messages API (``POST /v1/messages``, and ``/v1/messages/count_tokens``) as a
dialect of the model entry, translated to one native chat exchange, so every agent, command,
alias, key and limit applies; and ``AnthropicCompat``, that entry alone."""

from __future__ import annotations

from dataclasses import replace
from typing import Unpack

from .._json import dumps
from ..entry import BodyLimits, Dialect, Endpoint, LimitOptions, ModelEntry, Translation
from ..exchange import Exchange
from ..types import ASGIApp, Scope
from .render import MessagesEncoder
from .translate import estimate_tokens, messages_request


def anthropic_dialect() -> Dialect:
    """``/v1/messages`` (translated) and ``/v1/messages/count_tokens`` (an estimate, as
    Anthropic's own is: Ollama counts no tokens before a run)."""

    def translate(raw: bytes, limits: BodyLimits) -> Translation:
        body = limits.parse_object(raw)
        limits.check_messages(body.get("messages"))
        request, options = messages_request(body)
        # message_start carries the prompt's tokens before Ollama has counted them (its own
        # /v1/messages sends an estimate, as Anthropic does the count).
        options = replace(options, input_estimate=estimate_tokens(request))
        exchange = Exchange("chat", request, dialect="anthropic")
        return Translation(exchange, MessagesEncoder(options), "/api/chat")

    async def count_tokens(scope: Scope, raw: bytes, limits: BodyLimits, app: ASGIApp) -> bytes:
        body = limits.parse_object(raw)
        limits.check_messages(body.get("messages"))
        body.setdefault("max_tokens", 1)
        request, _ = messages_request(body)
        return dumps({"input_tokens": estimate_tokens(request)})

    return Dialect(
        "anthropic",
        "anthropic",
        {
            "messages": Endpoint(("POST",), translate=translate),
            "count_tokens": Endpoint(("POST",), serve=count_tokens),
        },
    )


class AnthropicCompat(ModelEntry):
    """``AnthropicCompat(app, *, max_body_bytes=64 MiB, max_messages=None,
    max_json_objects=None, max_line_bytes=16 MiB)``: see :func:`anthropic_dialect`. Other
    paths pass through to ``app``."""

    def __init__(self, app: ASGIApp, **limits: Unpack[LimitOptions]) -> None:
        super().__init__(app, dialects=[anthropic_dialect()], **limits)


__all__ = ["AnthropicCompat", "anthropic_dialect"]
