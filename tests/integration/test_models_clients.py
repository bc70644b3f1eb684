"""Aliases, auto-pull and not-found errors through the official clients, over real sockets."""

from __future__ import annotations

from collections.abc import Iterator

import ollama
import openai
import pytest

from ollama_smart_proxy import Settings, SmartProxy
from ollama_smart_proxy.testing import FakeOllama, serve_in_thread


@pytest.fixture
def url(fake_url: str) -> Iterator[str]:
    settings = Settings(
        upstream=fake_url,
        aliases={"gpt-4o-mini": "llama3.2"},
        auto_pull=["mistral*"],
    )
    with serve_in_thread(SmartProxy(settings)) as proxy_url:
        yield proxy_url


def test_ollama_client_with_an_alias_and_a_pull(url: str, fake: FakeOllama) -> None:
    with ollama.Client(host=url) as client:
        check_ollama(client, fake)


def check_ollama(client: ollama.Client, fake: FakeOllama) -> None:
    reply = client.chat(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi there"}])
    assert reply.message.content == "hi there"
    assert reply.model == "gpt-4o-mini"
    pulled = client.chat(model="mistral", messages=[{"role": "user", "content": "pulled?"}])
    assert pulled.message.content == "pulled?"
    assert fake.pulls["mistral:latest"] == 1
    with pytest.raises(ollama.ResponseError) as caught:
        client.chat(model="phi4", messages=[{"role": "user", "content": "x"}])
    assert caught.value.status_code == 404
    assert "phi4" in caught.value.error


def test_openai_client_with_an_alias_and_a_missing_model(url: str, fake: FakeOllama) -> None:
    with openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0) as client:
        check_openai(client, fake)


def check_openai(client: openai.OpenAI, fake: FakeOllama) -> None:
    reply = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hello"}]
    )
    assert reply.choices[0].message.content == "hello"
    assert reply.model == "gpt-4o-mini"
    streamed = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "a b"}], stream=True
    )
    assert {chunk.model for chunk in streamed} == {"gpt-4o-mini"}
    assert client.models.retrieve("gpt-4o-mini").id == "gpt-4o-mini"
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="phi4", messages=[{"role": "user", "content": "x"}])
    assert caught.value.code == "model_not_found"
    assert sum(fake.pulls.values()) == 0
