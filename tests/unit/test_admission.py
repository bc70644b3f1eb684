"""``Admission``: the bound on generations in flight, the queue, and model affinity."""

from __future__ import annotations

from typing import Any

import anyio
import httpx
import pytest

from ollama_smart_proxy.testing import FakeOllama, FakeReply, StreamingASGITransport
from tests.helpers import CHAT, queueing, until

pytestmark = pytest.mark.anyio


async def post(client: httpx.AsyncClient, body: dict[str, Any]) -> None:
    await client.post("/api/chat", json=body)


async def test_the_bound_holds_and_the_queue_is_fifo() -> None:
    fake = FakeOllama(token_delay=0.02)
    _, client, admission = queueing(fake, max_concurrent=2, max_queue=20)
    done: list[int] = []

    async def one(index: int) -> None:
        dialect = "/api/chat" if index % 2 else "/v1/chat/completions"
        response = await client.post(
            dialect,
            json={**CHAT, "stream": True, "messages": [{"role": "user", "content": "a b c"}]},
        )
        assert response.status_code == 200
        done.append(index)

    async with anyio.create_task_group() as group:
        for index in range(8):
            group.start_soon(one, index)
            await until(lambda n=index + 1: admission.admitted + admission.queued >= n)
    assert fake.max_active == 2  # Ollama never saw more than the bound
    assert sorted(done) == list(range(8))
    assert admission.in_flight == 0 and admission.queued == 0


async def test_a_full_queue_answers_503_with_retry_after_at_once() -> None:
    fake = FakeOllama()
    # The two that hold the place and the queue answer after 30 s: the test ends first.
    fake.script(
        FakeReply(content="slow", first_delay=30), FakeReply(content="slow", first_delay=30)
    )
    proxy, client, admission = queueing(fake, max_concurrent=1, max_queue=1)
    results: list[httpx.Response] = []

    async def one(path: str) -> None:
        results.append(await client.post(path, json=CHAT))

    async with anyio.create_task_group() as group:
        group.start_soon(one, "/api/chat")
        await until(lambda: admission.in_flight == 1)
        group.start_soon(one, "/api/chat")  # queued
        await until(lambda: admission.queued == 1)
        refused = await client.post("/v1/chat/completions", json=CHAT)
        # At once: the place and the queue are still held, nobody has been answered.
        assert (admission.in_flight, admission.queued, results) == (1, 1, [])
        group.cancel_scope.cancel()
    assert refused.status_code == 503
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.json()["error"]["type"] == "api_error"
    assert "OSP_MAX_QUEUE" in refused.json()["error"]["message"]
    assert admission.refused == 1


async def test_a_wait_past_queue_timeout_is_a_503() -> None:
    fake = FakeOllama()
    fake.script(FakeReply(content="slow", first_delay=1.0))
    proxy, client, admission = queueing(fake, max_concurrent=1, queue_timeout=0.2)
    async with anyio.create_task_group() as group:
        group.start_soon(post, client, CHAT)
        await until(lambda: admission.in_flight == 1)
        waited = await client.post("/api/chat", json=CHAT)
    assert waited.status_code == 503
    assert "no place within 0.2s" in waited.json()["error"]
    assert "retry-after" in waited.headers


async def test_a_client_that_leaves_the_queue_never_reaches_ollama() -> None:
    fake = FakeOllama()
    fake.script(FakeReply(content="slow", first_delay=0.6))
    proxy, client, admission = queueing(fake, max_concurrent=1)
    leaving = httpx.AsyncClient(transport=StreamingASGITransport(proxy), base_url="http://p")
    async with anyio.create_task_group() as group:
        group.start_soon(post, client, CHAT)
        await until(lambda: admission.in_flight == 1)
        await until(lambda: admission.in_flight == 1)
        with anyio.move_on_after(0.1):  # the client gives up while it waits in the queue
            await leaving.post("/api/chat", json={**CHAT, "model": "qwen3"})
        await until(lambda: admission.queued == 0)
    # The first request has ended and freed its place: the one that left never took it.
    await until(lambda: admission.in_flight == 0)
    assert admission.admitted == 1
    assert [r.json["model"] for r in fake.calls("/api/chat")] == ["llama3.2"]


async def test_other_routes_are_never_held() -> None:
    fake = FakeOllama()
    fake.script(FakeReply(content="slow", first_delay=30))  # holds the only place
    proxy, client, admission = queueing(fake, max_concurrent=1, max_queue=0)
    async with anyio.create_task_group() as group:
        group.start_soon(post, client, CHAT)
        await until(lambda: admission.in_flight == 1)
        # Each answered while the generation holds the only place: nothing waits for it.
        for method, path, body in (
            ("GET", "/api/tags", None),
            ("GET", "/api/version", None),
            ("GET", "/api/ps", None),
            ("POST", "/api/show", {"model": "llama3.2"}),
            ("GET", "/health/live", None),
            ("GET", "/metrics", None),
        ):
            response = await client.request(method, path, json=body)
            assert response.status_code == 200, path
        health = (await client.get("/health")).json()["admission"]
        assert health["in_flight"] == 1 and health["max_concurrent"] == 1
        group.cancel_scope.cancel()


async def test_without_affinity_the_queue_is_first_in_first_out() -> None:
    fake = FakeOllama(load_delay=0.05, max_loaded=1)
    proxy, client, admission = queueing(fake, max_concurrent=1)
    models = ["llama3.2", "qwen3", "llama3.2", "qwen3", "llama3.2"]

    async with anyio.create_task_group() as group:
        for arrived, model in enumerate(models, 1):
            group.start_soon(post, client, {**CHAT, "model": model})
            await until(lambda n=arrived: admission.admitted + admission.queued == n)
    assert [r.json["model"] for r in fake.calls("/api/chat")] == models
    assert sum(fake.loads.values()) == 5  # Ollama swapped models for every one


async def alternate(client: httpx.AsyncClient, per_model: int) -> None:
    """Six clients, three for each model, each sending ``per_model`` requests in turn."""

    async def one(model: str) -> None:
        for _ in range(per_model):
            await post(client, {**CHAT, "model": model, "stream": True})

    async with anyio.create_task_group() as group:
        for model in ("llama3.2", "qwen3") * 3:
            group.start_soon(one, model)


@pytest.mark.slow
@pytest.mark.parametrize("max_concurrent", [1, 2])
async def test_affinity_serves_the_loaded_model_first_so_ollama_does_not_thrash(
    max_concurrent: int,
) -> None:
    loads = {}
    for affinity in (0.0, 5.0):
        fake = FakeOllama(load_delay=0.05, max_loaded=1, token_delay=0.002)
        _, client, admission = queueing(
            fake, max_concurrent=max_concurrent, queue_affinity=affinity
        )
        await alternate(client, per_model=4)
        loads[affinity] = sum(fake.loads.values())
        assert len(fake.calls("/api/chat")) == 24
        assert fake.max_active <= max_concurrent
        if affinity:
            assert admission.preferred > 0
    assert loads[0.0] >= 16  # strict FIFO: nearly every request makes Ollama swap models
    assert loads[5.0] <= 4


async def test_affinity_passes_a_request_over_for_at_most_its_seconds() -> None:
    fake = FakeOllama(load_delay=0.05, max_loaded=1, token_delay=0.002)
    _, client, admission = queueing(fake, max_concurrent=1, queue_affinity=0.3)
    finished: dict[str, float] = {}
    busy = True

    async def keep_llama_busy() -> None:
        while busy:
            await post(client, {**CHAT, "stream": True})

    async with anyio.create_task_group() as group:
        for _ in range(3):
            group.start_soon(keep_llama_busy)
        await until(lambda: admission.in_flight == 1 and admission.queued == 2)
        started = anyio.current_time()
        with anyio.fail_after(30):  # starved, it would wait as long as llama3.2 is busy
            await post(client, {**CHAT, "model": "qwen3"})
        finished["qwen3"] = anyio.current_time() - started
        busy = False
    # Held back for its 0.3 s, then given the next place while llama3.2 was still busy.
    assert finished["qwen3"] >= 0.25
    assert fake.loads["qwen3:latest"] == 1


async def test_affinity_lets_the_running_model_into_a_free_place_at_once() -> None:
    fake = FakeOllama(load_delay=0.05, max_loaded=1)
    fake.script(FakeReply(content="slow", first_delay=30))  # llama3.2 runs and runs
    proxy, client, admission = queueing(fake, max_concurrent=2, queue_affinity=5.0)
    async with anyio.create_task_group() as group:
        group.start_soon(post, client, CHAT)  # llama3.2 runs
        await until(lambda: admission.in_flight == 1)
        group.start_soon(post, client, {**CHAT, "model": "qwen3"})  # held back
        await until(lambda: admission.queued == 1)
        assert admission.in_flight == 1  # a place is free, and qwen3 does not take it
        # The free place, at once: answered while the first llama3.2 still runs.
        assert (await client.post("/api/chat", json=CHAT)).status_code == 200
        assert admission.in_flight >= 1
        group.cancel_scope.cancel()
    assert [r.json["model"] for r in fake.calls("/api/chat")][:2] == ["llama3.2", "llama3.2"]
    assert admission.describe()["preferred"] == 1  # the second llama3.2 went first
    metrics = (await client.get("/metrics")).text
    assert "osp_queue_preferred_total 1.0" in metrics


async def test_a_client_held_back_for_affinity_that_leaves_never_reaches_ollama() -> None:
    fake = FakeOllama()
    fake.script(FakeReply(content="slow", first_delay=0.5))
    proxy, client, admission = queueing(fake, max_concurrent=2, queue_affinity=5.0)
    leaving = httpx.AsyncClient(transport=StreamingASGITransport(proxy), base_url="http://p")
    async with anyio.create_task_group() as group:
        group.start_soon(post, client, CHAT)  # llama3.2 runs
        await until(lambda: admission.in_flight == 1)
        with anyio.move_on_after(0.2):  # held back behind llama3.2, then gone
            await leaving.post("/api/chat", json={**CHAT, "model": "qwen3"})
        await until(lambda: admission.queued == 0)
    assert [r.json["model"] for r in fake.calls("/api/chat")] == ["llama3.2"]
    assert admission.in_flight == 0


async def test_generation_routes_passed_through_wait_for_a_place_too() -> None:
    fake = FakeOllama()
    fake.script(FakeReply(content="slow", first_delay=30))  # holds the only place
    proxy, client, admission = queueing(fake, max_concurrent=1)
    async with anyio.create_task_group() as group:
        group.start_soon(post, client, CHAT)
        await until(lambda: admission.in_flight == 1)

        async def image() -> None:
            await client.post("/v1/images/generations", json={"model": "x", "prompt": "a cat"})

        group.start_soon(image)
        await until(lambda: admission.queued == 1)  # held behind the generation
        assert [r.path for r in fake.requests] == ["/api/chat"]
        group.cancel_scope.cancel()
