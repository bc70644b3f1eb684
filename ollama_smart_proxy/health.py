"""``/health``, ``/health/live`` and ``/health/ready``."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from ._http import send_body
from ._json import dumps, loads
from ._version import __version__
from .errors import ProxyError
from .routing import route_of
from .types import Receive, Scope, Send

#: Asks Ollama something: (method, path, timeout) -> (status, body).
Fetch = Callable[[str, str, float], Awaitable[tuple[int, bytes]]]
#: A part of the proxy that reports its state under a name in ``/health``.
StatusSource = Callable[[], Mapping[str, Any]]
#: A reason the proxy is not ready yet (``None``: ready as far as it knows).
ReadinessCheck = Callable[[], str | None]


async def send_json(send: Send, status: int, data: Any) -> None:
    """A small JSON answer that no cache keeps (health and status change)."""
    await send_body(send, status, dumps(data), headers=[(b"cache-control", b"no-store")])


class Health:
    """Serve the health routes.

    ``/health/live``: 200 whenever the process answers. ``/health/ready``: 200 with both
    versions when Ollama answers ``/api/version`` in time and every readiness check passes,
    else 503 with the reason. ``/health``: the same, plus what each status source reports
    (pulls, preload, the admission queue).
    """

    def __init__(
        self,
        fetch: Fetch | None,
        *,
        upstream: str | None,
        timeout: float = 2.0,
        sources: Mapping[str, StatusSource] | None = None,
        checks: Sequence[ReadinessCheck] = (),
    ) -> None:
        self.fetch = fetch
        self.upstream = upstream
        self.timeout = timeout
        self.sources = dict(sources or {})
        self.checks = list(checks)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = route_of(scope).kind
        if scope["method"] not in ("GET", "HEAD"):
            raise ProxyError(f"{scope['method']} is not allowed on /{kind}", status_code=405)
        if kind == "health.live":
            await send_json(send, 200, {"status": "ok", "version": __version__})
            return
        status, data = await self.ready()
        if kind == "health":
            for name, source in self.sources.items():
                data[name] = source()
        await send_json(send, status, data)

    async def ready(self) -> tuple[int, dict[str, Any]]:
        data: dict[str, Any] = {"version": __version__}
        reason: str | None = None
        if self.fetch is not None:
            data["upstream"] = self.upstream
            reason = await self._upstream(self.fetch, data)
        for check in self.checks:
            reason = reason or check()
        if reason is None:
            data["status"] = "ok"
            return 200, data
        if self.fetch is not None:
            data.setdefault("upstream_version", None)
        data.update(status="unavailable", reason=reason)
        return 503, data

    async def _upstream(self, fetch: Fetch, data: dict[str, Any]) -> str | None:
        """Ask the one Ollama its version: why it is not ready, or ``None``."""
        started = time.perf_counter()
        reason: str | None
        try:
            status, body = await fetch("GET", "/api/version", self.timeout)
        except ProxyError as exc:
            reason = exc.message
        else:
            latency = round((time.perf_counter() - started) * 1000, 2)
            reason = None
            version = None
            if status != 200:
                reason = f"Ollama answered /api/version with HTTP {status}"
            else:
                try:
                    version = loads(body).get("version")
                except (ValueError, AttributeError):
                    reason = "Ollama answered /api/version with a body that is not JSON"
            if reason is None:
                data.update(upstream_version=version, upstream_latency_ms=latency)
        return reason


__all__ = ["Health", "send_json"]
