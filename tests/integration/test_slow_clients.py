"""Clients that stop: one that stops reading frees its place; a body that stops is a 408.

Over real sockets: the client's receive buffer is made small, so the proxy's send to it
blocks once the kernel's buffers are full, as it does for a client that went to sleep.
"""

from __future__ import annotations

import json
import socket

import httpx
import pytest

from ollama_smart_proxy import Settings, SmartProxy
from ollama_smart_proxy.testing import FakeOllama, FakeReply, serve_in_thread
from tests.helpers import wait_for

BODY = json.dumps({"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]})


def sleepy_client(url: str, body: bytes, *, send_all: bool = True) -> socket.socket:
    """A client that sends a request (or only part of its body) and then reads nothing."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(port)))
    length = len(body) if send_all else len(body) * 2
    head = (
        f"POST /api/chat HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()
    sock.sendall(head + body)
    return sock


@pytest.fixture
def big_answers(fake: FakeOllama) -> FakeOllama:
    words = " ".join(["w" * 500] * 10_000)  # ~6 MB of NDJSON: more than the sockets buffer
    fake.script(FakeReply(content=words, delay=0), FakeReply(content=words, delay=0))
    return fake


def test_clients_that_stop_reading_free_their_places(
    fake_url: str, big_answers: FakeOllama
) -> None:
    settings = Settings(upstream=fake_url, max_concurrent=2, write_timeout=0.5)
    with serve_in_thread(SmartProxy(settings)) as url:
        sleepers = [sleepy_client(url, BODY.encode()) for _ in range(2)]
        try:
            wait_for(lambda: len(big_answers.calls("/api/chat")) == 2)
            # Both places are taken by clients that read nothing; they are given back.
            wait_for(lambda: httpx.get(url + "/health").json()["admission"]["in_flight"] == 0)
            response = httpx.post(url + "/api/chat", content=BODY, timeout=20)
            assert response.status_code == 200
            assert json.loads(response.content.splitlines()[-1])["done"] is True
        finally:
            for sock in sleepers:
                sock.close()


def test_a_body_that_stops_half_way_is_a_408(fake_url: str, fake: FakeOllama) -> None:
    settings = Settings(upstream=fake_url, body_timeout=0.5)
    with serve_in_thread(SmartProxy(settings)) as url:
        sock = sleepy_client(url, BODY.encode(), send_all=False)
        try:
            sock.settimeout(10)
            answer = b""
            while b"OSP_BODY_TIMEOUT" not in answer and (piece := sock.recv(65536)):
                answer += piece  # the head and the body may come in two pieces
        finally:
            sock.close()
    assert answer.startswith(b"HTTP/1.1 408")
    assert b"OSP_BODY_TIMEOUT" in answer
    assert fake.requests == []


@pytest.fixture
def fake() -> FakeOllama:
    return FakeOllama()
