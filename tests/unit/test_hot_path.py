"""Regression guards for the hot path that count work instead of timing it."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from ollama_smart_proxy import Settings, SmartProxy, _pipeline, schemas
from ollama_smart_proxy.testing import FakeOllama, serve_in_thread
from ollama_smart_proxy.transports import HTTP11Transport

pytestmark = pytest.mark.anyio

CHAT = {"model": "llama3.2", "messages": [{"role": "user", "content": "one two three four"}]}


class Counter:
    def __init__(self, target: Any) -> None:
        self.target = target
        self.calls = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return self.target(*args, **kwargs)


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> Counter:
    counter = Counter(_pipeline.loads)
    monkeypatch.setattr(_pipeline, "loads", counter)
    return counter


@pytest.fixture
def writers(monkeypatch: pytest.MonkeyPatch) -> Counter:
    counter = Counter(_pipeline.ResponseWriter._emit)
    monkeypatch.setattr(_pipeline.ResponseWriter, "_emit", counter)
    return counter


async def test_native_stream_passes_through_and_only_its_final_line_is_decoded(
    client: httpx.AsyncClient, decodes: Counter, writers: Counter
) -> None:
    response = await client.post("/api/chat", json=CHAT)
    assert len(response.content.splitlines()) == 5
    assert writers.calls == 0
    assert decodes.calls == 1  # the final chunk, once, for the exchange's token counts


async def test_translated_stream_decodes_each_line_once(
    client: httpx.AsyncClient, decodes: Counter
) -> None:
    response = await client.post("/v1/chat/completions", json={**CHAT, "stream": True})
    assert response.text.count("data: ") == 6  # 4 tokens, finish, [DONE]
    assert decodes.calls == 5  # 4 token lines + the final line, once each


async def test_request_body_is_parsed_once(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    counter = Counter(schemas.ChatRequest.model_validate_json)
    monkeypatch.setattr(schemas.ChatRequest, "model_validate_json", counter)
    slow = Counter(schemas.ChatRequest.model_validate)
    monkeypatch.setattr(schemas.ChatRequest, "model_validate", slow)
    dumps = Counter(schemas.dump_request)
    monkeypatch.setattr("ollama_smart_proxy.exchange.dump_request", dumps)
    await client.post("/api/chat", json={**CHAT, "stream": False})
    assert counter.calls == 1  # a small body: parsed and validated in one pass
    assert slow.calls == 0
    assert dumps.calls == 0  # unchanged: the client's own bytes go upstream
    await client.post(
        "/api/chat", json={**CHAT, "messages": [{"role": "user", "content": "/set think hi"}]}
    )
    assert counter.calls == 2
    assert dumps.calls == 1  # changed by a command: serialised once


def test_one_upstream_connection_for_sequential_requests() -> None:
    fake = FakeOllama()
    with (
        serve_in_thread(fake) as upstream,
        serve_in_thread(SmartProxy(Settings(upstream=upstream))) as url,
    ):
        with httpx.Client(base_url=url) as client:
            for _ in range(20):
                assert client.post("/api/chat", json={**CHAT, "stream": False}).status_code == 200
                assert client.get("/api/tags").status_code == 200
    assert len(fake.requests) == 40  # one upstream request per client request
    assert len({request.client for request in fake.requests}) == 1  # one kept-alive connection


async def test_pool_is_sized_from_settings_not_httpx_default() -> None:
    proxy = SmartProxy(Settings(upstream_max_connections=777))
    transport = proxy.upstream.transport
    assert isinstance(transport, HTTP11Transport)
    assert transport.limits.max_connections == 777
    await proxy.aclose()


def test_sniffio_is_installed() -> None:
    # httpcore retries a failing `import sniffio` on every request without it (+1.2 ms each)
    import sniffio

    assert sniffio.current_async_library
