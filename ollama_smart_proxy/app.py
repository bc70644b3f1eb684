"""``SmartProxy``: the composed ASGI application, and the one place its stack is built."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from types import TracebackType
from typing import Unpack

import httpx
from starlette.middleware.cors import CORSMiddleware

from . import metrics as metrics_module
from .access_log import AccessLog, Observer
from .admission import Admission
from .agents.base import Agent
from .agents.registry import AgentRegistry
from .agents.tools import DropUnsupportedTools
from .anthropic.middleware import anthropic_dialect
from .boundary import ErrorBoundary
from .entry import NATIVE, Dialect, LimitOptions, ModelEntry
from .errors import ProxyError
from .fleet import Backend, Fleet
from .health import Health, StatusSource, send_json
from .metrics import Metrics
from .models import ModelLoader
from .openai.middleware import openai_dialect
from .quotas import Accounts, Limits, Quotas, UsageEndpoint
from .responses.middleware import responses_dialect
from .routing import route_of
from .security import ApiKeys, BodyGuard, HostGuard, RoutePolicy, keys_from_settings
from .settings import Settings
from .shared import RedisState
from .shutdown import Drain
from .transports import create_transport, upstream_limits
from .types import ASGIApp, Receive, Scope, Send
from .upstream import OllamaUpstream

logger = logging.getLogger("ollama_smart_proxy")

#: Response headers a browser UI may read (CORS).
EXPOSED_HEADERS = ["x-request-id", "retry-after", "server-timing", "x-osp-backend"]


class Router:
    """Send each request to the part of the proxy its route's family names."""

    def __init__(self, **families: ASGIApp) -> None:
        self.families = families

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = route_of(scope)
        app = self.families.get(route.family)
        if app is None:
            raise ProxyError(f"no route for {scope['method']} {route.path}", status_code=404)
        await app(scope, receive, send)


class ProxyEndpoints:
    """The proxy's own small endpoints: health, ``/plugins``, ``/metrics``, ``/usage``."""

    def __init__(
        self,
        health: Health,
        registry: AgentRegistry,
        metrics: Metrics | None,
        usage: UsageEndpoint | None = None,
    ) -> None:
        self.health = health
        self.registry = registry
        self.metrics = metrics
        self.usage = usage

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = route_of(scope).kind
        if kind == "usage":
            if self.usage is None:
                raise ProxyError(
                    "usage is counted per API key, and no keys are in use (OSP_API_KEYS)",
                    status_code=404,
                )
            await self.usage(scope, receive, send)
        elif kind == "plugins":
            await send_json(send, 200, self.registry.describe())
        elif kind == "metrics":
            if self.metrics is None:
                raise ProxyError(
                    "metrics need prometheus-client: pip install 'ollama-smart-proxy[server]'",
                    status_code=501,
                )
            await self.metrics.endpoint(scope, receive, send)
        else:
            await self.health(scope, receive, send)


class SmartProxy:
    """The proxy as one ASGI app.

    ``SmartProxy(settings=Settings(...), agents=[...], transport=None, handle_signals=False,
    observers=())``.
    ``transport`` is the httpx transport to Ollama (by default the proxy's own pool); it is
    opened lazily and closed by ASGI lifespan, by :meth:`aclose`, or by ``async with
    proxy:``, so the proxy also works mounted under an app whose lifespan does not reach it.
    ``handle_signals`` (the launcher's) starts the graceful drain on SIGTERM; elsewhere, call
    :meth:`drain` when your server begins to shut down. ``observers`` are told of every
    request when its answer has ended, ``observer(scope, record, first_byte)``, from the
    record the access log line is made of (``record.exchange`` for a model request).
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        agents: Sequence[type[Agent]] = (),
        transport: httpx.AsyncBaseTransport | None = None,
        builtins: bool = True,
        entry_points: bool = True,
        handle_signals: bool = False,
        observers: Sequence[Observer] = (),
    ) -> None:
        self.settings = settings = settings or Settings()
        self.observers = list(observers)
        self.handle_signals = handle_signals
        if transport is None:
            limits = upstream_limits(settings.upstream_max_connections)
            transport = create_transport(limits=limits)
        if settings.drop_unsupported_tools:
            agents = [*agents, DropUnsupportedTools]
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
        token = settings.upstream_api_key
        self.upstream = self._upstream(settings.upstream, token, transport)
        #: The fleet, when ``backends`` are configured (else ``None``: one upstream).
        #: The state shared with other replicas (Redis), when ``redis_url`` is set.
        self.shared = self._shared() if settings.redis_url else None
        self.fleet = self._fleet(transport) if settings.backends else None
        #: The layer that reaches Ollama: the fleet, or the one upstream.
        self.terminal: ASGIApp = self.fleet or self.upstream
        self.keys = keys_from_settings(settings.api_keys, settings.admin_keys, settings.keys_file)
        self.drain_state = Drain(settings.shutdown_grace)
        self.metrics = (
            Metrics(
                known_models=[*settings.aliases, *settings.preload, settings.default_model or ""]
            )
            if metrics_module.available()
            else None
        )
        if self.fleet is not None and self.metrics is not None:
            fleet = self.fleet
            self.metrics.watch_backends(lambda: fleet.describe()["backends"])
        if self.shared is not None and self.metrics is not None:
            self.metrics.watch_shared(self.shared.describe)
        self.admission = (
            Admission(
                self.terminal,
                max_concurrent=settings.max_concurrent,
                max_queue=settings.max_queue,
                queue_timeout=settings.queue_timeout,
                affinity=settings.queue_affinity,
                observer=self.metrics,
                shared=self.shared,
            )
            if settings.max_concurrent is not None
            else None
        )
        self.loader = ModelLoader(
            self.admission or self.terminal,
            aliases=settings.aliases,
            default_model=settings.default_model,
            auto_pull=settings.auto_pull,
            keep_alive=settings.keep_alive,
            preload=settings.preload,
            pull_timeout=settings.pull_timeout,
            catalogue_ttl=settings.catalogue_ttl,
            on_pull=self.metrics.pulled if self.metrics is not None else None,
            max_pulls=settings.max_pulls,
            max_waiting_pulls=settings.max_waiting_pulls,
            pull_grace=settings.pull_grace,
            shared=self.shared,
        )
        #: Per-key limits and usage, when keys are in use.
        self.accounts = (
            Accounts(default=Limits.of(settings.key_limits), shared=self.shared)
            if self.keys
            else None
        )
        self._app = self._build()

    def _shared(self) -> RedisState:
        s = self.settings
        assert s.redis_url is not None
        return RedisState(
            s.redis_url, failure=s.redis_failure, timeout=s.redis_timeout, lease_ttl=s.lease_ttl
        )

    def _fleet(self, transport: httpx.AsyncBaseTransport) -> Fleet:
        """The fleet of ``backends``: one upstream each, over the one pool."""
        s = self.settings
        backends = [
            Backend(
                name=spec.name,
                url=spec.url,
                app=self._upstream(spec.url, spec.api_key, transport),
                parallel=spec.parallel,
                max_concurrent=spec.max_concurrent,
                weight=spec.weight,
                labels=dict(spec.labels),
            )
            for spec in s.backends
        ]
        return Fleet(
            backends,
            max_queue=s.max_queue,
            queue_timeout=s.queue_timeout,
            poll_interval=s.poll_interval,
            poll_timeout=s.health_timeout,
            failover_attempts=s.failover_attempts,
            eject_seconds=s.eject_seconds,
            pull_to=s.pull_to,
            session_headers=s.session_headers,
            max_body_bytes=s.max_body_bytes,
            shared=self.shared,
        )

    def _upstream(
        self, url: str, token: str | None, transport: httpx.AsyncBaseTransport
    ) -> OllamaUpstream:
        s = self.settings
        return OllamaUpstream(
            url,
            timeout=s.upstream_timeout,
            connect_timeout=s.upstream_connect_timeout,
            max_body_bytes=s.max_body_bytes,
            transport=transport,
            headers=[("authorization", f"Bearer {token}")] if token else (),
        )

    def _build(self) -> ASGIApp:
        """The stack, outermost first, in the order a request flows (docs/architecture.md
        draws it)::

            CORS > AccessLog (+ metrics) > ErrorBoundary > BodyGuard > ApiKeys | HostGuard
              > Quotas (with keys) > RoutePolicy > Router
              model routes: ModelEntry (ollama, openai, responses, anthropic dialects)
                              > CommandParser > agents > ModelLoader > Admission
                              > Fleet (with backends) > OllamaUpstream
              proxy:        health, /plugins, /metrics
        """
        s = self.settings
        limits: LimitOptions = {
            "max_body_bytes": s.max_body_bytes,
            "max_messages": s.max_messages,
            "max_json_objects": s.max_json_objects,
            "max_line_bytes": s.max_line_bytes,
        }
        # Below the entry, every model request is one native exchange. The loader is in the
        # stack when a request may need it: nothing to rewrite and no key's models to check,
        # and requests go past it at no cost.
        below: ASGIApp = self.admission or self.terminal
        if self.loader.rewrites or any(key.models is not None for key in self.keys):
            below = self.loader
        completions = self.registry.build(below, prefix=s.command_prefix)
        checks = [self.loader.not_ready] if s.ready_waits_for_preload else []
        if self.fleet is not None:  # ready while a backend is up (the polls say)
            checks.insert(0, self.fleet.ready)
        health = Health(
            self.upstream.fetch if self.fleet is None else None,
            upstream=self.upstream.url if self.fleet is None else None,
            timeout=s.health_timeout,
            sources=self._health_sources(),
            checks=checks,
        )
        # The dialects the entry speaks: one row each.
        dialects = [
            NATIVE,
            openai_dialect(unsupported=s.openai_unsupported, aliases=self.loader.aliases),
            responses_dialect(default_max_output_tokens=s.default_max_output_tokens),
            anthropic_dialect(),
        ]
        entry = ModelEntry(completions, dialects=dialects, **limits)
        usage = UsageEndpoint(self.accounts) if self.accounts is not None else None
        app: ASGIApp = Router(
            **{dialect.family: entry for dialect in dialects},
            proxy=ProxyEndpoints(health, self.registry, self.metrics, usage),
        )
        if self.keys or s.admin_routes == "closed":
            app = RoutePolicy(app, admin_routes=s.admin_routes, keys_required=bool(self.keys))
        if self.accounts is not None:
            app = Quotas(app, accounts=self.accounts)
        if self.keys:
            app = ApiKeys(app, keys=self.keys)
        else:  # Ollama's own Host and Origin checks, which a proxy would defeat
            app = HostGuard(app, allowed_hosts=s.allowed_hosts, allowed_origins=s.cors_origins)
        app = BodyGuard(app, body_timeout=s.body_timeout, max_buffered_bytes=s.max_buffered_bytes)
        app = ErrorBoundary(app, drain=self.drain_state, write_timeout=s.write_timeout)
        observers = [self.metrics.record] if self.metrics is not None else []
        app = AccessLog(app, observers=[*observers, *self.observers])
        if s.cors_origins:
            app = CORSMiddleware(
                app,
                allow_origins=s.cors_origins,
                allow_methods=["*"],
                allow_headers=["*"],
                expose_headers=EXPOSED_HEADERS,
            )
        return app

    def _health_sources(self) -> dict[str, StatusSource]:
        sources: dict[str, StatusSource] = {"models": self.loader.models.describe}
        if self.fleet is not None:
            sources["fleet"] = self.fleet.describe
        if self.shared is not None:
            sources["shared"] = self.shared.describe
        if self.admission is not None:
            sources["admission"] = self.admission.describe
        return sources

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            await self._app(scope, receive, send)
        elif scope["type"] == "websocket":
            # Nothing here speaks WebSocket (Codex tries one on /v1/responses first): refuse
            # it at once, and the client falls back to HTTP.
            await send({"type": "websocket.close", "code": 1008})

    @property
    def agent_names(self) -> list[str]:
        """The agents that run, outermost first."""
        return [spec.name for spec in self.registry.ordered()]

    def drain(self) -> None:
        """Begin the graceful shutdown: streams in flight get ``shutdown_grace`` seconds."""
        self.drain_state.begin()

    async def startup(self) -> None:
        """Open the upstream transport (it is also opened lazily on first use) and start
        preloading models."""
        _ = self.upstream.transport
        if self.handle_signals:
            self.drain_state.install_signal_handlers()
        if self.shared is not None:
            await self.shared.startup()
        if self.fleet is not None:
            await self.fleet.start()
        await self.loader.startup()

    async def aclose(self) -> None:
        """Stop pulls and preloads in flight and close the upstream transport."""
        await self.loader.aclose()
        if self.fleet is not None:
            await self.fleet.aclose()
        if self.shared is not None:
            await self.shared.aclose()
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


def standalone(
    app: ASGIApp, *, dialects: Sequence[Dialect] = (NATIVE,), **limits: Unpack[LimitOptions]
) -> ASGIApp:
    """An agent, the model loader, or a stack of them, served on its own.

    ``standalone(Translate(ollama_app))`` puts above ``app`` what ``SmartProxy`` puts above
    its agents: the entry that makes each model request's exchange (Ollama's own API, or
    the ``dialects`` given) and the error boundary that answers failures in the client's
    dialect. ``limits`` are the entry's body limits.
    """
    return ErrorBoundary(ModelEntry(app, dialects=dialects, **limits))


__all__ = ["ProxyEndpoints", "Router", "SmartProxy", "standalone"]
