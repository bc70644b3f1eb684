"""Several proxy replicas sharing one limit through a real Redis server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import pytest

from ollama_smart_proxy import Settings, SmartProxy
from ollama_smart_proxy.testing import (
    FakeOllama,
    FakeReply,
    RedisServer,
    StreamingASGITransport,
    free_port,
    serve_in_thread,
)

from ..helpers import until

pytestmark = pytest.mark.anyio


def chat(content: str) -> dict[str, Any]:
    return {
        "model": "llama3.2",
        "messages": [{"role": "user", "content": content}],
        "stream": False,
    }


@asynccontextmanager
async def replicas(
    fake: FakeOllama, count: int, **options: Any
) -> AsyncIterator[list[tuple[SmartProxy, httpx.AsyncClient]]]:
    """``count`` proxies in this process, each with its own connection to Redis: replicas."""
    made = []
    for _ in range(count):
        proxy = SmartProxy(Settings(**options), transport=StreamingASGITransport(fake))
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=proxy), base_url="http://p", timeout=30
        )
        await proxy.startup()
        made.append((proxy, client))
    try:
        yield made
    finally:
        for proxy, client in made:
            await client.aclose()
            await proxy.aclose()


async def test_one_limit_holds_across_replicas(redis_server: RedisServer) -> None:
    fake = FakeOllama(token_delay=0.02)
    async with replicas(fake, 3, redis_url=redis_server.url, max_concurrent=2) as group:
        statuses: list[int] = []

        async def one(client: httpx.AsyncClient, index: int) -> None:
            response = await client.post("/api/chat", json=chat(f"question {index} " * 3))
            statuses.append(response.status_code)

        async with anyio.create_task_group() as tasks:
            for index in range(18):
                tasks.start_soon(one, group[index % 3][1], index)
        assert statuses == [200] * 18
        assert fake.max_active == 2  # reached, never passed: one limit for the three
        health = (await group[0][1].get("/health")).json()
        assert health["shared"]["available"] is True and health["shared"]["replicas"] == 3


async def test_the_shared_queue_is_first_come_first_served_across_replicas(
    redis_server: RedisServer,
) -> None:
    fake = FakeOllama()
    async with replicas(fake, 2, redis_url=redis_server.url, max_concurrent=1) as group:
        (_, a), (_, b) = group
        fake.script(FakeReply(content="first", first_delay=0.4))

        async def post(client: httpx.AsyncClient, content: str) -> None:
            response = await client.post("/api/chat", json=chat(content))
            assert response.status_code == 200

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(post, a, "a1")
            await until(lambda: fake.active == 1)
            tasks.start_soon(post, b, "b1")  # waits in the shared queue first
            await anyio.sleep(0.1)
            tasks.start_soon(post, a, "a2")  # after it: its own replica's place is no help
            await anyio.sleep(0.05)
            tasks.start_soon(post, a, "a3")
        order = [r.json["messages"][0]["content"] for r in fake.calls("/api/chat")]
        assert order == ["a1", "b1", "a2", "a3"]


@pytest.mark.parametrize("mode", ["local", "open", "closed"])
async def test_redis_gone_follows_redis_failure_and_coming_back_is_picked_up(
    redis_server: RedisServer, mode: str
) -> None:
    fake = FakeOllama(token_delay=0.01)
    options = {"redis_url": redis_server.url, "max_concurrent": 2, "redis_failure": mode}
    async with replicas(fake, 2, **options) as group:
        for _, client in group:  # each replica has seen Redis, and both replicas
            assert (await client.post("/api/chat", json=chat("before"))).status_code == 200
        redis_server.stop()
        fake.max_active = 0
        started = time.monotonic()
        results: list[httpx.Response] = []

        async def one(client: httpx.AsyncClient, index: int) -> None:
            results.append(await client.post("/api/chat", json=chat(f"while away {index} " * 3)))

        async with anyio.create_task_group() as tasks:
            for index in range(8):
                tasks.start_soon(one, group[index % 2][1], index)
        assert time.monotonic() - started < 10  # never a hang
        statuses = [r.status_code for r in results]
        if mode == "closed":
            assert statuses == [503] * 8
            assert "OSP_REDIS_FAILURE" in results[0].json()["error"]
            assert results[0].headers["retry-after"] == "5"
        else:
            assert statuses == [200] * 8
            # local: each replica its share (2 / 2 replicas); open: each the whole limit
            assert fake.max_active <= (2 if mode == "local" else 4)
        health = (await group[0][1].get("/health")).json()["shared"]
        assert health["available"] is False and health["outages"] == 1
        redis_server.start()
        back = time.monotonic()
        for proxy, _ in group:  # found again by its probe, within one PROBE
            await until(lambda proxy=proxy: proxy.shared is not None and proxy.shared.available)
        assert time.monotonic() - back < 2
        for _, client in group:
            assert (await client.post("/api/chat", json=chat("after"))).status_code == 200
        health = (await group[0][1].get("/health")).json()["shared"]
        assert health["available"] is True and health["outages"] == 1


def _launch(port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "ollama_smart_proxy", "--port", str(port)],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _wait_up(url: str) -> None:
    deadline = time.monotonic() + 20
    while True:
        try:
            if httpx.get(f"{url}/health/live", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not start")
        time.sleep(0.05)


def test_a_replica_killed_gives_its_places_back_within_the_lease(
    redis_server: RedisServer,
) -> None:
    """Three launcher processes; the one holding both places is SIGKILLed mid-stream."""
    fake = FakeOllama()
    with serve_in_thread(fake) as fake_url:
        env = {
            "OSP_UPSTREAM": fake_url,
            "OSP_REDIS_URL": redis_server.url,
            "OSP_MAX_CONCURRENT": "2",
            "OSP_LEASE_TTL": "1.5",
            "OSP_QUEUE_TIMEOUT": "20",
        }
        ports = [free_port() for _ in range(3)]
        processes = [_launch(port, env) for port in ports]
        urls = [f"http://127.0.0.1:{port}" for port in ports]
        try:
            for url in urls:
                _wait_up(url)
            # The limit holds across the three processes: reached, never passed.
            fake.token_delay = 0.02

            def ask(index: int) -> int:
                body = {**chat(f"process question {index} " * 3), "stream": True}
                return httpx.post(f"{urls[index % 3]}/api/chat", json=body, timeout=30).status_code

            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(12) as pool:
                assert list(pool.map(ask, range(24))) == [200] * 24
            assert fake.max_active == 2
            fake.token_delay = 0.0
            fake.max_active = 0
            fake.script(*[FakeReply(content="long " * 100, delay=0.1)] * 2)
            streams = [
                httpx.stream("POST", f"{urls[0]}/api/chat", json={**chat(f"s{i}"), "stream": True})
                for i in range(2)
            ]
            for stream in streams:
                stream.__enter__()
            deadline = time.monotonic() + 10
            while fake.active < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert fake.active == 2
            processes[0].send_signal(signal.SIGKILL)
            processes[0].wait()
            killed = time.monotonic()
            response = httpx.post(f"{urls[1]}/api/chat", json=chat("after the kill"), timeout=30)
            took = time.monotonic() - killed
            assert response.status_code == 200, response.text
            assert took < 1.5 * 3  # within the lease and a renewal period
            assert fake.max_active <= 3  # the killed streams' upstream ends as they are cut
            print(f"places back after {took:.2f}s (lease 1.5 s)")
        finally:
            for process in processes:
                process.kill()
                process.wait()


async def test_a_fleets_slots_hold_across_replicas(redis_server: RedisServer) -> None:
    from ollama_smart_proxy.testing import HostsASGITransport

    fakes = {"gpu-a": FakeOllama(token_delay=0.02), "gpu-b": FakeOllama(token_delay=0.02)}
    transport = HostsASGITransport(fakes)
    backends = [{"name": name, "url": f"http://{name}:11434"} for name in fakes]
    made = []
    for _ in range(3):
        proxy = SmartProxy(
            Settings(backends=backends, redis_url=redis_server.url, poll_interval=60),
            transport=transport,
        )
        await proxy.startup()
        made.append(
            (
                proxy,
                httpx.AsyncClient(transport=httpx.ASGITransport(app=proxy), base_url="http://p"),
            )
        )
    try:
        statuses: list[int] = []

        async def one(client: httpx.AsyncClient, index: int) -> None:
            response = await client.post(
                "/api/chat", json=chat(f"conversation {index} " * 3), timeout=30
            )
            statuses.append(response.status_code)

        async with anyio.create_task_group() as tasks:
            for index in range(12):
                tasks.start_soon(one, made[index % 3][1], index)
        assert statuses == [200] * 12
        # one slot each (parallel 1), whichever replica sent the request
        assert fakes["gpu-a"].max_active == 1 and fakes["gpu-b"].max_active == 1
    finally:
        for proxy, client in made:
            await client.aclose()
            await proxy.aclose()


async def test_a_pull_is_single_flight_across_replicas(redis_server: RedisServer) -> None:
    fake = FakeOllama(models=[], pull_delay=0.5)
    async with replicas(fake, 3, redis_url=redis_server.url, auto_pull="on") as group:
        statuses: list[int] = []

        async def one(client: httpx.AsyncClient) -> None:
            response = await client.post("/api/chat", json=chat("pull it first"))
            statuses.append(response.status_code)

        async with anyio.create_task_group() as tasks:
            for index in range(6):
                tasks.start_soon(one, group[index % 3][1])
        assert statuses == [200] * 6
        assert fake.pulls["llama3.2:latest"] == 1  # one pull, whichever replica each request met


async def test_a_failed_pull_is_seen_by_every_replica(redis_server: RedisServer) -> None:
    fake = FakeOllama(models=[], pull_delay=0.3, pull_errors={"llama3*": "registry unreachable"})
    async with replicas(fake, 2, redis_url=redis_server.url, auto_pull="on") as group:
        results: list[httpx.Response] = []

        async def one(client: httpx.AsyncClient) -> None:
            results.append(await client.post("/api/chat", json=chat("pull it first")))

        async with anyio.create_task_group() as tasks:
            for index in range(4):
                tasks.start_soon(one, group[index % 2][1])
        assert {r.status_code for r in results} == {502}
        assert all("registry unreachable" in r.json()["error"] for r in results)
        assert fake.pulls["llama3.2:latest"] == 1


@asynccontextmanager
async def fleet_replicas(
    fakes: dict[str, FakeOllama], count: int, **options: Any
) -> AsyncIterator[tuple[list[tuple[SmartProxy, httpx.AsyncClient]], Any]]:
    from ollama_smart_proxy.testing import HostsASGITransport

    transport = HostsASGITransport(fakes)
    backends = [{"name": name, "url": f"http://{name}:11434"} for name in fakes]
    made = []
    for _ in range(count):
        proxy = SmartProxy(Settings(backends=backends, **options), transport=transport)
        await proxy.startup()
        made.append(
            (
                proxy,
                httpx.AsyncClient(transport=httpx.ASGITransport(app=proxy), base_url="http://p"),
            )
        )
    try:
        yield made, transport
    finally:
        for proxy, client in made:
            await client.aclose()
            await proxy.aclose()


async def test_one_replica_polls_the_backends_and_the_others_read(
    redis_server: RedisServer,
) -> None:
    fakes = {"gpu-a": FakeOllama(), "gpu-b": FakeOllama()}
    async with fleet_replicas(fakes, 3, redis_url=redis_server.url, poll_interval=0.1) as (
        group,
        _,
    ):
        before = len(fakes["gpu-a"].calls("/api/tags"))
        await anyio.sleep(1.2)  # about ten rounds
        polls = len(fakes["gpu-a"].calls("/api/tags")) - before
        pollers = [(await c.get("/health")).json()["fleet"]["poller"] for _, c in group]
        assert pollers.count(True) == 1
        assert 5 <= polls <= 16  # one replica's rounds, not three's
        for _, client in group:  # every replica knows what the backends have
            health = (await client.get("/health")).json()["fleet"]["backends"]
            assert all("llama3.2:latest" in backend["installed"] for backend in health)


async def test_an_ejection_by_one_replica_holds_for_all(redis_server: RedisServer) -> None:
    fakes = {"gpu-a": FakeOllama(), "gpu-b": FakeOllama()}
    for fake in fakes.values():
        fake.loaded["llama3.2:latest"] = time.time() + 300
    fakes["gpu-a"].failure = (
        503,
        "server busy, please try again.  maximum pending requests exceeded",
    )
    options = {"redis_url": redis_server.url, "poll_interval": 0.1, "eject_seconds": 30}
    async with fleet_replicas(fakes, 3, **options) as (group, _):
        await anyio.sleep(0.3)
        waited = False
        for index in range(12):  # spread over the replicas; one of them meets gpu-a first
            client = group[index % 3][1]
            response = await client.post("/api/chat", json=chat(f"question {index}"))
            assert response.status_code == 200
            if fakes["gpu-a"].calls("/api/chat") and not waited:
                await anyio.sleep(0.4)  # the ejection reaches the others within a round
                waited = True
        assert len(fakes["gpu-a"].calls("/api/chat")) == 1


async def test_the_shared_state_in_metrics(redis_server: RedisServer) -> None:
    async with replicas(FakeOllama(), 2, redis_url=redis_server.url, max_concurrent=2) as group:
        client = group[0][1]
        assert (await client.post("/api/chat", json=chat("hi"))).status_code == 200
        metrics = (await client.get("/metrics")).text
        assert "osp_shared_available 1.0" in metrics and "osp_shared_replicas 2.0" in metrics
        redis_server.stop()
        assert (await client.post("/api/chat", json=chat("hi"))).status_code == 200
        metrics = (await client.get("/metrics")).text
        assert "osp_shared_available 0.0" in metrics and "osp_shared_outages_total 1.0" in metrics


def test_workers_share_one_limit_through_redis(redis_server: RedisServer) -> None:
    """``--workers 3`` with ``redis_url``: the three workers hold one ``max_concurrent``."""
    from concurrent.futures import ThreadPoolExecutor

    fake = FakeOllama(token_delay=0.02)
    with serve_in_thread(fake) as fake_url:
        port = free_port()
        env = {
            **os.environ,
            "OSP_UPSTREAM": fake_url,
            "OSP_REDIS_URL": redis_server.url,
            "OSP_MAX_CONCURRENT": "2",
        }
        process = subprocess.Popen(
            [sys.executable, "-m", "ollama_smart_proxy", "--port", str(port), "--workers", "3"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_up(url)

            def ask(index: int) -> int:
                body = {**chat(f"worker question {index} " * 3), "stream": True}
                return httpx.post(f"{url}/api/chat", json=body, timeout=30).status_code

            with ThreadPoolExecutor(12) as pool:
                assert list(pool.map(ask, range(24))) == [200] * 24
            assert fake.max_active == 2
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                out, _ = process.communicate(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                out, _ = process.communicate()
        banner = out.decode()
        assert "limits shared through Redis" in banner and "per worker" not in banner
