"""``SmartProxy``: the composed ASGI application."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from types import TracebackType

import httpx
from starlette._utils import get_route_path

from . import health
from ._logging import AccessLogMiddleware, get_context
from .agents import Agent, AgentRegistry
from .errors import ProxyError, dialect_for_path, send_error, send_proxy_error
from .exchange import ClientDisconnected, call_with_exchange, get_exchange, parse_exchange
from .openai import OpenAICompat
from .openai.middleware import openai_route
from .settings import Settings
from .types import ASGIApp, Receive, Scope, Send
from .upstream import OllamaUpstream

logger = logging.getLogger("ollama_smart_proxy")

_COMPLETIONS = {"/api/chat": "chat", "/api/generate": "generate"}


class SmartProxy:
    """The proxy as one ASGI app.

    ``SmartProxy(settings=Settings(...), agents=[...], client=httpx.AsyncClient(...))``.
    The upstream client is opened lazily and closed by ASGI lifespan, by ``aclose()``, or
    by ``async with proxy:``; it works mounted under an app whose lifespan does not reach
    it.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        agents: Sequence[type[Agent]] = (),
        client: httpx.AsyncClient | None = None,
        builtins: bool = True,
        entry_points: bool = True,
    ) -> None:
        self.settings = settings or Settings()
        self.upstream = OllamaUpstream(self.settings, client=client)
        self.registry = AgentRegistry.discover(
            self.settings, agents, builtins=builtins, use_entry_points=entry_points
        )
        self.completion_app: ASGIApp = self.registry.build(self.upstream, self.settings)
        self.openai = OpenAICompat(self._native, settings=self.settings, inner_encodes=True)
        self._app = AccessLogMiddleware(self._route)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            await self._app(scope, receive, send)
        # websockets: nothing here speaks them; closing the scope refuses them.

    @property
    def agent_names(self) -> list[str]:
        """The agents that run, outermost first."""
        return [spec.name for spec in self.registry.ordered()]

    async def startup(self) -> None:
        """Open the upstream client (it is also opened lazily on first use)."""
        _ = self.upstream.client

    async def aclose(self) -> None:
        """Close the upstream client."""
        await self.upstream.aclose()

    async def __aenter__(self) -> SmartProxy:
        await self.startup()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = get_route_path(scope)
        method = scope["method"]
        context = get_context(scope)
        try:
            await self._dispatch(path, method, scope, receive, send)
        except ClientDisconnected:
            return  # gone before its body was read: nobody to answer
        except ProxyError as exc:
            if context is None or context.status:
                raise
            await send_proxy_error(send, dialect_for_path(path), exc)
        except Exception:
            logger.exception("unhandled error on %s %s", method, path)
            if context is None or context.status:
                raise
            await send_error(send, dialect_for_path(path), "internal proxy error", 500)

    async def _dispatch(
        self, path: str, method: str, scope: Scope, receive: Receive, send: Send
    ) -> None:
        if path in ("/health", "/health/ready"):
            await health.ready(send, self.upstream)
        elif path == "/health/live":
            await health.live(send)
        elif path == "/plugins":
            await health.send_json(send, 200, self.registry.describe())
        elif path.startswith("/api/") or path == "/":
            await self._native(scope, receive, send)
        elif path.startswith("/v1/") or openai_route(path) is not None:
            await self.openai(scope, receive, send)
        else:
            await send_error(send, dialect_for_path(path), f"no route for {method} {path}", 404)

    async def _native(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Native routes: chat and generate through the completion stack (agents, model
        loader, upstream), everything else straight to the upstream."""
        path = get_route_path(scope)
        kind = _COMPLETIONS.get(path) if scope["method"] == "POST" else None
        if kind is None:
            await self.upstream(scope, receive, send)
            return
        exchange = get_exchange(scope)
        if exchange is not None:  # made by the OpenAI layer
            await self.completion_app(scope, receive, send)
            return
        exchange = await parse_exchange(scope, receive, kind, self.settings.max_body_bytes)  # type: ignore[arg-type]
        await call_with_exchange(
            self.completion_app, scope, receive, send, exchange, path, inner_encodes=True
        )
