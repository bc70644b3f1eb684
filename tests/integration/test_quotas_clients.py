"""Per-key limits with the official clients on real sockets, and across replicas with Redis."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import anthropic
import anyio
import httpx
import ollama
import openai
import pytest

from ollama_smart_proxy import Settings, SmartProxy
from ollama_smart_proxy.testing import (
    FakeOllama,
    FakeReply,
    RedisServer,
    StreamingASGITransport,
    serve_in_thread,
)

TEAM = "sk-team-0123456789"
ADMIN = "sk-admin-0123456789"
MESSAGES = [{"role": "user", "content": "why is the sky blue"}]


def serve(fake: FakeOllama, **limits: Any) -> Any:
    settings = Settings(
        upstream="http://fake:11434",
        api_keys=[{"key": TEAM, "name": "team", **limits}],
        admin_keys=[{"key": ADMIN, "name": "ops"}],
    )
    return serve_in_thread(SmartProxy(settings, transport=StreamingASGITransport(fake)))


@pytest.fixture
def fake() -> FakeOllama:
    return FakeOllama()


def hold_the_place(fake: FakeOllama, create: Any, **body: Any) -> threading.Thread:
    """A slow request in a thread of its own, under way: it holds the key's one place."""
    fake.script(FakeReply(content="slow", first_delay=0.6))
    thread = threading.Thread(target=create, kwargs={"model": "llama3.2", **body})
    thread.start()
    time.sleep(0.2)
    return thread


def test_openai_sdk_sees_the_limit_and_its_retry_honours_it(fake: FakeOllama) -> None:
    with serve(fake, concurrent=1) as url:
        plain = openai.OpenAI(base_url=f"{url}/v1", api_key=TEAM, max_retries=0)
        raw = plain.chat.completions.with_raw_response.create(model="llama3.2", messages=MESSAGES)
        assert raw.http_response.status_code == 200
        first = hold_the_place(fake, plain.chat.completions.create, messages=MESSAGES)
        with pytest.raises(openai.RateLimitError) as info:
            plain.chat.completions.create(model="llama3.2", messages=MESSAGES)
        assert info.value.response.headers["retry-after"] == "1"
        assert info.value.code == "rate_limit_exceeded"
        first.join()
        # The SDK's own retry waits the Retry-After it was given, and then gets through.
        first = hold_the_place(fake, plain.chat.completions.create, messages=MESSAGES)
        retrying = openai.OpenAI(base_url=f"{url}/v1", api_key=TEAM, max_retries=2)
        started = time.monotonic()
        answer = retrying.chat.completions.create(model="llama3.2", messages=MESSAGES)
        assert answer.choices[0].message.content == "why is the sky blue"
        assert time.monotonic() - started >= 0.9  # it waited about the second it was told
        first.join()


def test_openai_rate_limit_headers_on_every_answer(fake: FakeOllama) -> None:
    with serve(fake, requests_per_minute=10, tokens_per_minute=1000) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=TEAM, max_retries=0)
        raw = client.chat.completions.with_raw_response.create(model="llama3.2", messages=MESSAGES)
        headers = raw.http_response.headers
        assert headers["x-ratelimit-limit-requests"] == "10"
        assert headers["x-ratelimit-remaining-requests"] == "9"
        assert headers["x-ratelimit-limit-tokens"] == "1000"
        assert int(headers["x-ratelimit-remaining-tokens"]) < 1000
        assert headers["x-ratelimit-reset-requests"].endswith("s")


def test_anthropic_sdk_sees_the_limit_with_its_headers(fake: FakeOllama) -> None:
    with serve(fake, requests_per_minute=1) as url:
        client = anthropic.Anthropic(base_url=url, api_key=TEAM, max_retries=0)
        raw = client.messages.with_raw_response.create(
            model="llama3.2", max_tokens=20, messages=MESSAGES
        )
        assert raw.http_response.headers["anthropic-ratelimit-requests-limit"] == "1"
        assert raw.http_response.headers["anthropic-ratelimit-requests-remaining"] == "0"
        with pytest.raises(anthropic.RateLimitError) as info:
            client.messages.create(model="llama3.2", max_tokens=20, messages=MESSAGES)
        assert info.value.status_code == 429
        assert info.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
        assert int(info.value.response.headers["retry-after"]) >= 1


def test_ollama_client_sees_429_and_usage_equals_what_the_fake_counted(fake: FakeOllama) -> None:
    with serve(fake, requests_per_minute=3) as url:
        with ollama.Client(host=url, headers={"authorization": f"Bearer {TEAM}"}) as client:
            answers = [client.chat(model="llama3.2", messages=MESSAGES) for _ in range(2)]
            parts = list(client.chat(model="llama3.2", messages=MESSAGES, stream=True))
            with pytest.raises(ollama.ResponseError) as info:
                client.chat(model="llama3.2", messages=MESSAGES)
            assert info.value.status_code == 429
        usage = httpx.get(f"{url}/usage", headers={"authorization": f"Bearer {ADMIN}"}).json()
        (row,) = [r for r in usage["usage"] if r["model"] == "llama3.2"]
        finals = [*answers, parts[-1]]
        assert row["requests"] == 3 and row["errors"] == 0  # the refused one used nothing
        assert row["prompt_tokens"] == sum(a.prompt_eval_count or 0 for a in finals)
        assert row["completion_tokens"] == sum(a.eval_count or 0 for a in finals)


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.mark.anyio
async def test_three_replicas_never_admit_more_than_a_keys_limit(redis: RedisServer) -> None:
    fake = FakeOllama()
    settings = Settings(
        api_keys=[{"key": TEAM, "name": "team", "requests_per_minute": 5}],
        admin_keys=[{"key": ADMIN, "name": "ops"}],
        redis_url=redis.url,
    )
    proxies = [SmartProxy(settings, transport=StreamingASGITransport(fake)) for _ in range(3)]
    clients = [
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=proxy),
            base_url="http://p",
            headers={"authorization": f"Bearer {TEAM}"},
        )
        for proxy in proxies
    ]
    for proxy in proxies:
        await proxy.startup()
    try:
        statuses: list[int] = []

        async def one(index: int) -> None:
            body = {"model": "llama3.2", "messages": MESSAGES, "stream": False}
            statuses.append((await clients[index % 3].post("/api/chat", json=body)).status_code)

        async with anyio.create_task_group() as group:
            for index in range(15):
                group.start_soon(one, index)
        assert sorted(statuses) == [200] * 5 + [429] * 10
        # Usage is in Redis: any replica reports every replica's, and a new one too.
        fresh = SmartProxy(settings, transport=StreamingASGITransport(fake))
        async with (
            fresh,
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=fresh),
                base_url="http://p",
                headers={"authorization": f"Bearer {ADMIN}"},
            ) as admin,
        ):
            (row,) = (await admin.get("/usage")).json()["usage"]
        assert (row["key"], row["requests"], row["errors"]) == ("team", 5, 0)
    finally:
        for client in clients:
            await client.aclose()
        for proxy in proxies:
            await proxy.aclose()


def test_uvicorns_own_lines_are_json_too() -> None:
    """With OSP_LOG_FORMAT=json every line on stderr, the server's own too, is one JSON object
    with an ISO 8601 time: a log pipeline can take the whole stream as the audit trail."""
    import json
    import os
    import subprocess
    import sys

    from ollama_smart_proxy.testing import free_port

    port = free_port()
    env = {**os.environ, "OSP_LOG_FORMAT": "json", "OSP_PORT": str(port)}
    process = subprocess.Popen(
        [sys.executable, "-m", "ollama_smart_proxy", "--demo"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                httpx.post(
                    f"http://127.0.0.1:{port}/api/chat",
                    json={"model": "llama3.2", "messages": MESSAGES, "stream": False},
                    timeout=5,
                )
                break
            except httpx.HTTPError:
                time.sleep(0.05)
    finally:
        process.terminate()
        _, err = process.communicate(timeout=20)
    lines = [line for line in err.decode().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every one of them parses
    loggers = {record["logger"] for record in records}
    assert "uvicorn.error" in loggers and "ollama_smart_proxy.access" in loggers
    assert all(record["time"].endswith("Z") for record in records)


def test_anthropic_sdks_retry_honours_retry_after(fake: FakeOllama) -> None:
    with serve(fake, concurrent=1) as url:
        blocker = anthropic.Anthropic(base_url=url, api_key=TEAM, max_retries=0)
        first = hold_the_place(fake, blocker.messages.create, max_tokens=20, messages=MESSAGES)
        retrying = anthropic.Anthropic(base_url=url, api_key=TEAM, max_retries=2)
        started = time.monotonic()
        answer = retrying.messages.create(model="llama3.2", max_tokens=20, messages=MESSAGES)
        assert answer.content[0].text == "why is the sky blue"  # type: ignore[union-attr]
        assert time.monotonic() - started >= 0.9
        first.join()
