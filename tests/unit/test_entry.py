"""``ModelEntry``: one entry layer, a dialect per wire format; each public entry used alone."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager

from ollama_smart_proxy import (
    AnthropicCompat,
    Dialect,
    Endpoint,
    ErrorBoundary,
    Exchange,
    ModelEntry,
    NativeEntry,
    OpenAICompat,
    ResponsesCompat,
    Translation,
)
from ollama_smart_proxy.encoding import NativeEncoder
from ollama_smart_proxy.entry import BodyLimits
from ollama_smart_proxy.schemas import ChatRequest
from ollama_smart_proxy.testing import FakeOllama
from ollama_smart_proxy.types import Receive, Scope, Send

pytestmark = pytest.mark.anyio

CHAT = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}], "stream": False}


class Lifespan:
    """A tiny inner app that completes lifespan and answers nothing else."""

    def __init__(self) -> None:
        self.started = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "lifespan"
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.started = True
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return


@pytest.mark.parametrize(
    "layer", [NativeEntry, OpenAICompat, ResponsesCompat, AnthropicCompat], ids=lambda c: c.__name__
)
async def test_each_entry_alone_passes_lifespan_through(layer: Any) -> None:
    inner = Lifespan()
    async with LifespanManager(layer(inner)):
        pass
    assert inner.started


@pytest.mark.parametrize(
    ("layer", "path"),
    [
        (NativeEntry, "/api/chat"),
        (OpenAICompat, "/v1/chat/completions"),
        (ResponsesCompat, "/v1/responses"),
        (AnthropicCompat, "/v1/messages"),
    ],
)
async def test_each_entry_alone_serves_its_dialect_over_fake_ollama(layer: Any, path: str) -> None:
    body: dict[str, Any] = {**CHAT, "max_tokens": 16}
    if layer is ResponsesCompat:
        body = {"model": "llama3.2", "input": "hi", "stream": False}
    app = ErrorBoundary(layer(FakeOllama(reply="hello")))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://e") as c:
        response = await c.post(path, json=body)
        tags = await c.get("/api/tags")
    assert response.status_code == 200, response.text
    assert "hello" in response.text
    assert tags.status_code == 200  # what the dialect does not serve passes through


async def test_a_method_a_dialect_does_not_allow_is_a_405_with_allow() -> None:
    app = ErrorBoundary(OpenAICompat(FakeOllama()))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://e") as c:
        response = await c.get("/v1/chat/completions")
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert response.json()["error"]["message"] == (
        "GET is not allowed on /v1/chat/completions; use POST"
    )


async def test_native_methods_it_does_not_parse_go_to_ollama() -> None:
    fake = FakeOllama()
    app = ErrorBoundary(NativeEntry(fake))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://e") as c:
        response = await c.get("/api/chat")
    assert response.status_code == 405  # Ollama's own answer
    assert [r.path for r in fake.requests] == ["/api/chat"]


async def test_a_new_dialect_is_one_dialect_object() -> None:
    """A wire format of one's own: a route family, an endpoint, a translation."""

    def translate(raw: bytes, limits: BodyLimits) -> Translation:
        text = raw.decode()
        request = ChatRequest(model="llama3.2", messages=[{"role": "user", "content": text}])
        return Translation(Exchange("chat", request), NativeEncoder(), "/api/chat")

    plain = Dialect("ollama", "native", {"chat": Endpoint(("POST",), translate=translate)})
    fake = FakeOllama(reply="ok")
    app = ErrorBoundary(ModelEntry(fake, dialects=[plain]))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://e") as c:
        response = await c.post("/api/chat", content=b"plain words")
    assert response.status_code == 200
    assert fake.requests[0].json["messages"] == [{"role": "user", "content": "plain words"}]


async def test_two_dialects_for_one_family_are_refused() -> None:
    dialect = Dialect("openai", "openai")
    with pytest.raises(ValueError, match="two dialects serve one route family"):
        ModelEntry(FakeOllama(), dialects=[dialect, dialect])


async def test_message_limits_are_checked_in_one_place_for_every_dialect() -> None:
    messages = [{"role": "user", "content": "x"}] * 3
    app = ErrorBoundary(
        ModelEntry(
            FakeOllama(),
            dialects=[*NativeEntry(FakeOllama()).dialects.values()],
            max_messages=2,
        )
    )
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://e") as c:
        native = await c.post("/api/chat", content=json.dumps({**CHAT, "messages": messages}))
    assert native.status_code == 413
    assert "more than the limit of 2" in native.json()["error"]
    for layer, path in [(OpenAICompat, "/v1/chat/completions"), (AnthropicCompat, "/v1/messages")]:
        app = ErrorBoundary(layer(FakeOllama(), max_messages=2))
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://e"
        ) as c:
            response = await c.post(path, json={**CHAT, "messages": messages, "max_tokens": 5})
        assert response.status_code == 413, path
