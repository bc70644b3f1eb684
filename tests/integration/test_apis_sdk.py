"""OpenAI Responses and Anthropic Messages through the official SDKs, over a real socket,
against the proxy over FakeOllama: what reached the fake, field by field, and what the
client parsed."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
from pydantic import BaseModel

from ollama_smart_proxy import Settings, SmartProxy
from ollama_smart_proxy.testing import FakeOllama, FakeReply, serve_in_thread

DATA = Path(__file__).parents[1] / "data" / "clients"
PNG = base64.b64encode(
    bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
        "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
    )
).decode()
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Weather for a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}
CLAUDE_ALIASES = {
    "claude-sonnet-5": "llama3.2",
    "claude-opus-4-8": "qwen3",
    "claude-haiku-4-5-20251001": "llama3.2",
}


@pytest.fixture
def url(fake_url: str) -> Iterator[str]:
    settings = Settings(upstream=fake_url, aliases={**CLAUDE_ALIASES, "gpt-5-codex": "qwen3"})
    with serve_in_thread(SmartProxy(settings, entry_points=False)) as proxy_url:
        yield proxy_url


@pytest.fixture
def claude(url: str) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=url, api_key="sk-any", max_retries=0) as client:
        yield client


@pytest.fixture
def codex(url: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=url + "/v1", api_key="sk-any", max_retries=0) as client:
        yield client


# -- Anthropic ------------------------------------------------------------------------------


def test_messages_create_and_what_reached_ollama(
    claude: anthropic.Anthropic, fake: FakeOllama
) -> None:
    message = claude.messages.create(
        model="claude-sonnet-5",
        max_tokens=64,
        system="be brief",
        stop_sequences=["END"],
        messages=[{"role": "user", "content": "hello there"}],
        extra_body={"temperature": 0.3, "top_p": 0.9, "top_k": 20},
    )
    assert message.content[0].type == "text" and message.content[0].text == "hello there"
    assert message.stop_reason == "end_turn"
    assert message.model == "claude-sonnet-5"
    assert message.usage.output_tokens == 2
    sent = fake.calls("/api/chat")[-1].json
    assert sent == {
        "model": "llama3.2",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hello there"},
        ],
        "stream": False,
        "options": {
            "num_predict": 64,
            "temperature": 0.3,
            "top_p": 0.9,
            "top_k": 20,
            "stop": ["END"],
        },
    }


@pytest.mark.anyio
async def test_async_stream_helper_with_thinking(url: str, fake: FakeOllama) -> None:
    async with anthropic.AsyncAnthropic(base_url=url, api_key="x", max_retries=0) as client:
        async with client.messages.stream(
            model="claude-opus-4-8",
            max_tokens=100,
            thinking={"type": "enabled", "budget_tokens": 50},
            messages=[{"role": "user", "content": "think then answer"}],
        ) as stream:
            texts = [text async for text in stream.text_stream]
            final = await stream.get_final_message()
    assert "".join(texts) == "think then answer"
    assert [block.type for block in final.content] == ["thinking", "text"]
    assert final.content[0].thinking.startswith("The user wrote 3 words")  # type: ignore[union-attr]
    assert fake.calls("/api/chat")[-1].json["think"] is True


def test_tool_use_round_trip(claude: anthropic.Anthropic, fake: FakeOllama) -> None:
    fake.script(
        FakeReply(
            tool_calls=[{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]
        )
    )
    first = claude.messages.create(
        model="claude-sonnet-5",
        max_tokens=100,
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
        messages=[{"role": "user", "content": "weather in Paris?"}],
    )
    assert first.stop_reason == "tool_use"
    use = first.content[0]
    assert use.type == "tool_use" and use.input == {"city": "Paris"}
    fake.script("It is sunny.")
    second = claude.messages.create(
        model="claude-sonnet-5",
        max_tokens=100,
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
        messages=[
            {"role": "user", "content": "weather in Paris?"},
            {"role": "assistant", "content": [block.model_dump() for block in first.content]},
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": use.id, "content": "sunny, 21C"}
                ],
            },
        ],
    )
    assert second.content[0].text == "It is sunny."  # type: ignore[union-attr]
    sent = fake.calls("/api/chat")[-1].json
    assert sent["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather for a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    assert sent["messages"][1]["tool_calls"][0]["function"]["arguments"] == {"city": "Paris"}
    assert sent["messages"][2] == {
        "role": "tool",
        "content": "sunny, 21C",
        "tool_call_id": use.id,
        "tool_name": "get_weather",
    }


def test_images_reach_ollama_as_base64(claude: anthropic.Anthropic, fake: FakeOllama) -> None:
    claude.messages.create(
        model="claude-sonnet-5",
        max_tokens=10,
        messages=[
            {
                "role": "user",
                "content": [
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": PNG},
                    },
                    {"type": "text", "text": "what is this?"},
                ],
            }
        ],
    )
    assert fake.calls("/api/chat")[-1].json["messages"] == [
        {"role": "user", "content": "what is this?", "images": [PNG]}
    ]


def test_errors_in_anthropics_shape_as_sdk_exceptions(
    claude: anthropic.Anthropic, fake: FakeOllama
) -> None:
    with pytest.raises(anthropic.BadRequestError) as bad:
        claude.messages.create(model="claude-sonnet-5", messages=[], max_tokens=5)
    assert bad.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    assert "'messages'" in bad.value.body["error"]["message"]  # type: ignore[index]
    no_limit = httpx.post(
        str(claude.base_url).rstrip("/") + "/v1/messages",
        json={"model": "m", "messages": [{"role": "user", "content": "x"}]},
    )
    assert no_limit.status_code == 400
    assert no_limit.json() == {
        "type": "error",
        "error": {
            "type": "invalid_request_error",
            "message": "'max_tokens' is required and must be positive",
        },
        "request_id": no_limit.headers["x-request-id"],
    }
    with pytest.raises(anthropic.NotFoundError) as missing:
        claude.messages.create(
            model="nope", max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )
    assert missing.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    fake.script(FakeReply(content="a b c d", error="model crashed", error_after=2))
    with (
        claude.messages.stream(
            model="claude-sonnet-5", max_tokens=5, messages=[{"role": "user", "content": "x"}]
        ) as stream,
        pytest.raises(anthropic.APIStatusError, match="model crashed"),
    ):
        stream.get_final_message()


def test_upstream_down_is_a_502_the_sdk_raises() -> None:
    with (
        serve_in_thread(SmartProxy(Settings(upstream="http://127.0.0.1:9"))) as url,
        anthropic.Anthropic(base_url=url, api_key="x", max_retries=0) as client,
    ):
        with pytest.raises(anthropic.InternalServerError) as down:
            client.messages.create(
                model="m", max_tokens=5, messages=[{"role": "user", "content": "x"}]
            )
    assert down.value.status_code == 502
    assert "cannot reach Ollama" in down.value.body["error"]["message"]  # type: ignore[index]


def test_count_tokens_is_an_estimate(claude: anthropic.Anthropic, fake: FakeOllama) -> None:
    counted = claude.messages.count_tokens(
        model="claude-sonnet-5", messages=[{"role": "user", "content": "count these words"}]
    )
    assert 3 <= counted.input_tokens <= 20
    assert fake.requests == []  # Ollama has no such endpoint


@pytest.mark.parametrize("model", ["qwen3", "llama3.2"])
def test_claude_code_request_as_recorded(fake_url: str, fake: FakeOllama, model: str) -> None:
    """A body in the shape Claude Code 2.1 sends, with its headers and ?beta=true; for a
    model that cannot think, the opt-in agent drops the thinking request."""
    body = json.loads((DATA / "claude_code_messages.json").read_text())
    settings = Settings(
        upstream=fake_url, aliases={"claude-sonnet-5": model}, drop_unsupported_tools=True
    )
    with serve_in_thread(SmartProxy(settings, entry_points=False)) as url:
        check_claude_code(url, body, fake, model)


def check_claude_code(url: str, body: dict[str, Any], fake: FakeOllama, model: str) -> None:
    headers = {
        "anthropic-version": "2023-06-01",
        "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14,"
        "fine-grained-tool-streaming-2025-05-14,context-management-2025-06-27",
        "x-api-key": "sk-any",
        "authorization": "Bearer sk-any",
        "user-agent": "claude-cli/2.1.332 (external, cli)",
    }
    assert httpx.head(url + "/").status_code == 200  # Claude Code's first request
    response = httpx.post(url + "/v1/messages?beta=true", json=body, headers=headers, timeout=30)
    assert response.status_code == 200
    events = [line for line in response.text.split("\n") if line.startswith("event: ")]
    assert events[0] == "event: message_start" and events[-1] == "event: message_stop"
    sent = fake.calls("/api/chat")[-1].json
    assert sent["model"] == model
    assert sent["options"]["num_predict"] == 32000
    system = sent["messages"][0]
    assert system["role"] == "system"
    assert not system["content"].startswith("x-anthropic-billing-header")  # dropped
    assert system["content"].startswith("You are Claude Code")
    assert len(sent["tools"]) == 24
    assert sent.get("think") == ("high" if model == "qwen3" else None)
    roles = [m["role"] for m in sent["messages"]]
    assert roles == ["system", "user", "assistant", "tool", "system", "user"]
    assert sent["messages"][2]["thinking"] == "I should run ls."
    assert sent["messages"][3]["tool_name"] == "Bash"
    for request in fake.requests:
        assert "x-api-key" not in request.headers and "authorization" not in request.headers


# -- OpenAI Responses ------------------------------------------------------------------------


def test_responses_create_and_what_reached_ollama(codex: openai.OpenAI, fake: FakeOllama) -> None:
    response = codex.responses.create(
        model="llama3.2",
        instructions="be brief",
        input="hello there",
        max_output_tokens=50,
        temperature=0.2,
        top_p=0.8,
    )
    assert response.output_text == "hello there"
    assert response.status == "completed"
    assert response.usage is not None and response.usage.output_tokens == 2
    assert fake.calls("/api/chat")[-1].json == {
        "model": "llama3.2",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hello there"},
        ],
        "stream": False,
        "options": {"temperature": 0.2, "top_p": 0.8, "num_predict": 50},
    }


def test_responses_stream_with_reasoning(codex: openai.OpenAI, fake: FakeOllama) -> None:
    with codex.responses.stream(
        model="qwen3", input="stream these words", reasoning={"effort": "low"}
    ) as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == "stream these words" == final.output_text
    assert [item.type for item in final.output] == ["reasoning", "message"]
    assert fake.calls("/api/chat")[-1].json["think"] == "low"


def test_responses_function_call_round_trip(codex: openai.OpenAI, fake: FakeOllama) -> None:
    tool = {
        "type": "function",
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    }
    fake.script(
        FakeReply(tool_calls=[{"function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}])
    )
    with codex.responses.stream(model="llama3.2", input="weather?", tools=[tool]) as stream:  # type: ignore[list-item]
        first = stream.get_final_response()
    call = first.output[0]
    assert call.type == "function_call" and json.loads(call.arguments) == {"city": "Oslo"}
    fake.script("It is cold.")
    second = codex.responses.create(
        model="llama3.2",
        tools=[tool],  # type: ignore[list-item]
        input=[
            {"role": "user", "content": "weather?"},
            call.model_dump(),  # type: ignore[list-item]
            {"type": "function_call_output", "call_id": call.call_id, "output": "cold, -3C"},
        ],
    )
    assert second.output_text == "It is cold."
    messages = fake.calls("/api/chat")[-1].json["messages"]
    assert messages[1]["tool_calls"][0]["function"]["arguments"] == {"city": "Oslo"}
    assert messages[2] == {
        "role": "tool",
        "content": "cold, -3C",
        "tool_call_id": call.call_id,
        "tool_name": "get_weather",
    }


class Answer(BaseModel):
    answer: str


def test_responses_json_schema_output(codex: openai.OpenAI, fake: FakeOllama) -> None:
    fake.script('{"answer": "42"}')
    parsed = codex.responses.parse(model="llama3.2", input="the answer?", text_format=Answer)
    assert parsed.output_parsed == Answer(answer="42")
    sent = fake.calls("/api/chat")[-1].json
    assert sent["format"]["properties"]["answer"]["type"] == "string"


def test_responses_errors_as_sdk_exceptions(codex: openai.OpenAI, fake: FakeOllama) -> None:
    with pytest.raises(openai.BadRequestError, match="previous_response_id"):
        codex.responses.create(model="llama3.2", input="x", previous_response_id="resp_1")
    with pytest.raises(openai.NotFoundError):
        codex.responses.create(model="nope", input="x")
    fake.script(FakeReply(content="a b c d", error="model crashed", error_after=2))
    with pytest.raises(openai.APIError, match="model crashed"):
        for _ in codex.responses.create(model="llama3.2", input="x", stream=True):
            pass


def test_codex_request_as_recorded(url: str, fake: FakeOllama) -> None:
    body = json.loads((DATA / "codex_responses.json").read_text())
    assert httpx.get(url + "/v1/responses").status_code == 405  # its WebSocket attempt
    response = httpx.post(
        url + "/v1/responses", json=body, headers={"authorization": "Bearer sk-any"}, timeout=30
    )
    assert response.status_code == 200
    events = [line for line in response.text.split("\n") if line.startswith("event: ")]
    assert events[0] == "event: response.created" and events[-1] == "event: response.completed"
    sent = fake.calls("/api/chat")[-1].json
    assert sent["model"] == "qwen3"  # the alias for Codex's model name
    roles = [m["role"] for m in sent["messages"]]
    assert roles == ["system", "system", "user", "user", "assistant", "tool", "assistant", "user"]
    assert sent["messages"][4]["thinking"] == "I will read the file."
    assert sent["messages"][5]["tool_name"] == "shell"
    names = [tool["function"]["name"] for tool in sent["tools"]]
    assert names == ["shell", "mcp__files__read", "apply_patch"]  # web_search, custom dropped
    assert sent["think"] == "medium"


def test_slash_commands_in_both_apis(
    claude: anthropic.Anthropic, codex: openai.OpenAI, fake: FakeOllama
) -> None:
    help_text = claude.messages.create(
        model="claude-sonnet-5", max_tokens=10, messages=[{"role": "user", "content": "/help"}]
    ).content[0]
    assert help_text.text.startswith("Available commands:")  # type: ignore[union-attr]
    history: list[Any] = [
        {"role": "user", "content": "/set parameter temperature 0.2"},
        {"role": "assistant", "content": "Set parameter 'temperature' to '0.2'"},
        {"role": "user", "content": "/set system You are a pirate"},
        {"role": "assistant", "content": "Set system message."},
        {"role": "user", "content": "hello"},
    ]
    claude.messages.create(model="claude-sonnet-5", max_tokens=10, messages=history)
    sent = fake.calls("/api/chat")[-1].json
    assert sent["options"]["temperature"] == 0.2
    assert sent["messages"] == [
        {"role": "system", "content": "You are a pirate"},
        {"role": "user", "content": "hello"},
    ]
    ack = codex.responses.create(model="llama3.2", input="/set parameter temperature 0.3")
    assert ack.output_text == "Set parameter 'temperature' to '0.3'"
    replayed = codex.responses.create(
        model="llama3.2",
        input=[
            {"role": "user", "content": "/set parameter temperature 0.3"},
            {"role": "assistant", "content": ack.output_text},
            {"role": "user", "content": "hi"},
        ],
    )
    assert replayed.output_text == "hi"
    assert fake.calls("/api/chat")[-1].json["options"] == {"temperature": 0.3}
