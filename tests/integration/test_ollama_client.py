"""The official `ollama` client (sync and async) against the proxy over real sockets."""

from __future__ import annotations

from collections.abc import Iterator

import ollama
import pytest

from ollama_smart_proxy.testing import FakeOllama, FakeReply

MESSAGES = [{"role": "user", "content": "why is the sky blue"}]


@pytest.fixture
def client(proxy_url: str) -> Iterator[ollama.Client]:
    with ollama.Client(host=proxy_url) as client:
        yield client


def test_sync_client_every_call(client: ollama.Client, fake: FakeOllama) -> None:
    reply = client.chat(model="llama3.2", messages=MESSAGES)
    assert reply.message.content == "why is the sky blue"
    assert reply.done_reason == "stop"
    parts = list(client.chat(model="llama3.2", messages=MESSAGES, stream=True))
    assert "".join(p.message.content or "" for p in parts) == "why is the sky blue"
    assert parts[-1].done is True and len(parts) == 6

    generated = client.generate(model="llama3.2", prompt="once upon a time")
    assert generated.response == "once upon a time"
    assert generated.context

    embedded = client.embed(model="all-minilm", input=["a", "b"])
    assert len(embedded.embeddings) == 2 and len(embedded.embeddings[0]) == 16

    assert {m.model for m in client.list().models} >= {"llama3.2:latest", "all-minilm:latest"}
    assert "completion" in (client.show("llama3.2").capabilities or [])
    assert {m.model for m in client.ps().models} == {"llama3.2:latest"}
    assert client.pull("mistral").status == "success"
    progress = list(client.pull("phi3", stream=True))
    assert progress[-1].status == "success" and progress[1].total
    assert client.copy("mistral", "mistral-copy").status == "success"
    assert client.delete("mistral-copy").status == "success"
    assert "mistral-copy:latest" not in fake.models

    sent = fake.calls("/api/chat")[0].json
    assert sent["model"] == "llama3.2" and sent["stream"] is False and sent["tools"] == []


def test_sync_client_errors(client: ollama.Client, fake: FakeOllama) -> None:
    with pytest.raises(ollama.ResponseError) as info:
        client.chat(model="does-not-exist", messages=MESSAGES)
    assert info.value.status_code == 404
    assert info.value.error == "model 'does-not-exist' not found"
    with pytest.raises(ollama.ResponseError) as info:
        list(client.chat(model="does-not-exist", messages=MESSAGES, stream=True))
    assert info.value.status_code == 404
    with pytest.raises(ollama.ResponseError) as info:
        client.show("nope")
    assert info.value.status_code == 404
    fake.script(
        FakeReply(
            content="a b c", error="an error was encountered while running the model", error_after=1
        )
    )
    with pytest.raises(ollama.ResponseError) as info:
        list(client.chat(model="llama3.2", messages=MESSAGES, stream=True))
    assert info.value.error == "an error was encountered while running the model"
    # the proxy keeps serving
    assert client.chat(model="llama3.2", messages=MESSAGES).message.content


@pytest.mark.anyio
async def test_async_client(proxy_url: str) -> None:
    async with ollama.AsyncClient(host=proxy_url) as client:
        await _async_calls(client)


async def _async_calls(client: ollama.AsyncClient) -> None:
    reply = await client.chat(model="qwen3", messages=MESSAGES)
    assert reply.message.content == "why is the sky blue"
    assert reply.message.thinking
    pieces = []
    async for part in await client.generate(model="llama3.2", prompt="a b c", stream=True):
        pieces.append(part.response)
    assert "".join(pieces) == "a b c"
    assert (await client.embed(model="all-minilm", input="x")).embeddings
    assert (await client.list()).models
    with pytest.raises(ollama.ResponseError) as info:
        await client.generate(model="does-not-exist", prompt="x")
    assert info.value.status_code == 404
