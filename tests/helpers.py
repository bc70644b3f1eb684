"""Helpers the unit tests share: a proxy over a FakeOllama, and waiting for a state."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import Any

import anyio
import httpx

from ollama_smart_proxy import Settings, SmartProxy
from ollama_smart_proxy.admission import Admission
from ollama_smart_proxy.testing import FakeOllama, StreamingASGITransport

API = "sk-user-0123456789"
ADMIN = "sk-admin-0123456789"
HASHED = "sk-hashed-0123456789"
CHAT = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}], "stream": False}


def make(fake: FakeOllama, **options: Any) -> tuple[SmartProxy, httpx.AsyncClient]:
    """A proxy with ``Settings(**options)`` over ``fake``, and a client of it (in-process)."""
    proxy = SmartProxy(Settings(**options), transport=StreamingASGITransport(fake))
    client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=proxy), base_url="http://p", timeout=20
    )
    return proxy, client


def queueing(fake: FakeOllama, **options: Any) -> tuple[SmartProxy, httpx.AsyncClient, Admission]:
    """``make`` with ``max_concurrent`` among the options, and the admission layer it built."""
    proxy, client = make(fake, **options)
    assert proxy.admission is not None
    return proxy, client, proxy.admission


def keyed(fake: FakeOllama, **options: Any) -> tuple[SmartProxy, httpx.AsyncClient]:
    """``make`` with an API key, a key given by its digest, and an admin key named "ops"."""
    digest = hashlib.sha256(HASHED.encode()).hexdigest()
    return make(
        fake,
        api_keys=[API, f"sha256:{digest}"],
        admin_keys=[{"key": ADMIN, "name": "ops"}],
        **options,
    )


def wait_for(condition: Callable[[], object], timeout: float = 20.0) -> None:
    """Wait, in a thread of its own (a test that drives a server over a socket), for a state."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


async def until(predicate: Callable[[], object]) -> None:
    """Wait for the proxy to reach a state (a loaded machine may take any time to get there:
    the bound is only there so that a broken state fails instead of hanging)."""
    with anyio.fail_after(10):
        while not predicate():
            await anyio.sleep(0.002)
