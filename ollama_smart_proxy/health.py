"""``/health``, ``/health/live`` and ``/health/ready``."""

from __future__ import annotations

import time
from typing import Any

import httpx

from ._responses import send_body
from ._version import __version__
from .encoders import dumps
from .types import Send
from .upstream import OllamaUpstream


async def send_json(send: Send, status: int, data: Any) -> None:
    """A small JSON answer that no cache keeps (health and status change)."""
    await send_body(send, status, dumps(data), headers=[(b"cache-control", b"no-store")])


async def live(send: Send) -> None:
    """200 whenever the process answers."""
    await send_json(send, 200, {"status": "ok", "version": __version__})


async def ready(send: Send, upstream: OllamaUpstream) -> None:
    """200 with both versions when Ollama answers ``/api/version`` in time, else 503."""
    settings = upstream.settings
    data: dict[str, Any] = {"version": __version__, "upstream": str(upstream.client.base_url)}
    started = time.perf_counter()
    try:
        response = await upstream.client.get("/api/version", timeout=settings.health_timeout)
        latency = round((time.perf_counter() - started) * 1000, 2)
        if response.status_code != 200:
            reason = f"Ollama answered /api/version with HTTP {response.status_code}"
        else:
            version = response.json().get("version")
            data.update(status="ok", upstream_version=version, upstream_latency_ms=latency)
            await send_json(send, 200, data)
            return
    except httpx.TimeoutException:
        reason = f"Ollama did not answer /api/version within {settings.health_timeout:g}s"
    except httpx.HTTPError as exc:
        reason = f"cannot reach Ollama: {exc or type(exc).__name__}"
    except ValueError:
        reason = "Ollama answered /api/version with a body that is not JSON"
    data.update(status="unavailable", upstream_version=None, reason=reason)
    await send_json(send, 503, data)
