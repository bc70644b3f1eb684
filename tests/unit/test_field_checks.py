"""Fields whose wrong values Ollama would not refuse, refused by the proxy with their name."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from ollama_smart_proxy import Settings, SmartProxy
from ollama_smart_proxy.testing import FakeOllama
from tests.conftest import upstream

pytestmark = pytest.mark.anyio

MESSAGES = [{"role": "user", "content": "hi"}]


async def post(path: str, body: dict[str, Any]) -> tuple[httpx.Response, FakeOllama]:
    fake = FakeOllama()
    proxy = SmartProxy(Settings(), transport=upstream(fake))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=proxy), base_url="http://p"
    ) as c:
        return await c.post(path, json=body), fake


@pytest.mark.parametrize("value", [0, -1])
async def test_anthropic_max_tokens_must_be_positive(value: int) -> None:
    response, fake = await post(
        "/v1/messages", {"model": "llama3.2", "max_tokens": value, "messages": MESSAGES}
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["message"] == "'max_tokens' is required and must be positive"
    assert fake.calls("/api/chat") == []  # never forwarded as an unbounded generation


@pytest.mark.parametrize("value", [0, -5])
async def test_responses_max_output_tokens_must_be_positive(value: int) -> None:
    response, fake = await post(
        "/v1/responses", {"model": "llama3.2", "input": "hi", "max_output_tokens": value}
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "max_output_tokens"
    assert fake.calls("/api/chat") == []


@pytest.mark.parametrize("choice", [5, "bogus", ["auto"], True])
async def test_tool_choice_of_the_wrong_type_is_a_400_naming_it(choice: Any) -> None:
    response, fake = await post(
        "/v1/chat/completions", {"model": "llama3.2", "messages": MESSAGES, "tool_choice": choice}
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "tool_choice"
    assert fake.calls("/api/chat") == []


async def test_a_tool_call_cut_by_the_limit_still_says_tool_calls() -> None:
    from ollama_smart_proxy.anthropic.render import stop_reason
    from ollama_smart_proxy.openai.render import finish_reason

    assert finish_reason("length", True) == "tool_calls"
    assert finish_reason("length", False) == "length"
    assert stop_reason("length", True) == "tool_use"
    assert stop_reason("length", False) == "max_tokens"
    from ollama_smart_proxy.testing import FakeReply

    fake = FakeOllama()
    fake.script(FakeReply(tool_calls=[{"function": {"name": "get_weather"}}], done_reason="length"))
    proxy = SmartProxy(Settings(), transport=upstream(fake))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=proxy), base_url="http://p"
    ) as c:
        tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
        body = {"model": "llama3.2", "messages": MESSAGES, "tools": tools, "max_tokens": 3}
        choice = (await c.post("/v1/chat/completions", json=body)).json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["tool_calls"][0]["function"]["name"] == "get_weather"


async def test_a_responses_stream_cut_by_its_limit_ends_with_response_incomplete() -> None:
    import openai

    proxy = SmartProxy(Settings(), transport=upstream(FakeOllama()))
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=proxy), base_url="http://p/v1")
    async with openai.AsyncOpenAI(base_url="http://p/v1", api_key="x", http_client=http) as sdk:
        stream = await sdk.responses.create(
            model="llama3.2", input="one two three four five", max_output_tokens=2, stream=True
        )
        events = [event async for event in stream]
        assert events[-1].type == "response.incomplete"
        final = events[-1].response  # type: ignore[union-attr]
        assert final.status == "incomplete"
        assert final.incomplete_details is not None
        assert final.incomplete_details.reason == "max_output_tokens"
        whole = await sdk.responses.create(model="llama3.2", input="one two")
        assert whole.status == "completed" and whole.completed_at is not None


async def test_anthropic_message_start_carries_an_input_token_estimate() -> None:
    from ollama_smart_proxy.anthropic.render import MessagesEncoder
    from ollama_smart_proxy.anthropic.translate import MessagesOptions

    encoder = MessagesEncoder(MessagesOptions("llama3.2", True, input_estimate=123))
    frame = encoder.encode({"model": "llama3.2", "message": {"content": "hi"}, "done": False})
    start = json.loads(frame.split(b"data: ", 1)[1].split(b"\n", 1)[0])
    assert start["type"] == "message_start"
    assert start["message"]["usage"]["input_tokens"] == 123  # before Ollama has counted
    response, _ = await post(
        "/v1/messages",
        {
            "model": "llama3.2",
            "max_tokens": 5,
            "stream": True,
            "messages": [{"role": "user", "content": "a fairly long question " * 20}],
        },
    )
    first = response.text.split("data: ", 1)[1].split("\n", 1)[0]
    assert json.loads(first)["message"]["usage"]["input_tokens"] > 50


async def test_anthropic_errors_name_the_request_id() -> None:
    response, _ = await post("/v1/messages", {"model": "llama3.2", "messages": MESSAGES})
    assert response.status_code == 400
    body = response.json()
    assert body["type"] == "error" and body["request_id"] == response.headers["x-request-id"]
