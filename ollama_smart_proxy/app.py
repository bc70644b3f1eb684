"""``SmartProxy``: the composed ASGI application, and the one place its stack is built."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from types import TracebackType

import httpx

from .access_log import AccessLog
from .agents.base import Agent
from .agents.registry import AgentRegistry
from .boundary import ErrorBoundary
from .entry import NativeEntry
from .errors import ProxyError
from .health import Health, send_json
from .models import ModelLoader
from .openai import OpenAICompat
from .routing import route_of
from .settings import Settings
from .transports import create_transport, upstream_limits
from .types import ASGIApp, Receive, Scope, Send
from .upstream import OllamaUpstream

logger = logging.getLogger("ollama_smart_proxy")


class Router:
    """Send each request to the part of the proxy its route's family names."""

    def __init__(self, *, native: ASGIApp, openai: ASGIApp, proxy: ASGIApp) -> None:
        self.native = native
        self.openai = openai
        self.proxy = proxy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        family = route_of(scope).family
        if family == "native":
            await self.native(scope, receive, send)
        elif family == "openai":
            await self.openai(scope, receive, send)
        elif family == "proxy":
            await self.proxy(scope, receive, send)
        elif family in ("responses", "anthropic"):
            await self.native(scope, receive, send)  # Ollama's own, passed through
        else:
            raise ProxyError(
                f"no route for {scope['method']} {route_of(scope).path}", status_code=404
            )


class ProxyEndpoints:
    """The proxy's own small endpoints: health, ``/plugins``."""

    def __init__(self, health: Health, registry: AgentRegistry) -> None:
        self.health = health
        self.registry = registry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if route_of(scope).kind == "plugins":
            await send_json(send, 200, self.registry.describe())
        else:
            await self.health(scope, receive, send)


class SmartProxy:
    """The proxy as one ASGI app.

    ``SmartProxy(settings=Settings(...), agents=[...], transport=None)``. ``transport`` is
    the httpx transport to Ollama (by default the one ``upstream_transport`` names); it is
    opened lazily and closed by ASGI lifespan, by :meth:`aclose`, or by ``async with
    proxy:``, so the proxy also works mounted under an app whose lifespan does not reach it.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        agents: Sequence[type[Agent]] = (),
        transport: httpx.AsyncBaseTransport | None = None,
        builtins: bool = True,
        entry_points: bool = True,
    ) -> None:
        self.settings = settings = settings or Settings()
        if transport is None:
            if settings.upstream_transport != "http11":
                logger.warning(
                    "upstream_transport=%s is no longer offered (it fails the proxy's framing "
                    "conformance suite); using the proxy's own pool, which serves https too",
                    settings.upstream_transport,
                )
            limits = upstream_limits(settings.upstream_max_connections)
            transport = create_transport(limits=limits)
        self.registry = AgentRegistry.discover(
            agents,
            builtins=builtins,
            entry_points=entry_points,
            plugins_dirs=settings.plugins_dirs,
            agent_options=settings.agent_options,
            enabled=settings.enabled_agents,
            disabled=settings.disabled_agents,
            order=settings.agent_order,
        )
        self.upstream = OllamaUpstream(
            settings.upstream,
            timeout=settings.upstream_timeout,
            connect_timeout=settings.upstream_connect_timeout,
            max_body_bytes=settings.max_body_bytes,
            transport=transport,
        )
        self.loader = ModelLoader(
            self.upstream,  # (admission goes between the loader and the upstream)
            aliases=settings.aliases,
            default_model=settings.default_model,
            auto_pull=settings.auto_pull,
            keep_alive=settings.keep_alive,
            preload=settings.preload,
            pull_timeout=settings.pull_timeout,
            catalogue_ttl=settings.catalogue_ttl,
            max_body_bytes=settings.max_body_bytes,
        )
        self._app = self._build()

    def _build(self) -> ASGIApp:
        """The stack, in the order a request flows (docs/architecture.md draws it)."""
        s = self.settings
        limits = {
            "max_body_bytes": s.max_body_bytes,
            "max_messages": s.max_messages,
            "max_json_objects": s.max_json_objects,
            "max_line_bytes": s.max_line_bytes,
        }
        # Below the translation, every model request is one native exchange.
        completions = self.registry.build(
            self.loader, prefix=s.command_prefix, max_body_bytes=s.max_body_bytes
        )
        health = Health(
            self.upstream.fetch,
            upstream=self.upstream.url,
            timeout=s.health_timeout,
            sources={"models": self.loader.models.describe},
            checks=[self.loader.not_ready] if s.ready_waits_for_preload else [],
        )
        routes = Router(
            native=NativeEntry(completions, **limits),
            openai=OpenAICompat(
                completions, unsupported=s.openai_unsupported, aliases=s.aliases, **limits
            ),
            proxy=ProxyEndpoints(health, self.registry),
        )
        return AccessLog(ErrorBoundary(routes))

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
        """Open the upstream transport (it is also opened lazily on first use) and start
        preloading models."""
        _ = self.upstream.transport
        await self.loader.startup()

    async def aclose(self) -> None:
        """Stop pulls and preloads in flight and close the upstream transport."""
        await self.loader.aclose()
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


__all__ = ["ProxyEndpoints", "Router", "SmartProxy"]
