"""SmartProxy as an ASGI app: lifespan, health, logs, request ids, mounting."""

from __future__ import annotations

import json
import logging

import httpx
import pytest
from asgi_lifespan import LifespanManager
from starlette.applications import Starlette
from starlette.routing import Mount

from ollama_smart_proxy import Settings, SmartProxy, __version__
from ollama_smart_proxy.access_log import JSONFormatter
from ollama_smart_proxy.testing import FakeOllama, StreamingASGITransport
from tests.conftest import upstream
from tests.helpers import API, keyed, make

pytestmark = pytest.mark.anyio


async def test_health_endpoints(client: httpx.AsyncClient) -> None:
    live = await client.get("/health/live")
    assert live.status_code == 200
    assert live.json() == {"status": "ok", "version": __version__}
    for path in ("/health", "/health/ready"):
        ready = await client.get(path)
        assert ready.status_code == 200
        body = ready.json()
        assert body["status"] == "ok"
        assert body["version"] == __version__
        assert body["upstream_version"] == "0.32.15"


async def test_health_503_when_upstream_errors() -> None:
    async def broken(scope: dict, receive: object, send: object) -> None:  # type: ignore[type-arg]
        await send({"type": "http.response.start", "status": 500, "headers": []})  # type: ignore[operator]
        await send({"type": "http.response.body", "body": b"boom"})  # type: ignore[operator]

    async with SmartProxy(transport=upstream(broken)) as proxy:
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=proxy), base_url="http://p")
        response = await client.get("/health")
    assert response.status_code == 503
    assert response.json()["reason"] == "Ollama answered /api/version with HTTP 500"


class _ClosingTransport(StreamingASGITransport):
    closed = 0

    async def aclose(self) -> None:
        self.closed += 1


async def test_lifespan_opens_and_closes_the_transport(fake: FakeOllama) -> None:
    transport = _ClosingTransport(fake)
    proxy = SmartProxy(transport=transport)
    async with LifespanManager(proxy):
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=proxy), base_url="http://p")
        assert (await client.get("/api/tags")).status_code == 200
        assert transport.closed == 0
    assert transport.closed == 1


async def test_works_mounted_without_lifespan(fake: FakeOllama) -> None:
    proxy = SmartProxy(transport=upstream(fake))
    outer = Starlette(routes=[Mount("/llm", app=proxy)])
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=outer), base_url="http://p"
    ) as client:
        response = await client.post(
            "/llm/api/chat",
            json={
                "model": "llama3.2",
                "messages": [{"role": "user", "content": "hi"}],
                "stream": False,
            },
        )
        tags = await client.get("/llm/api/tags")
    assert response.json()["message"]["content"] == "hi"
    assert tags.status_code == 200
    assert fake.requests[0].path == "/api/chat"
    assert fake.requests[1].path == "/api/tags"
    await proxy.aclose()


async def test_request_id_and_access_log(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ollama_smart_proxy.access")
    response = await client.post(
        "/api/chat",
        json={"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]},
        headers={"x-request-id": "abc-123"},
    )
    assert response.headers["x-request-id"] == "abc-123"
    generated = (await client.get("/api/tags", headers={"x-request-id": "bad id!"})).headers
    assert len(generated["x-request-id"]) == 32
    records = [r for r in caplog.records if r.name == "ollama_smart_proxy.access"]
    assert len(records) == 2
    first = records[0]
    assert first.request_id == "abc-123"  # type: ignore[attr-defined]
    assert first.model == "llama3.2"  # type: ignore[attr-defined]
    assert first.status == 200  # type: ignore[attr-defined]
    assert first.bytes == len(response.content)  # type: ignore[attr-defined]
    assert "POST /api/chat llama3.2 200" in first.getMessage()
    line = json.loads(JSONFormatter().format(first))
    assert line["request_id"] == "abc-123"
    assert line["path"] == "/api/chat"
    assert line["duration_ms"] >= 0


async def test_fake_ollama_can_be_mounted_under_a_prefix() -> None:
    fake = FakeOllama()
    outer = Starlette(routes=[Mount("/ollama", app=fake)])
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=outer), base_url="http://o"
    ) as client:
        tags = await client.get("/ollama/api/tags")
    assert tags.status_code == 200 and tags.json()["models"]
    assert fake.requests[0].path == "/api/tags"


async def test_failed_stream_and_client_are_in_the_access_log(
    fake: FakeOllama, caplog: pytest.LogCaptureFixture
) -> None:
    from ollama_smart_proxy.testing import FakeReply

    caplog.set_level(logging.INFO, logger="ollama_smart_proxy.access")
    fake.script(FakeReply(content="a b c d", drop_after=2))
    proxy = SmartProxy(transport=StreamingASGITransport(fake))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=proxy, client=("10.1.2.3", 5555)), base_url="http://p"
    ) as client:
        response = await client.post(
            "/api/chat",
            json={"model": "llama3.2", "messages": [{"role": "user", "content": "x"}]},
        )
    assert response.status_code == 200  # the stream had begun
    record = next(r for r in caplog.records if r.name == "ollama_smart_proxy.access")
    assert record.client == "10.1.2.3:5555"  # type: ignore[attr-defined]
    assert "closed the stream early" in record.error  # type: ignore[attr-defined]
    assert record.getMessage().startswith("10.1.2.3:5555 POST /api/chat llama3.2 200")
    assert 'error="' in record.getMessage()


def test_a_proxy_that_forwards_to_itself_answers_508() -> None:
    import socket

    from ollama_smart_proxy.testing import serve_in_thread

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proxy = SmartProxy(Settings(upstream=f"http://127.0.0.1:{port}"))
    with serve_in_thread(proxy, port=port) as url:
        response = httpx.get(url + "/api/tags", timeout=10)
    assert response.status_code == 508
    assert "the upstream" in response.json()["error"]
    assert "is the proxy itself" in response.json()["error"]


async def test_cors_preflight_allowed_and_refused() -> None:
    _, client = keyed(FakeOllama(), cors_origins=["https://chat.example"])
    preflight = {
        "origin": "https://chat.example",
        "access-control-request-method": "POST",
        "access-control-request-headers": "authorization, content-type",
    }
    allowed = await client.options("/v1/chat/completions", headers=preflight)
    assert allowed.status_code == 200  # no key needed: browsers send none on a preflight
    assert allowed.headers["access-control-allow-origin"] == "https://chat.example"
    refused = await client.options(
        "/v1/chat/completions", headers={**preflight, "origin": "https://evil.example"}
    )
    assert "access-control-allow-origin" not in refused.headers
    real = await client.get(
        "/api/tags",
        headers={"origin": "https://chat.example", "authorization": f"Bearer {API}"},
    )
    assert real.headers["access-control-allow-origin"] == "https://chat.example"
    assert "x-request-id" in real.headers["access-control-expose-headers"]


# -- Host and Origin, as Ollama checks them -----------------------------------------------


@pytest.mark.parametrize("path", ["/api/tags", "/api/ps", "/v1/models", "/metrics", "/health"])
async def test_without_keys_a_public_host_is_refused_as_ollama_refuses_it(path: str) -> None:
    fake = FakeOllama()
    _, client = make(fake)
    refused = await client.get(path, headers={"host": "evil.example"})
    assert refused.status_code == 403
    assert "OSP_ALLOWED_HOSTS" in json.dumps(refused.json())
    assert fake.requests == []
    for host in ("localhost:11435", "127.0.0.1:11435", "[::1]:11435", "192.168.1.5", "box.local"):
        assert (await client.get(path, headers={"host": host})).status_code == 200, host


async def test_allowed_hosts_names_more_and_keys_lift_the_check() -> None:
    _, client = make(FakeOllama(), allowed_hosts=["*.corp.example"])
    assert (await client.get("/api/tags", headers={"host": "ai.corp.example"})).status_code == 200
    assert (await client.get("/api/tags", headers={"host": "corp.example"})).status_code == 403
    _, keyed_client = keyed(FakeOllama())
    answered = await keyed_client.get(
        "/api/tags", headers={"host": "ai.example.com", "authorization": f"Bearer {API}"}
    )
    assert answered.status_code == 200
    probe = await make(FakeOllama())[1].get("/health/live", headers={"host": "evil.example"})
    assert probe.status_code == 200  # probes are never refused


async def test_a_web_page_cannot_make_the_proxy_pull() -> None:
    """A cross-site simple POST (text/plain, no preflight) from a page on another site."""
    fake = FakeOllama()
    _, client = make(fake, auto_pull="on")
    refused = await client.post(
        "/api/pull",
        content=b'{"model": "mistral"}',
        headers={"origin": "https://evil.example", "content-type": "text/plain"},
    )
    assert refused.status_code == 403
    assert "OSP_CORS_ORIGINS" in refused.json()["error"]
    assert fake.requests == []
    for origin in ("http://localhost:3000", "http://127.0.0.1:8080", "http://p", "app://x"):
        allowed = await client.get("/api/tags", headers={"origin": origin})
        assert allowed.status_code == 200, origin
    _, ui = make(FakeOllama(), cors_origins=["https://chat.example"])
    assert (
        await ui.get("/api/tags", headers={"origin": "https://chat.example"})
    ).status_code == 200
