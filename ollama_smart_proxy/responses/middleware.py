"""``ResponsesCompat``: OpenAI's Responses API (``POST /v1/responses``), translated to one
native chat exchange, so every agent, command, alias, key and limit applies."""

from __future__ import annotations

from .._ndjson import DEFAULT_MAX_LINE_BYTES
from ..entry import DEFAULT_MAX_BODY, BodyLimits, run_exchange
from ..errors import ProxyError
from ..exchange import Exchange
from ..routing import route_of
from ..types import ASGIApp, Receive, Scope, Send
from .render import ResponsesEncoder
from .translate import responses_request


class ResponsesCompat:
    """``ResponsesCompat(app, *, default_max_output_tokens=None, max_body_bytes=64 MiB,
    max_messages=None, max_json_objects=None, max_line_bytes=16 MiB)``.

    ``default_max_output_tokens`` caps generation for requests that name no
    ``max_output_tokens`` (Codex sends none). Other paths pass through to ``app``.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        default_max_output_tokens: int | None = None,
        max_body_bytes: int = DEFAULT_MAX_BODY,
        max_messages: int | None = None,
        max_json_objects: int | None = None,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    ) -> None:
        self.app = app
        self.default_max_output_tokens = default_max_output_tokens
        self.limits = BodyLimits(max_body_bytes, max_messages, max_json_objects, max_line_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or route_of(scope).family != "responses":
            await self.app(scope, receive, send)
            return
        if scope["method"] != "POST":
            # Codex first tries a WebSocket on GET /v1/responses: a plain 4xx, at once, and
            # it falls back to POST.
            raise ProxyError(
                f"{scope['method']} is not served on /v1/responses: POST a request",
                status_code=405,
            )
        body = await self.limits.read_object(scope, receive)
        self.limits.check_messages(body.get("input"))
        request, options = responses_request(body, self.default_max_output_tokens)
        exchange = Exchange("chat", request, dialect="responses")
        await run_exchange(
            self.app,
            scope,
            receive,
            send,
            exchange,
            ResponsesEncoder(options),
            path="/api/chat",
            max_line_bytes=self.limits.max_line_bytes,
        )


__all__ = ["ResponsesCompat"]
