from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from ollama_smart_proxy import Settings, SmartProxy
from ollama_smart_proxy.testing import (
    FakeOllama,
    RedisServer,
    StreamingASGITransport,
    serve_in_thread,
)

#: The environment variables a Settings() would read: cleared for every test.
_ENV_PREFIXES = ("OSP_", "OLLAMA_HOST")


@pytest.fixture(autouse=True)
def _hermetic_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reads the developer's OSP_* variables, OLLAMA_HOST, or a TOML file."""
    import os

    for name in list(os.environ):
        if name.startswith(_ENV_PREFIXES):
            monkeypatch.delenv(name)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def fake() -> FakeOllama:
    return FakeOllama()


def upstream(app: object) -> StreamingASGITransport:
    """The production transport path, over an in-process app instead of a socket."""
    return StreamingASGITransport(app)


@pytest.fixture
def settings() -> Settings:
    return Settings()


@pytest.fixture
async def proxy(fake: FakeOllama, settings: Settings) -> AsyncIterator[SmartProxy]:
    app = SmartProxy(settings, transport=upstream(fake))
    async with app:
        yield app


@pytest.fixture
async def client(proxy: SmartProxy) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=proxy), base_url="http://proxy.test"
    ) as client:
        yield client


@pytest.fixture
def fake_url(fake: FakeOllama) -> Iterator[str]:
    with serve_in_thread(fake) as url:
        yield url


@pytest.fixture
def proxy_url(fake_url: str) -> Iterator[str]:
    with serve_in_thread(SmartProxy(Settings(upstream=fake_url))) as url:
        yield url


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A real Redis on loopback, for the replicas' tests."""
    server = RedisServer()
    server.start()
    yield server
    server.stop()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Integration tests (real sockets, servers, CLIs) are ``slow``: ``pytest -m "not slow"``
    is the fast loop of in-process unit tests."""
    for item in items:
        if "integration" in item.path.parts:
            item.add_marker(pytest.mark.slow)
