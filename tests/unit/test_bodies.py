"""``BodyGuard``: every client's body arrives in bounded time and all bodies share one bound."""

from __future__ import annotations

import json
from typing import Any

import anyio
import pytest

from ollama_smart_proxy import ErrorBoundary, Settings, SmartProxy
from ollama_smart_proxy.security import BodyBudget, BodyGuard
from ollama_smart_proxy.testing import FakeOllama, StreamingASGITransport
from ollama_smart_proxy.types import Message, Receive, Scope, Send

pytestmark = pytest.mark.anyio


def scope(path: str = "/api/chat", method: str = "POST") -> Scope:
    return {
        "type": "http",
        "method": method,
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"localhost")],
        "client": ("127.0.0.1", 1),
    }


async def reader(scope: Scope, receive: Receive, send: Send) -> None:
    """Reads the whole body, then answers with its size."""
    size = 0
    while True:
        message = await receive()
        size += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    body = json.dumps({"size": size}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


class Client:
    """Sends ``pieces`` of a body, then (``stall``) waits until told to go on."""

    def __init__(self, pieces: list[bytes], *, stall: bool = False) -> None:
        self.pieces = list(pieces)
        self.stall = stall
        self.go_on = anyio.Event()
        self.sent: list[Message] = []

    async def receive(self) -> Message:
        if self.pieces:
            piece = self.pieces.pop(0)
            return {"type": "http.request", "body": piece, "more_body": True}
        if self.stall:
            await self.go_on.wait()
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(self, message: Message) -> None:
        self.sent.append(message)

    @property
    def status(self) -> int:
        return int(self.sent[0]["status"])

    @property
    def body(self) -> Any:
        return json.loads(b"".join(m.get("body", b"") for m in self.sent[1:]))


async def test_a_body_that_does_not_arrive_in_time_is_a_408() -> None:
    app = ErrorBoundary(BodyGuard(reader, body_timeout=0.2))
    client = Client([b"{"], stall=True)
    with anyio.fail_after(10):
        await app(scope(), client.receive, client.send)
    assert client.status == 408
    assert "OSP_BODY_TIMEOUT" in client.body["error"]


async def test_bodies_in_flight_share_one_bound_and_give_it_back() -> None:
    budget = BodyBudget(100)
    app = ErrorBoundary(BodyGuard(reader, budget=budget))
    first = Client([b"x" * 60], stall=True)
    second = Client([b"y" * 60])
    async with anyio.create_task_group() as group:
        group.start_soon(app, scope(), first.receive, first.send)
        with anyio.fail_after(10):
            while budget.held < 60:
                await anyio.sleep(0.001)
        await app(scope("/v1/chat/completions"), second.receive, second.send)
        assert second.status == 503
        assert second.body["error"]["message"].startswith("the proxy already holds 1 MiB")
        assert ("retry-after", "1") in [
            (k.decode(), v.decode()) for k, v in second.sent[0]["headers"]
        ]
        first.go_on.set()
    assert first.status == 200 and first.body == {"size": 60}
    assert budget.held == 0  # given back when the request ended
    third = Client([b"z" * 90])
    await app(scope(), third.receive, third.send)
    assert third.status == 200


async def test_model_blobs_are_streamed_and_not_counted() -> None:
    budget = BodyBudget(10)
    app = ErrorBoundary(BodyGuard(reader, budget=budget))
    client = Client([b"b" * 1000, b"b" * 1000])
    await app(scope("/api/blobs/sha256:" + "0" * 64), client.receive, client.send)
    assert client.status == 200 and client.body == {"size": 2000}


async def test_the_proxy_bounds_what_all_clients_hold() -> None:
    fake = FakeOllama()
    settings = Settings(max_buffered_bytes=1000, body_timeout=5)
    proxy = SmartProxy(settings, transport=StreamingASGITransport(fake))
    big = json.dumps(
        {"model": "llama3.2", "messages": [{"role": "user", "content": "x" * 2000}]}
    ).encode()
    client = Client([big])
    await proxy(scope(), client.receive, client.send)
    assert client.status == 503
    assert fake.requests == []
