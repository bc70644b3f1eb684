from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from ollama_smart_proxy import Settings, SmartProxy
from ollama_smart_proxy.testing import FakeOllama, StreamingASGITransport, serve_in_thread


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def fake() -> FakeOllama:
    return FakeOllama()


def upstream_client(app: object) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=StreamingASGITransport(app), base_url="http://ollama.test")


@pytest.fixture
def settings() -> Settings:
    return Settings()


@pytest.fixture
async def proxy(fake: FakeOllama, settings: Settings) -> AsyncIterator[SmartProxy]:
    app = SmartProxy(settings, client=upstream_client(fake))
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
