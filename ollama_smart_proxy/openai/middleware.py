"""``OpenAICompat``: the OpenAI API, translated to Ollama's native one, as ASGI middleware."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .._http import send_body, side_request
from .._json import dumps, loads
from .._ndjson import DEFAULT_MAX_LINE_BYTES
from .._pipeline import error_message
from ..entry import DEFAULT_MAX_BODY, BodyLimits, run_exchange
from ..errors import ProxyError, UpstreamError, UpstreamStatusError
from ..exchange import Exchange
from ..routing import route_of
from ..types import ASGIApp, Receive, Scope, Send
from .render import (
    ChatCompletionEncoder,
    CompletionEncoder,
    EmbeddingEncoder,
    alias_object,
    model_object,
    models_list,
)
from .translate import (
    Unsupported,
    chat_request,
    completion_request,
    embedding_request,
)


class OpenAICompat:
    """Serve ``/v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings`` and
    ``/v1/models[/{model}]`` (also without ``/v1``) in front of an ASGI app that speaks
    Ollama's native API.

    Each request is translated into one native exchange (so agents and the model loader
    below see a canonical native request) on ``/api/chat``, ``/api/generate`` or
    ``/api/embed``, and the native answer is encoded back as OpenAI JSON or SSE. Other
    paths pass through to ``app``.

    ``OpenAICompat(app, *, unsupported="error", aliases={}, max_body_bytes=64 MiB,
    max_messages=None, max_json_objects=None, max_line_bytes=16 MiB)``: ``unsupported`` is what happens to OpenAI
    fields Ollama cannot honour (a 400 naming the field, or ``"ignore"``); ``aliases`` are
    listed by ``/v1/models``.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        unsupported: Unsupported = "error",
        aliases: Mapping[str, str] | None = None,
        max_body_bytes: int = DEFAULT_MAX_BODY,
        max_messages: int | None = None,
        max_json_objects: int | None = None,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    ) -> None:
        if unsupported not in ("error", "ignore"):
            raise ValueError("unsupported must be 'error' or 'ignore'")
        self.app = app
        self.unsupported: Unsupported = unsupported
        self.aliases = dict(aliases or {})
        self.limits = BodyLimits(max_body_bytes, max_messages, max_json_objects, max_line_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = route_of(scope)
        if route.family != "openai":
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        if route.kind in ("openai.models", "openai.model"):
            if method not in ("GET", "HEAD"):
                raise ProxyError(f"{method} is not allowed on {route.path}", status_code=405)
            if route.kind == "openai.models":
                await self._list_models(scope, send)
            else:
                await self._retrieve_model(scope, send, route.path.split("/models/", 1)[1])
            return
        if method != "POST":
            raise ProxyError(f"{method} is not allowed on {route.path}; use POST", status_code=405)
        body = await self.limits.read_object(scope, receive)
        exchange, encoder, path = self._translate(route.kind, body)
        await run_exchange(
            self.app,
            scope,
            receive,
            send,
            exchange,
            encoder,
            path=path,
            max_line_bytes=self.limits.max_line_bytes,
        )

    def _translate(self, kind: str, body: dict[str, Any]) -> tuple[Exchange, Any, str]:
        if kind == "openai.chat":
            self.limits.check_messages(body.get("messages"))
            chat, options = chat_request(body, self.unsupported)
            encoder: Any = ChatCompletionEncoder(
                options.model, options.stream, options.include_usage
            )
            return Exchange("chat", chat, dialect="openai"), encoder, "/api/chat"
        if kind == "openai.completions":
            generate, options = completion_request(body, self.unsupported)
            encoder = CompletionEncoder(options.model, options.stream, options.include_usage)
            return Exchange("generate", generate, dialect="openai"), encoder, "/api/generate"
        embed, model, fmt = embedding_request(body)
        encoder = EmbeddingEncoder(model, fmt)
        return Exchange("embed", embed, dialect="openai"), encoder, "/api/embed"

    async def _native_json(self, scope: Scope, method: str, path: str, body: bytes = b"") -> Any:
        status, data = await side_request(self.app, scope, method, path, body)
        if status != 200:
            raise UpstreamStatusError(error_message(data, status), status_code=status)
        try:
            return loads(data)
        except ValueError:
            raise UpstreamError(f"Ollama answered {path} with a body that is not JSON") from None

    async def _list_models(self, scope: Scope, send: Send) -> None:
        tags = await self._native_json(scope, "GET", "/api/tags")
        if not isinstance(tags, dict):
            raise UpstreamError("Ollama answered /api/tags with something that is not an object")
        await send_body(send, 200, dumps(models_list(tags, self.aliases)))

    async def _retrieve_model(self, scope: Scope, send: Send, model: str) -> None:
        if model in self.aliases:
            await send_body(send, 200, dumps(alias_object(model)))
            return
        shown = await self._native_json(scope, "POST", "/api/show", dumps({"model": model}))
        modified = shown.get("modified_at") if isinstance(shown, dict) else None
        await send_body(send, 200, dumps(model_object(model, modified)))


__all__ = ["OpenAICompat"]
