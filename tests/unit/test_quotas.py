"""Per-key limits, the headers clients read, usage accounting (in one process)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from ollama_smart_proxy import Settings, SmartProxy
from ollama_smart_proxy.testing import FakeOllama, FakeReply
from tests.conftest import upstream

pytestmark = pytest.mark.anyio

TEAM = "sk-team-0123456789"
ADMIN = "sk-admin-0123456789"
CHAT = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}], "stream": False}
T0 = 1_800_000_000.0 + 5  # five seconds into a minute (and into a UTC day)


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def proxy_with(fake: FakeOllama, clock: Clock | None = None, **limits: Any) -> SmartProxy:
    keys = [{"key": TEAM, "name": "team", **limits}]
    proxy = SmartProxy(
        Settings(api_keys=keys, admin_keys=[{"key": ADMIN, "name": "ops"}]),
        transport=upstream(fake),
    )
    assert proxy.accounts is not None
    if clock is not None:
        proxy.accounts.clock = clock
    return proxy


def client_of(proxy: SmartProxy, key: str = TEAM) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=proxy),
        base_url="http://p",
        headers={"authorization": f"Bearer {key}"},
    )


async def test_requests_per_minute_in_every_dialect_with_the_headers_its_clients_read() -> None:
    clock = Clock()
    proxy = proxy_with(FakeOllama(), clock, requests_per_minute=2)
    async with client_of(proxy) as client:
        openai_body = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}
        first = await client.post("/v1/chat/completions", json=openai_body)
        assert first.status_code == 200
        assert first.headers["x-ratelimit-limit-requests"] == "2"
        assert first.headers["x-ratelimit-remaining-requests"] == "1"
        assert first.headers["x-ratelimit-reset-requests"].endswith("s")
        assert (await client.post("/api/chat", json=CHAT)).status_code == 200
        native = await client.post("/api/chat", json=CHAT)
        assert native.status_code == 429
        assert native.json()["error"].startswith("the key 'team' reached its limit")
        assert 1 <= int(native.headers["retry-after"]) <= 60
        openai = await client.post("/v1/chat/completions", json=openai_body)
        assert openai.status_code == 429
        error = openai.json()["error"]
        assert (error["type"], error["code"]) == ("rate_limit_error", "rate_limit_exceeded")
        assert openai.headers["x-ratelimit-remaining-requests"] == "0"
        anthropic = await client.post(
            "/v1/messages",
            json={
                "model": "llama3.2",
                "max_tokens": 5,
                "messages": [{"role": "user", "content": "x"}],
            },
        )
        assert anthropic.status_code == 429
        assert anthropic.json()["error"]["type"] == "rate_limit_error"
        assert anthropic.headers["anthropic-ratelimit-requests-limit"] == "2"
        assert anthropic.headers["anthropic-ratelimit-requests-remaining"] == "0"
        assert anthropic.headers["anthropic-ratelimit-requests-reset"].endswith("Z")
        # Other routes are not generations: never counted, never refused.
        assert (await client.get("/api/tags")).status_code == 200
        clock.now += 120  # two minutes on: the window has moved past both
        assert (await client.post("/api/chat", json=CHAT)).status_code == 200


async def test_the_minute_refills_at_the_limit_per_minute() -> None:
    clock = Clock(T0 + 50)  # late in a minute
    proxy = proxy_with(FakeOllama(), clock, requests_per_minute=4)
    async with client_of(proxy) as client:
        for _ in range(4):
            assert (await client.post("/api/chat", json=CHAT)).status_code == 200
        assert (await client.post("/api/chat", json=CHAT)).status_code == 429
        clock.now += 10  # 10 s on: 4 a minute refill 0.67, not a whole request
        assert (await client.post("/api/chat", json=CHAT)).status_code == 429
        clock.now += 6  # 16 s on: 1.07 refilled, room for one
        assert (await client.post("/api/chat", json=CHAT)).status_code == 200


async def test_tokens_per_minute_are_settled_from_ollamas_counts() -> None:
    clock = Clock()
    fake = FakeOllama()
    proxy = proxy_with(fake, clock, tokens_per_minute=40)
    async with client_of(proxy) as client:
        long = {**CHAT, "messages": [{"role": "user", "content": "word " * 30}]}
        first = await client.post("/api/chat", json=long)  # crosses the limit: it finishes
        assert first.status_code == 200 and first.json()["done"] is True
        counted = first.json()["prompt_eval_count"] + first.json()["eval_count"]
        assert counted > 40
        refused = await client.post("/api/chat", json=CHAT)  # the next one waits
        assert refused.status_code == 429
        assert "tokens_per_minute" in refused.json()["error"]
        clock.now += 120
        assert (await client.post("/api/chat", json=CHAT)).status_code == 200


async def test_concurrent_generations_per_key() -> None:
    fake = FakeOllama()
    proxy = proxy_with(fake, concurrent=1)
    fake.script(FakeReply(content="slow", first_delay=0.3))
    async with client_of(proxy) as client:
        results: list[httpx.Response] = []

        async def one() -> None:
            results.append(await client.post("/api/chat", json=CHAT))

        async with anyio.create_task_group() as group:
            group.start_soon(one)
            await anyio.sleep(0.1)
            group.start_soon(one)
        statuses = sorted(r.status_code for r in results)
        assert statuses == [200, 429]
        refused = next(r for r in results if r.status_code == 429)
        assert refused.headers["retry-after"] == "1"
        assert (await client.post("/api/chat", json=CHAT)).status_code == 200  # given back


async def test_tokens_per_day_reset_at_the_next_utc_day() -> None:
    clock = Clock()
    proxy = proxy_with(FakeOllama(), clock, tokens_per_day=10)
    async with client_of(proxy) as client:
        assert (await client.post("/api/chat", json=CHAT)).status_code == 200
        assert (await client.post("/api/chat", json=CHAT)).status_code == 200  # 2 x ~7 tokens
        refused = await client.post("/api/chat", json=CHAT)
        assert refused.status_code == 429 and "tokens_per_day" in refused.json()["error"]
        assert int(refused.headers["retry-after"]) > 3600
        clock.now += 86400
        assert (await client.post("/api/chat", json=CHAT)).status_code == 200


async def test_usage_counts_what_ollama_reported_per_key_model_and_day() -> None:
    fake = FakeOllama()
    proxy = proxy_with(fake)  # no limits: counted all the same
    async with client_of(proxy) as client, client_of(proxy, ADMIN) as admin:
        answers = [(await client.post("/api/chat", json=CHAT)).json() for _ in range(3)]
        openai = await client.post(
            "/v1/chat/completions",
            json={"model": "qwen3", "messages": [{"role": "user", "content": "one two"}]},
        )
        assert openai.status_code == 200
        missing = await client.post("/api/chat", json={**CHAT, "model": "nope"})
        assert missing.status_code == 404
        usage = (await admin.get("/usage")).json()["usage"]
        rows = {row["model"]: row for row in usage}
        llama = rows["llama3.2"]
        assert llama["key"] == "team" and llama["requests"] == 3
        assert llama["prompt_tokens"] == sum(a["prompt_eval_count"] for a in answers)
        assert llama["completion_tokens"] == sum(a["eval_count"] for a in answers)
        assert llama["errors"] == 0
        usage_tokens = openai.json()["usage"]
        assert rows["qwen3"]["prompt_tokens"] == usage_tokens["prompt_tokens"]
        assert rows["qwen3"]["completion_tokens"] == usage_tokens["completion_tokens"]
        assert rows["nope"]["errors"] == 1
        assert (await admin.get("/usage?key=nobody")).json() == {"usage": []}
        assert (await admin.get("/usage?since=2999-01-01")).json() == {"usage": []}
        bad = await admin.get("/usage?since=yesterday")
        assert bad.status_code == 400 and "YYYY-MM-DD" in bad.json()["error"]
        assert (await client.get("/usage")).status_code == 403  # not an admin key


async def test_usage_without_keys_says_why() -> None:
    proxy = SmartProxy(Settings(), transport=upstream(FakeOllama()))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=proxy), base_url="http://p"
    ) as c:
        response = await c.get("/usage")
        assert response.status_code == 404 and "API key" in response.json()["error"]


async def test_key_limits_are_the_default_for_keys_that_set_none() -> None:
    proxy = SmartProxy(
        Settings(
            api_keys=[TEAM, {"key": "sk-ci-0123456789", "name": "ci", "requests_per_minute": 5}],
            key_limits={"requests_per_minute": 1},
        ),
        transport=upstream(FakeOllama()),
    )
    async with client_of(proxy) as team, client_of(proxy, "sk-ci-0123456789") as ci:
        assert (await team.post("/api/chat", json=CHAT)).status_code == 200
        assert (await team.post("/api/chat", json=CHAT)).status_code == 429
        for _ in range(5):
            assert (await ci.post("/api/chat", json=CHAT)).status_code == 200


def test_limits_in_a_keys_file_and_bad_ones(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    path.write_text(json.dumps({"keys": [{"key": TEAM, "name": "team", "tokens_per_day": 100000}]}))
    settings = Settings(keys_file=path)
    proxy = SmartProxy(settings, transport=upstream(FakeOllama()))
    assert proxy.keys[0].limits.tokens_per_day == 100000
    path.write_text(json.dumps({"keys": [{"key": TEAM, "requests_per_minute": 0}]}))
    with pytest.raises(ValueError, match="requests_per_minute"):
        SmartProxy(Settings(keys_file=path), transport=upstream(FakeOllama()))
    with pytest.raises(ValueError, match="not a limit"):
        Settings(key_limits={"requests_per_hour": 5})


async def test_the_audit_line_and_the_metrics_by_key(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from ollama_smart_proxy.access_log import JSONFormatter

    proxy = proxy_with(FakeOllama(), requests_per_minute=1)
    with caplog.at_level(logging.INFO, logger="ollama_smart_proxy.access"):
        async with client_of(proxy) as client, client_of(proxy, ADMIN) as admin:
            ok = (await client.post("/api/chat", json=CHAT)).json()
            assert (await client.post("/api/chat", json=CHAT)).status_code == 429
            metrics = (await admin.get("/metrics")).text
    lines = [
        json.loads(JSONFormatter().format(r)) for r in caplog.records if r.name.endswith("access")
    ]
    served, refused = lines[0], lines[1]
    assert served["key"] == "team" and served["model"] == "llama3.2"
    assert served["prompt_tokens"] == ok["prompt_eval_count"]
    assert served["completion_tokens"] == ok["eval_count"]
    assert served["outcome"] == "ok" and served["ttft_ms"] > 0 and served["duration_ms"] > 0
    assert served["time"].endswith("Z") and "T" in served["time"]  # ISO 8601, UTC
    assert (refused["status"], refused["outcome"]) == (429, "refused")
    assert (
        f'osp_key_tokens_total{{direction="in",key="team"}} {float(ok["prompt_eval_count"])}'
        in metrics
    )


async def test_an_agents_own_requests_are_charged_to_the_clients_key() -> None:
    from ollama_smart_proxy.agents.base import Agent

    class Consult(Agent):
        """Asks the model something of its own before the client's request goes on."""

        name = "consult"
        activation = "always"

        async def on_request(self, request: Any, call: Any) -> None:
            body = {"model": "llama3.2", "prompt": "one two three four five", "stream": False}
            status, answer = await self.call_ollama("POST", "/api/generate", body)
            assert status == 200
            self.side = answer

    fake = FakeOllama()
    proxy = SmartProxy(
        Settings(
            api_keys=[{"key": TEAM, "name": "team"}], admin_keys=[{"key": ADMIN, "name": "ops"}]
        ),
        agents=[Consult],
        transport=upstream(fake),
    )
    async with client_of(proxy) as client, client_of(proxy, ADMIN) as admin:
        own = (await client.post("/api/chat", json=CHAT)).json()
        (row,) = (await admin.get("/usage")).json()["usage"]
    side = next(r.json for r in fake.requests if r.path == "/api/generate")
    assert side["prompt"] == "one two three four five"
    assert row["requests"] == 1
    assert row["prompt_tokens"] > own["prompt_eval_count"]  # the side request's are in it
    assert row["completion_tokens"] == own["eval_count"] + 5  # the echo of five words


@pytest.mark.parametrize(
    ("limit", "value", "later"),
    [
        ("output_tokens_per_minute", 1, 120),
        ("input_tokens_per_minute", 5, 120),
        ("tokens_per_month", 10, 40 * 86400),
    ],
)
async def test_the_other_limits_refuse_then_reset(limit: str, value: int, later: int) -> None:
    clock = Clock()
    proxy = proxy_with(FakeOllama(), clock, **{limit: value})
    async with client_of(proxy) as client:
        for _ in range(3):  # ~4 prompt and 1 completion tokens each
            response = await client.post("/api/chat", json=CHAT)
            if response.status_code == 429:
                break
        assert response.status_code == 429 and limit in response.json()["error"]
        clock.now += later
        assert (await client.post("/api/chat", json=CHAT)).status_code == 200
