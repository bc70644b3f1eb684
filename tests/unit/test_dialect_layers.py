"""The Responses and Anthropic layers in the proxy, in-process: what Codex and Claude Code
do first, and the opt-in agent for models that cannot call tools or think."""

from __future__ import annotations

import logging

import httpx
import pytest

from ollama_smart_proxy import Settings, SmartProxy
from ollama_smart_proxy.testing import FakeOllama
from ollama_smart_proxy.types import Message
from tests.conftest import upstream

pytestmark = pytest.mark.anyio

TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]


def make(fake: FakeOllama, **settings: object) -> httpx.AsyncClient:
    proxy = SmartProxy(Settings(**settings), transport=upstream(fake))  # type: ignore[arg-type]
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=proxy), base_url="http://p")


async def test_codexs_websocket_attempt_is_refused_at_once() -> None:
    proxy = SmartProxy(transport=upstream(FakeOllama()))
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "websocket.connect"}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {
        "type": "websocket",
        "path": "/v1/responses",
        "raw_path": b"/v1/responses",
        "headers": [],
    }
    await proxy(scope, receive, send)
    assert sent == [{"type": "websocket.close", "code": 1008}]
    client = make(FakeOllama())
    plain = await client.get("/v1/responses")
    assert plain.status_code == 405
    assert plain.json()["error"]["message"].startswith(
        "GET is not allowed on /v1/responses; use POST"
    )


@pytest.mark.parametrize("dialect", ["native", "anthropic"])
async def test_tools_and_thinking_are_dropped_for_models_that_cannot(
    dialect: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ollama_smart_proxy.agents")
    fake = FakeOllama()
    client = make(fake, drop_unsupported_tools=True)
    if dialect == "native":
        response = await client.post(
            "/api/chat",
            json={
                "model": "llava",
                "messages": [{"role": "user", "content": "hi"}],
                "tools": TOOLS,
                "think": True,
                "stream": False,
            },
        )
    else:
        response = await client.post(
            "/v1/messages",
            json={
                "model": "llava",
                "max_tokens": 10,
                "messages": [{"role": "user", "content": "hi"}],
                "tools": [{"name": "f", "input_schema": {"type": "object"}}],
                "thinking": {"type": "enabled", "budget_tokens": 5},
            },
        )
    assert response.status_code == 200, response.text
    sent = fake.calls("/api/chat")[-1].json
    assert "tools" not in sent and "think" not in sent
    assert "dropped 1 tool(s) from a request for llava" in caplog.text
    # a model that can keeps them
    await client.post(
        "/api/chat",
        json={
            "model": "qwen3",
            "messages": [{"role": "user", "content": "x"}],
            "tools": TOOLS,
            "think": True,
        },
    )
    kept = fake.calls("/api/chat")[-1].json
    assert kept["tools"] == TOOLS and kept["think"] is True
    assert len(fake.calls("/api/show")) == 2  # once per model, then remembered


async def test_without_the_agent_ollamas_refusal_stands() -> None:
    client = make(FakeOllama())
    response = await client.post(
        "/v1/messages",
        json={
            "model": "llava",
            "max_tokens": 10,
            "messages": [{"role": "user", "content": "hi"}],
            "tools": [{"name": "f", "input_schema": {"type": "object"}}],
        },
    )
    assert response.status_code == 400
    assert "does not support tools" in response.json()["error"]["message"]
