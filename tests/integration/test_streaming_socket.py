"""Streaming, disconnects and failures over real sockets (uvicorn on loopback ports)."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import httpx
import pytest

from ollama_smart_proxy import Settings, SmartProxy
from ollama_smart_proxy.testing import FakeOllama, FakeReply, serve_in_thread
from tests.helpers import wait_for

CHAT = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize("path", ["/api/chat", "/api/generate"])
def test_first_chunk_arrives_before_upstream_finishes(
    proxy_url: str, fake: FakeOllama, path: str
) -> None:
    fake.script(FakeReply(content=" ".join(["word"] * 20), delay=0.05))
    body = CHAT if path == "/api/chat" else {"model": "llama3.2", "prompt": "x"}
    with httpx.stream("POST", proxy_url + path, json=body, timeout=10) as response:
        pieces = response.iter_raw()
        first = next(pieces)
        assert fake.completed_streams == 0  # the fake is still streaming: nothing buffered
        rest = first + b"".join(pieces)
    assert json.loads(first.split(b"\n")[0])["done"] is False
    assert json.loads(rest.splitlines()[-1])["done"] is True


def test_client_leaving_mid_stream_cancels_upstream(proxy_url: str, fake: FakeOllama) -> None:
    fake.script(FakeReply(content=" ".join(["tok"] * 500), delay=0.02))
    with httpx.stream("POST", proxy_url + "/api/chat", json=CHAT, timeout=10) as response:
        next(response.iter_bytes())
    # 500 tokens at 20 ms take 10 s: the fake sees the disconnect long before it could end.
    wait_for(lambda: fake.disconnects, timeout=5)
    assert fake.completed_streams == 0


def test_client_leaving_before_first_byte_cancels_upstream(
    proxy_url: str, fake: FakeOllama
) -> None:
    fake.script(FakeReply(content="late", first_delay=0.5, delay=0.5))
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(proxy_url + "/api/chat", json=CHAT, timeout=0.2)
    # Had the proxy kept the upstream request, the fake would finish its answer instead.
    wait_for(lambda: fake.disconnects, timeout=5)
    assert fake.completed_streams == 0


def test_upstream_dying_mid_stream(proxy_url: str, fake: FakeOllama) -> None:
    fake.script(FakeReply(content="a b c d e f", drop_after=3))
    response = httpx.post(proxy_url + "/api/chat", json=CHAT, timeout=10)
    chunks = [json.loads(line) for line in response.content.splitlines()]
    assert response.status_code == 200
    assert [c["message"]["content"] for c in chunks[:3]] == ["a", " b", " c"]
    assert chunks[-1]["error"].startswith("Ollama closed the stream early")
    assert httpx.post(proxy_url + "/api/chat", json={**CHAT, "stream": False}).status_code == 200


def test_garbage_from_upstream_is_passed_as_bytes_on_fast_path(
    proxy_url: str, fake: FakeOllama
) -> None:
    fake.script(FakeReply(raw_lines=[b'{"ok":1}\n', b"not json\n"]))
    response = httpx.post(proxy_url + "/api/chat", json=CHAT)
    assert response.content == b'{"ok":1}\nnot json\n'


@pytest.fixture
def hanging_upstream() -> Iterator[str]:
    """A socket that accepts connections and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}"
    finally:
        server.close()


def test_upstream_hanging_is_504(hanging_upstream: str) -> None:
    app = SmartProxy(Settings(upstream=hanging_upstream, upstream_timeout=0.3, health_timeout=0.3))
    with serve_in_thread(app) as url:
        response = httpx.post(url + "/api/chat", json=CHAT, timeout=10)
        assert response.status_code == 504
        assert "did not answer within 0.3s" in response.json()["error"]
        assert httpx.get(url + "/health/live").status_code == 200
        ready = httpx.get(url + "/health/ready", timeout=10)
        assert ready.status_code == 503


def test_upstream_down_is_502_and_health_503() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with serve_in_thread(SmartProxy(Settings(upstream=f"http://127.0.0.1:{port}"))) as url:
        response = httpx.post(url + "/api/chat", json=CHAT)
        assert response.status_code == 502
        assert response.json()["error"].startswith(
            f"cannot reach Ollama at http://127.0.0.1:{port}"
        )
        health = httpx.get(url + "/health")
        assert health.status_code == 503
        assert health.json()["status"] == "unavailable"
        assert "cannot reach Ollama" in health.json()["reason"]


def test_upstream_stalling_mid_stream_ends_with_error_line(fake_url: str, fake: FakeOllama) -> None:
    fake.script(FakeReply(content="a b c", delay=1.5))
    with serve_in_thread(SmartProxy(Settings(upstream=fake_url, upstream_timeout=0.3))) as url:
        response = httpx.post(url + "/api/chat", json=CHAT, timeout=10)
        chunks = [json.loads(line) for line in response.content.splitlines()]
    assert chunks[0]["message"]["content"] == "a"
    assert chunks[-1] == {"error": "Ollama sent nothing for 0.3s; the stream was closed"}


def test_the_pool_streams_and_reuses_its_connections(fake_url: str, fake: FakeOllama) -> None:
    proxy = SmartProxy(Settings(upstream=fake_url))
    with serve_in_thread(proxy) as url, httpx.Client(base_url=url) as client:
        for _ in range(3):
            lines = client.post("/api/chat", json=CHAT).content.splitlines()
            assert json.loads(lines[-1])["done"] is True
            assert client.get("/api/tags").json()["models"]
        assert client.post("/api/chat", json={**CHAT, "model": "nope"}).status_code == 404
    assert len({r.client for r in fake.requests}) == 1
