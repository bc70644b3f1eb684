"""``AnthropicCompat``: Anthropic's Messages API (``POST /v1/messages``, and
``/v1/messages/count_tokens``), translated to one native chat exchange, so every agent,
command, alias, key and limit applies."""

from __future__ import annotations

from .._http import send_body
from .._json import dumps
from .._ndjson import DEFAULT_MAX_LINE_BYTES
from ..entry import DEFAULT_MAX_BODY, BodyLimits, run_exchange
from ..errors import ProxyError
from ..exchange import Exchange
from ..routing import route_of
from ..types import ASGIApp, Receive, Scope, Send
from .render import MessagesEncoder
from .translate import estimate_tokens, messages_request


class AnthropicCompat:
    """``AnthropicCompat(app, *, max_body_bytes=64 MiB, max_messages=None,
    max_json_objects=None, max_line_bytes=16 MiB)``. Other paths pass through to ``app``."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int = DEFAULT_MAX_BODY,
        max_messages: int | None = None,
        max_json_objects: int | None = None,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    ) -> None:
        self.app = app
        self.limits = BodyLimits(max_body_bytes, max_messages, max_json_objects, max_line_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = route_of(scope)
        if scope["type"] != "http" or route.family != "anthropic":
            await self.app(scope, receive, send)
            return
        if scope["method"] != "POST":
            raise ProxyError(
                f"{scope['method']} is not allowed on {route.path}; use POST", status_code=405
            )
        body = await self.limits.read_object(scope, receive)
        self.limits.check_messages(body.get("messages"))
        if route.kind == "count_tokens":
            # Ollama counts no tokens before a run: an estimate, as Anthropic's own is.
            body.setdefault("max_tokens", 1)
            request, _ = messages_request(body)
            await send_body(send, 200, dumps({"input_tokens": estimate_tokens(request)}))
            return
        request, options = messages_request(body)
        exchange = Exchange("chat", request, dialect="anthropic")
        await run_exchange(
            self.app,
            scope,
            receive,
            send,
            exchange,
            MessagesEncoder(options),
            path="/api/chat",
            max_line_bytes=self.limits.max_line_bytes,
        )


__all__ = ["AnthropicCompat"]
