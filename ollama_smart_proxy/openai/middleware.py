"""``OpenAICompat``: the OpenAI API, translated to Ollama's native one, as ASGI middleware."""

from __future__ import annotations

import json
from typing import Any

from starlette._utils import get_route_path

from .._responses import send_body
from ..encoders import dumps
from ..errors import ProxyError, send_error, send_proxy_error
from ..exchange import ClientDisconnected, Exchange, call_native, call_with_exchange, read_body
from ..settings import Settings
from ..types import ASGIApp, Receive, Scope, Send
from .encoders import (
    ChatCompletionEncoder,
    CompletionEncoder,
    EmbeddingEncoder,
    model_object,
    models_list,
    openai_error,
)
from .translate import OpenAIRequestError, chat_request, completion_request, embedding_request

#: OpenAI paths, served under /v1 and bare (none collides with a native route).
ROUTES = ("/chat/completions", "/completions", "/embeddings", "/models")


def openai_route(path: str) -> str | None:
    """The OpenAI route a path asks for (``/v1/models/x`` -> ``/models/x``), or ``None``."""
    sub = path[3:] if path.startswith("/v1/") else path
    if sub in ROUTES or sub.startswith("/models/"):
        return sub
    return None


class OpenAICompat:
    """Serve ``/v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings`` and
    ``/v1/models[/{model}]`` in front of an ASGI app that speaks Ollama's native API.

    Each request is translated into one native exchange (so agents and the model loader
    below see a canonical native request), the path is rewritten, and the native answer is
    encoded back as OpenAI JSON or SSE. Other paths pass through to ``app``.
    """

    def __init__(
        self, app: ASGIApp, *, settings: Settings | None = None, inner_encodes: bool = False
    ) -> None:
        self.app = app
        self.settings = settings or Settings()
        #: The app below always encodes responses itself (the proxy's own stack does).
        self.inner_encodes = inner_encodes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = get_route_path(scope)
        route = openai_route(path)
        if route is None:
            if path.startswith("/v1/") or path == "/v1":
                await send_error(send, "openai", f"no route for {scope['method']} {path}", 404)
            else:
                await self.app(scope, receive, send)
            return
        method = scope["method"]
        try:
            if route.startswith("/models"):
                if method not in ("GET", "HEAD"):
                    raise ProxyError(f"{method} is not allowed on {path}", status_code=405)
                if route == "/models":
                    await self._list_models(scope, receive, send)
                else:
                    await self._retrieve_model(scope, receive, send, route[len("/models/") :])
                return
            if method != "POST":
                raise ProxyError(f"{method} is not allowed on {path}; use POST", status_code=405)
            body = await self._read_json(scope, receive)
            exchange, native_path = self._translate(route, body)
        except ClientDisconnected:
            return
        except ProxyError as exc:
            await send_proxy_error(send, "openai", exc)
            return
        await call_with_exchange(
            self.app, scope, receive, send, exchange, native_path, inner_encodes=self.inner_encodes
        )

    async def _read_json(self, scope: Scope, receive: Receive) -> dict[str, Any]:
        raw = await read_body(scope, receive, self.settings.max_body_bytes)
        if not raw.strip():
            raise OpenAIRequestError("the request body is empty; send a JSON object")
        try:
            body = json.loads(raw)
        except ValueError as exc:
            raise OpenAIRequestError(f"the request body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise OpenAIRequestError("the request body must be a JSON object")
        return body

    def _translate(self, route: str, body: dict[str, Any]) -> tuple[Exchange, str]:
        policy = self.settings.openai_unsupported
        if route == "/chat/completions":
            chat, options = chat_request(body, policy)
            encoder: Any = ChatCompletionEncoder(
                options.model, options.stream, options.include_usage
            )
            return Exchange("chat", chat, dialect="openai", encoder=encoder), "/api/chat"
        if route == "/completions":
            generate, options = completion_request(body, policy)
            encoder = CompletionEncoder(options.model, options.stream, options.include_usage)
            return Exchange(
                "generate", generate, dialect="openai", encoder=encoder
            ), "/api/generate"
        embed, model, fmt = embedding_request(body)
        encoder = EmbeddingEncoder(model, fmt)
        return Exchange("embed", embed, dialect="openai", encoder=encoder), "/api/embed"

    async def _list_models(self, scope: Scope, receive: Receive, send: Send) -> None:
        status, body = await call_native(self.app, scope, "GET", "/api/tags")
        if status != 200:
            await send_body(send, *openai_error(status, body)[:2])
            return
        try:
            tags = json.loads(body)
        except ValueError:
            raise ProxyError("Ollama sent a model list that is not JSON", status_code=502) from None
        await send_body(send, 200, dumps(models_list(tags, self.settings.aliases)))

    async def _retrieve_model(self, scope: Scope, receive: Receive, send: Send, model: str) -> None:
        if model in self.settings.aliases:
            await send_body(
                send, 200, dumps({**model_object(model, None), "owned_by": "ollama-smart-proxy"})
            )
            return
        request = dumps({"model": model})
        status, body = await call_native(self.app, scope, "POST", "/api/show", request)
        if status != 200:
            await send_body(send, *openai_error(status, body)[:2])
            return
        try:
            shown = json.loads(body)
        except ValueError:
            raise ProxyError(
                "Ollama sent model details that are not JSON", status_code=502
            ) from None
        await send_body(send, 200, dumps(model_object(model, shown.get("modified_at"))))
