"""Prometheus metrics (``GET /metrics``), through ``prometheus-client`` (the ``server`` extra).

:class:`Metrics` holds one proxy's metrics and records every request when it ends (as an
observer of the access log), from its log record: route, dialect, model, status, key name,
duration, time to first byte, tokens. Label values are bounded: routes and dialects are a
fixed set, statuses are HTTP codes, key names come from the configured keys, and a model is a
label only once a request for it succeeded (at most ``max_model_labels`` of them; the rest count as
``other``), so made-up model names cannot grow the series without end.

Under ``--workers``, prometheus-client's multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``,
set by the launcher) sums the workers' metrics.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from ._http import send_body
from .access_log import RequestContext
from .errors import UpstreamError
from .names import canonical
from .routing import route_of
from .types import Receive, Scope, Send

try:
    import prometheus_client
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
    from prometheus_client import multiprocess as _multiprocess
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
except ImportError:  # pragma: no cover - exercised where the server extra is not installed
    prometheus_client = None  # type: ignore[assignment]

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


def available() -> bool:
    """Whether prometheus-client is installed."""
    return prometheus_client is not None


def multiprocess() -> bool:
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


class ModelLabels:
    """Model names as label values: the configured ones, then the first ones that worked;
    every spelling of one model (``Llama3.2``, ``llama3.2:latest``) counts as one label."""

    def __init__(self, known: Iterable[str] = (), limit: int = 100) -> None:
        self.known = {canonical(name): name for name in known if name}
        self.limit = limit

    def label(self, model: str | None, status: int) -> str:
        if not model or not isinstance(model, str):
            return "-"
        key = canonical(model)
        label = self.known.get(key)
        if label is not None:
            return label
        if status < 400 and len(self.known) < self.limit:
            self.known[key] = model
            return model
        return "other"


class Metrics:
    """One proxy's metrics. ``Metrics(known_models=(), max_model_labels=100)``."""

    def __init__(self, *, known_models: Iterable[str] = (), max_model_labels: int = 100) -> None:
        if prometheus_client is None:
            raise RuntimeError(
                "metrics need prometheus-client: pip install 'ollama-smart-proxy[server]'"
            )
        self.models = ModelLabels(known_models, max_model_labels)
        # In multiprocess mode the workers' files are the registry; else one of our own, so
        # two proxies in one process do not clash.
        self.registry = None if multiprocess() else CollectorRegistry()
        registry = self.registry
        gauge_mode: dict[str, Any] = {"multiprocess_mode": "livesum"} if multiprocess() else {}
        self.requests = Counter(
            "osp_requests_total",
            "Requests served, by route, dialect, model, status and key name.",
            ["route", "dialect", "model", "status", "key"],
            registry=registry,
        )
        self.duration = Histogram(
            "osp_request_duration_seconds",
            "Time from the request to the end of its answer.",
            ["route", "dialect"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.first_byte = Histogram(
            "osp_time_to_first_token_seconds",
            "Time from the request to the first byte of its answer's body.",
            ["route", "dialect"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.tokens = Counter(
            "osp_tokens_total",
            "Tokens in (prompt) and out (generated), from Ollama's final chunk.",
            ["direction", "model"],
            registry=registry,
        )
        self.key_tokens = Counter(
            "osp_key_tokens_total",
            "Tokens in (prompt) and out (generated) by key name (names only, never keys).",
            ["key", "direction"],
            registry=registry,
        )
        self.in_flight = Gauge(
            "osp_in_flight",
            "Generations forwarded to Ollama now.",
            registry=registry,
            **gauge_mode,
        )
        self.queue_depth = Gauge(
            "osp_queue_depth",
            "Generations waiting for a place.",
            registry=registry,
            **gauge_mode,
        )
        self.queue_wait = Histogram(
            "osp_queue_wait_seconds",
            "Time generations waited for a place.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.queue_preferred = Counter(
            "osp_queue_preferred_total",
            "Generations that went ahead of earlier ones for another model (queue_affinity).",
            registry=registry,
        )
        self.pulls = Counter(
            "osp_pulls_total", "Automatic pulls, by result.", ["result"], registry=registry
        )
        self.agents = Counter(
            "osp_agent_invocations_total",
            "Agents whose hooks ran, by agent.",
            ["agent"],
            registry=registry,
        )
        self.upstream_errors = Counter(
            "osp_upstream_errors_total",
            "Requests that failed because of Ollama (unreachable, timeout, cut, error line).",
            ["route"],
            registry=registry,
        )

        self.backend_requests = Counter(
            "osp_backend_requests_total",
            "Generations served by each backend, by the reason it was chosen "
            "(affinity, loaded, cold, unknown, failover).",
            ["backend", "reason"],
            registry=registry,
        )
        self._backends: BackendCollector | None = None
        self._shared: SharedCollector | None = None

        # Children by label values: prometheus-client's labels() costs ~3 µs a call.
        self._children: dict[tuple[Any, ...], Any] = {}

    def child(self, metric: Any, *values: str) -> Any:
        """``metric.labels(*values)``, remembered (the values are bounded)."""
        key = (id(metric), *values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child

    # -- what layers report -------------------------------------------------------------

    def queue_changed(self, in_flight: int, queued: int) -> None:
        self.in_flight.set(in_flight)
        self.queue_depth.set(queued)

    def waited(self, seconds: float) -> None:
        self.queue_wait.observe(seconds)

    def preferred(self) -> None:
        self.queue_preferred.inc()

    def pulled(self, model: str, result: str) -> None:
        self.pulls.labels(result).inc()

    def watch_backends(self, source: Callable[[], Sequence[Mapping[str, Any]]]) -> None:
        """Expose the fleet's backends (their state as ``source`` describes it when scraped:
        nothing is counted per request for it)."""
        self._backends = BackendCollector(source)
        if self.registry is not None:
            self.registry.register(self._backends)

    def watch_shared(self, source: Callable[[], Mapping[str, Any]]) -> None:
        """Expose the shared state's health (Redis): read when scraped."""
        collector = SharedCollector(source)
        self._shared = collector
        if self.registry is not None:
            self.registry.register(collector)

    # -- the endpoint ---------------------------------------------------------------------

    def render(self) -> tuple[bytes, str]:
        if self.registry is None:
            registry = CollectorRegistry()
            _multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            if self._backends is not None:
                registry.register(self._backends)
            if self._shared is not None:
                registry.register(self._shared)
        else:
            registry = self.registry
        return prometheus_client.generate_latest(registry), prometheus_client.CONTENT_TYPE_LATEST

    async def endpoint(self, scope: Scope, receive: Receive, send: Send) -> None:
        body, content_type = self.render()
        await send_body(send, 200, body, content_type.encode())

    def record(self, scope: Scope, context: RequestContext, first_byte: float) -> None:
        """Record one request when its answer has ended (an ``AccessLog`` observer)."""
        route = route_of(scope)
        exchange = context.exchange
        model = exchange.asked_model or exchange.model if exchange is not None else None
        status = context.status
        label = self.models.label(model, status)
        child = self.child
        key = context.key or "-"
        child(self.requests, route.kind, route.dialect, label, str(status), key).inc()
        now = time.perf_counter()
        child(self.duration, route.kind, route.dialect).observe(now - context.started)
        if first_byte:
            child(self.first_byte, route.kind, route.dialect).observe(first_byte - context.started)
        if exchange is not None:
            if exchange.backend is not None:
                reason = exchange.backend_reason or "-"
                child(self.backend_requests, exchange.backend, reason).inc()
            if exchange.prompt_tokens or exchange.completion_tokens:
                child(self.tokens, "in", label).inc(exchange.prompt_tokens)
                child(self.tokens, "out", label).inc(exchange.completion_tokens)
                if context.key:
                    prompt = exchange.prompt_tokens + exchange.side_prompt_tokens
                    output = exchange.completion_tokens + exchange.side_completion_tokens
                    child(self.key_tokens, context.key, "in").inc(prompt)
                    child(self.key_tokens, context.key, "out").inc(output)
            for agent in exchange.agents:
                child(self.agents, agent).inc()
        if isinstance(context.error, UpstreamError):  # Ollama was at fault
            child(self.upstream_errors, route.kind).inc()


class BackendCollector:
    """The fleet's backends as metrics, read from their description when scraped."""

    def __init__(self, source: Callable[[], Sequence[Mapping[str, Any]]]) -> None:
        self.source = source

    def collect(self) -> Iterator[Any]:
        up = GaugeMetricFamily(
            "osp_backend_up", "1 if the backend takes requests.", labels=["backend"]
        )
        state = GaugeMetricFamily(
            "osp_backend_state",
            "The backend's state (1 for the one it is in).",
            labels=["backend", "state"],
        )
        in_flight = GaugeMetricFamily(
            "osp_backend_in_flight", "Generations running on the backend now.", labels=["backend"]
        )
        loaded = GaugeMetricFamily(
            "osp_backend_loaded_models", "Models the backend has loaded.", labels=["backend"]
        )
        errors = CounterMetricFamily(
            "osp_backend_errors", "Requests the backend failed.", labels=["backend"]
        )
        ejections = CounterMetricFamily(
            "osp_backend_ejections", "Times the backend was ejected.", labels=["backend"]
        )
        cold = CounterMetricFamily(
            "osp_backend_cold_loads",
            "Generations the backend had to load a model for.",
            labels=["backend"],
        )
        for backend in self.source():
            name = str(backend["name"])
            up.add_metric([name], 1.0 if backend["state"] == "up" else 0.0)
            for known in ("up", "down", "ejected"):
                state.add_metric([name, known], 1.0 if backend["state"] == known else 0.0)
            in_flight.add_metric([name], float(backend["in_flight"]))
            loaded.add_metric([name], float(len(backend["loaded"])))
            errors.add_metric([name], float(backend["errors"]))
            ejections.add_metric([name], float(backend["ejections"]))
            cold.add_metric([name], float(backend["cold_loads"]))
        yield from (up, state, in_flight, loaded, errors, ejections, cold)


class SharedCollector:
    """The shared state (Redis) as metrics: whether it answers, outages, replicas seen."""

    def __init__(self, source: Callable[[], Mapping[str, Any]]) -> None:
        self.source = source

    def collect(self) -> Iterator[Any]:
        state = self.source()
        yield GaugeMetricFamily(
            "osp_shared_available",
            "1 while Redis answers (limits shared), 0 while redis_failure applies.",
            value=1.0 if state["available"] else 0.0,
        )
        yield CounterMetricFamily(
            "osp_shared_outages", "Times Redis became unavailable.", value=float(state["outages"])
        )
        yield GaugeMetricFamily(
            "osp_shared_replicas",
            "Replicas sharing the limits, as Redis last counted them.",
            value=float(state["replicas"]),
        )


__all__ = [
    "BackendCollector",
    "Metrics",
    "ModelLabels",
    "SharedCollector",
    "available",
    "multiprocess",
]
