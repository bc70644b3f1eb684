"""The exchange owns its request's record; side requests have their own and never touch it."""

from __future__ import annotations

import logging

import httpx
import pytest

from ollama_smart_proxy import Exchange, Settings, SmartProxy
from ollama_smart_proxy.access_log import RequestContext
from ollama_smart_proxy.testing import FakeOllama
from ollama_smart_proxy.types import Scope
from tests.conftest import upstream

pytestmark = pytest.mark.anyio

ALIASES = {"gpt-4o-mini": "llama3.2"}


def sample(proxy: SmartProxy, name: str, **labels: str) -> float:
    assert proxy.metrics is not None
    value = proxy.metrics.registry.get_sample_value(name, labels)  # type: ignore[union-attr]
    return value or 0.0


@pytest.mark.parametrize("command", ["/show", "/load qwen3"])
async def test_a_side_request_leaves_the_clients_log_line_and_metrics_alone(
    command: str, caplog: pytest.LogCaptureFixture
) -> None:
    """``/show`` and ``/load`` call Ollama on the side (``/api/show``, an empty generate);
    the access log and the metrics still describe the client's request."""
    fake = FakeOllama()
    async with SmartProxy(Settings(aliases=ALIASES), transport=upstream(fake)) as proxy:
        transport = httpx.ASGITransport(app=proxy)
        async with httpx.AsyncClient(transport=transport, base_url="http://p") as client:
            with caplog.at_level(logging.INFO, logger="ollama_smart_proxy.access"):
                response = await client.post(
                    "/v1/chat/completions",
                    json={
                        "model": "gpt-4o-mini",
                        "messages": [{"role": "user", "content": command}],
                    },
                )
    assert response.status_code == 200
    side = {"/show": "/api/show", "/load qwen3": "/api/generate"}[command]
    assert [r.path for r in fake.requests] == [side]  # answered by the proxy, after one call
    (line,) = [r for r in caplog.records if r.name == "ollama_smart_proxy.access"]
    assert line.path == "/v1/chat/completions"  # type: ignore[attr-defined]
    assert line.model == "gpt-4o-mini"  # type: ignore[attr-defined]
    assert line.status == 200  # type: ignore[attr-defined]
    assert "upstream;dur" not in response.headers["server-timing"]  # nothing went upstream
    assert sample(
        proxy,
        "osp_requests_total",
        route="openai.chat",
        dialect="openai",
        model="gpt-4o-mini",
        status="200",
        key="-",
    )
    for direction in ("in", "out"):
        for model in ("gpt-4o-mini", "llama3.2", "qwen3"):
            assert not sample(proxy, "osp_tokens_total", direction=direction, model=model)


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize("path", ["/api/chat", "/v1/chat/completions"])
async def test_tokens_are_read_once_from_the_final_chunk(path: str, stream: bool) -> None:
    fake = FakeOllama(reply="one two three")
    async with SmartProxy(Settings(), transport=upstream(fake)) as proxy:
        transport = httpx.ASGITransport(app=proxy)
        async with httpx.AsyncClient(transport=transport, base_url="http://p") as client:
            body = {"model": "llama3.2", "messages": [{"role": "user", "content": "a b"}]}
            response = await client.post(path, json={**body, "stream": stream})
    assert response.status_code == 200
    tokens_in = sample(proxy, "osp_tokens_total", direction="in", model="llama3.2")
    tokens_out = sample(proxy, "osp_tokens_total", direction="out", model="llama3.2")
    assert tokens_in > 0
    assert tokens_out == 3  # one a word, as the fake counts
    assert "upstream;dur=" in response.headers["server-timing"]


async def test_the_record_names_the_key_and_the_agents_that_ran() -> None:
    fake = FakeOllama()
    settings = Settings(api_keys=[{"key": "sk-a", "name": "alice"}])
    seen: list[Exchange] = []

    def observe(scope: Scope, record: RequestContext, first_byte: float) -> None:
        if record.exchange is not None:
            seen.append(record.exchange)

    async with SmartProxy(settings, transport=upstream(fake), observers=[observe]) as proxy:
        transport = httpx.ASGITransport(app=proxy)
        async with httpx.AsyncClient(transport=transport, base_url="http://p") as client:
            response = await client.post(
                "/api/chat",
                headers={"authorization": "Bearer sk-a"},
                json={
                    "model": "llama3.2",
                    "messages": [{"role": "user", "content": "/set parameter temperature 0.1 hi"}],
                    "stream": False,
                },
            )
    assert response.status_code == 200
    (exchange,) = seen
    assert exchange.key is not None and exchange.key.name == "alice"
    assert exchange.agents == ["set"]
    assert exchange.asked_model == exchange.model == "llama3.2"
    assert exchange.completion_tokens > 0
    assert exchange.forwarded and exchange.answered >= exchange.forwarded
