"""The official `openai` SDK (sync and async) against the proxy over real sockets."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import openai
import pytest

from ollama_smart_proxy import Settings, SmartProxy
from ollama_smart_proxy.testing import FakeModel, FakeOllama, FakeReply, serve_in_thread

IMG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNk+A8AAQUBAScY42YAAAAASUVORK5CYII="
USER = [{"role": "user", "content": "say hello world"}]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]
CALL = FakeReply(tool_calls=[{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}])


@pytest.fixture
def client(proxy_url: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=proxy_url + "/v1", api_key="sk-test", max_retries=0) as client:
        yield client


def sent(fake: FakeOllama, path: str = "/api/chat") -> dict[str, object]:
    return fake.calls(path)[-1].json  # type: ignore[no-any-return]


def test_chat_non_stream(client: openai.OpenAI, fake: FakeOllama) -> None:
    reply = client.chat.completions.create(
        model="llama3.2", messages=USER, max_tokens=50, temperature=0.2
    )
    assert reply.choices[0].message.content == "say hello world"
    assert reply.choices[0].finish_reason == "stop"
    assert reply.object == "chat.completion"
    assert reply.usage is not None and reply.usage.completion_tokens == 3
    assert sent(fake) == {
        "model": "llama3.2",
        "messages": USER,
        "stream": False,
        "options": {"temperature": 0.2, "num_predict": 50},
    }


def test_chat_stream_with_usage(client: openai.OpenAI, fake: FakeOllama) -> None:
    stream = client.chat.completions.create(
        model="qwen3",
        messages=USER,
        stream=True,
        stream_options={"include_usage": True},
        reasoning_effort="low",
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    reasoning = "".join(
        getattr(c.choices[0].delta, "reasoning", None) or "" for c in chunks if c.choices
    )
    assert text == "say hello world"
    assert reasoning.startswith("The user wrote")
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0
    assert len({c.id for c in chunks}) == 1
    assert sent(fake)["think"] == "low"
    assert sent(fake)["stream"] is True


def test_tools_round_trip(client: openai.OpenAI, fake: FakeOllama) -> None:
    fake.script(CALL)
    reply = client.chat.completions.create(model="llama3.2", messages=USER, tools=TOOLS)  # type: ignore[arg-type]
    call = reply.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert reply.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    assert json.loads(call.function.arguments) == {"city": "Paris"}  # type: ignore[union-attr]
    assert sent(fake)["tools"] == TOOLS

    fake.script(CALL)
    streamed = list(
        client.chat.completions.create(model="llama3.2", messages=USER, tools=TOOLS, stream=True)
    )  # type: ignore[arg-type]
    deltas = [tc for c in streamed for tc in (c.choices[0].delta.tool_calls or [])]
    assert deltas[0].function.name == "get_weather"  # type: ignore[union-attr]
    assert streamed[-1].choices[0].finish_reason == "tool_calls"

    followup = [
        *USER,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": call.function.arguments},
                }
            ],
        },  # type: ignore[union-attr]
        {"role": "tool", "tool_call_id": call.id, "content": "20 degrees"},
    ]
    client.chat.completions.create(
        model="llama3.2", messages=followup, tools=TOOLS, tool_choice="none"
    )  # type: ignore[arg-type]
    upstream = sent(fake)
    assert "tools" not in upstream
    messages = upstream["messages"]
    assert messages[1] == {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {
                "id": call.id,
                "function": {"index": 0, "name": "get_weather", "arguments": {"city": "Paris"}},
            }
        ],
    }  # type: ignore[index]
    assert messages[2] == {
        "role": "tool",
        "content": "20 degrees",
        "tool_call_id": call.id,
        "tool_name": "get_weather",
    }  # type: ignore[index]


def test_json_mode_schema_and_images(client: openai.OpenAI, fake: FakeOllama) -> None:
    client.chat.completions.create(
        model="llama3.2", messages=USER, response_format={"type": "json_object"}
    )
    assert sent(fake)["format"] == "json"
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    client.chat.completions.create(
        model="llama3.2",
        messages=USER,
        response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}},
    )
    assert sent(fake)["format"] == schema
    client.chat.completions.create(
        model="llava",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is this"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64," + IMG}},
                ],
            }
        ],
    )
    assert sent(fake)["messages"] == [{"role": "user", "content": "what is this", "images": [IMG]}]


def test_extra_body_reaches_ollama(client: openai.OpenAI, fake: FakeOllama) -> None:
    client.chat.completions.create(
        model="llama3.2",
        messages=USER,
        max_completion_tokens=20,
        extra_body={"options": {"num_ctx": 8192}, "keep_alive": "1h", "think": False},
    )
    assert sent(fake)["options"] == {"num_ctx": 8192, "num_predict": 20}
    assert sent(fake)["keep_alive"] == "1h"
    assert sent(fake)["think"] is False


def test_embeddings(client: openai.OpenAI, fake: FakeOllama) -> None:
    default = client.embeddings.create(model="all-minilm", input="hello")  # SDK asks base64
    assert len(default.data) == 1
    assert len(default.data[0].embedding) == 16
    floats = client.embeddings.create(
        model="all-minilm", input=["a", "b", "c"], encoding_format="float"
    )
    assert [d.index for d in floats.data] == [0, 1, 2]
    assert (
        abs(
            default.data[0].embedding[0]
            - client.embeddings.create(model="all-minilm", input="hello", encoding_format="float")
            .data[0]
            .embedding[0]
        )
        < 1e-6
    )
    assert sent(fake, "/api/embed") == {"model": "all-minilm", "input": "hello"}
    assert floats.usage.prompt_tokens == 3


def test_models_and_completions(client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert "llama3.2:latest" in ids
    model = client.models.retrieve("llama3.2")
    assert model.id == "llama3.2"
    assert model.owned_by == "library"
    assert (
        client.completions.create(model="llama3.2", prompt="once upon a time").choices[0].text
        == "once upon a time"
    )
    text = "".join(
        c.choices[0].text
        for c in client.completions.create(model="llama3.2", prompt="a b", stream=True)
    )
    assert text == "a b"


def test_errors_as_sdk_exceptions(client: openai.OpenAI, fake: FakeOllama) -> None:
    with pytest.raises(openai.NotFoundError) as not_found:
        client.chat.completions.create(model="nope", messages=USER)
    assert not_found.value.code == "model_not_found"
    assert not_found.value.type == "not_found_error"  # type: ignore[attr-defined]
    with pytest.raises(openai.NotFoundError):
        list(client.chat.completions.create(model="nope", messages=USER, stream=True))
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("user/does-not-exist:7b")
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="llama3.2", messages=USER, n=2)
    assert bad.value.param == "n"  # type: ignore[attr-defined]
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="llama3.2", messages=[])
    fake.fail_next(503, "server busy, please try again.  maximum pending requests exceeded")
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="llama3.2", messages=USER)
    fake.script(FakeReply(content="a b c d", error="the model crashed", error_after=2))
    with pytest.raises(openai.APIError, match="the model crashed"):
        list(client.chat.completions.create(model="llama3.2", messages=USER, stream=True))
    assert (
        client.chat.completions.create(model="llama3.2", messages=USER).choices[0].message.content
    )


def test_bad_json_and_wrong_method(proxy_url: str) -> None:
    response = httpx.post(proxy_url + "/v1/chat/completions", content=b'{"model":')
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert httpx.get(proxy_url + "/v1/chat/completions").status_code == 405
    assert httpx.get(proxy_url + "/models").json()["object"] == "list"  # served without /v1 too


def test_upstream_down_is_502_in_openai_shape() -> None:
    with serve_in_thread(SmartProxy(Settings(upstream="http://127.0.0.1:9"))) as url:
        with openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0) as client:
            with pytest.raises(openai.InternalServerError) as info:
                client.chat.completions.create(model="m", messages=USER)
    assert info.value.status_code == 502
    assert info.value.body["type"] == "api_error"  # type: ignore[index]


@pytest.mark.anyio
async def test_async_sdk(proxy_url: str, fake: FakeOllama) -> None:
    async with openai.AsyncOpenAI(base_url=proxy_url + "/v1", api_key="x", max_retries=0) as client:
        reply = await client.chat.completions.create(model="llama3.2", messages=USER)
        assert reply.choices[0].message.content == "say hello world"
        pieces = [
            c.choices[0].delta.content or ""
            async for c in await client.chat.completions.create(
                model="llama3.2", messages=USER, stream=True
            )
            if c.choices
        ]
        assert "".join(pieces) == "say hello world"
        embedded = await client.embeddings.create(model="all-minilm", input=["x", "y"])
        assert len(embedded.data) == 2
        models = await client.models.list()
        assert models.data


def test_models_with_slashes_and_embedding_errors(client: openai.OpenAI, fake: FakeOllama) -> None:
    fake.models["user/coder:7b"] = FakeModel("user/coder:7b")
    assert client.models.retrieve("user/coder:7b").owned_by == "user"
    assert "user/coder:7b" in [m.id for m in client.models.list()]
    with pytest.raises(openai.NotFoundError) as info:
        client.embeddings.create(model="nope", input="x")
    assert info.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad:
        client.embeddings.create(model="all-minilm", input=[[1, 2, 3]])  # token arrays
    assert bad.value.param == "input"  # type: ignore[attr-defined]
    fake.script(FakeReply(content="a b c", error="boom", error_after=1))
    with pytest.raises(openai.APIError, match="boom"):
        list(client.completions.create(model="llama3.2", prompt="x", stream=True))


def test_aliases_are_listed(fake_url: str) -> None:
    proxy = SmartProxy(Settings(upstream=fake_url, aliases={"gpt-4o-mini": "llama3.2"}))
    with serve_in_thread(proxy) as url, openai.OpenAI(base_url=url + "/v1", api_key="x") as client:
        listed = {m.id: m.owned_by for m in client.models.list()}
        assert listed["gpt-4o-mini"] == "ollama-smart-proxy"
        assert client.models.retrieve("gpt-4o-mini").id == "gpt-4o-mini"
