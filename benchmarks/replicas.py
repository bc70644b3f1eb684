"""What sharing the limits through Redis, and checking a key's quotas, cost a request.

    python -m benchmarks.replicas [--quick]

One proxy in this process over backends that answer at next to no cost (no sockets to
them), a real ``redis-server`` on loopback: non-streaming chats one after another on uvloop (as the launcher serves), with
``max_concurrent`` (the admission's lease: one round trip when a request is admitted, one
when it ends) and over a fleet of two (the backend's slots, the same two round trips),
each with and without ``redis_url``; and with an API key, without limits, with limits (in
this process), and with limits in Redis (one round trip to admit, one to settle and count the
usage, after the answer). Interleaved rounds; the medians of the latency each
request took (p50) and of the CPU the proxy's process spent per request (the Redis
client's included, the server's not).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import statistics
import time
from typing import Any

import httpx

from ollama_smart_proxy import Settings, SmartProxy
from ollama_smart_proxy.testing import HostsASGITransport, RedisServer, StreamingASGITransport

from .fleet import _canned

KEY = "sk-bench-0123456789"


async def _measure(client: httpx.AsyncClient, requests: int) -> tuple[float, float]:
    """(p50 latency, CPU per request), in milliseconds."""
    body = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}], "stream": False}
    for _ in range(30):
        await client.post("/api/chat", json=body)
    gc.collect()
    latencies = []
    cpu = time.process_time()
    for index in range(requests):
        body["messages"][0]["content"] = f"conversation {index}"
        started = time.perf_counter()
        response = await client.post("/api/chat", json=body)
        latencies.append(time.perf_counter() - started)
        assert response.status_code == 200, response.text
    spent = (time.process_time() - cpu) / requests
    return statistics.median(latencies) * 1000, spent * 1000


async def run(requests: int, rounds: int) -> dict[str, Any]:
    with RedisServer() as redis:
        backends = [
            {"name": name, "url": f"http://{name}:11434", "parallel": 64}
            for name in ("gpu-a", "gpu-b")
        ]
        hosts = {"gpu-a": _canned, "gpu-b": _canned}
        configs: dict[str, SmartProxy] = {}
        for shared in (False, True):
            url = {"redis_url": redis.url} if shared else {}
            tag = "redis" if shared else "local"
            configs[f"admission, {tag}"] = SmartProxy(
                Settings(max_concurrent=64, log_level="warning", **url),
                transport=StreamingASGITransport(_canned),
            )
            configs[f"fleet of 2, {tag}"] = SmartProxy(
                Settings(backends=backends, poll_interval=60, log_level="warning", **url),
                transport=HostsASGITransport(hosts),
            )
            limits = {"requests_per_minute": 10**9, "tokens_per_minute": 10**12}
            configs[f"key with limits, {tag}"] = SmartProxy(
                Settings(
                    api_keys=[{"key": KEY, "name": "team", **limits}], log_level="warning", **url
                ),
                transport=StreamingASGITransport(_canned),
            )
        configs["key without limits, local"] = SmartProxy(
            Settings(api_keys=[{"key": KEY, "name": "team"}], log_level="warning"),
            transport=StreamingASGITransport(_canned),
        )
        results: dict[str, dict[str, list[float]]] = {
            name: {"p50_ms": [], "cpu_ms": []} for name in configs
        }
        async with contextlib.AsyncExitStack() as stack:
            clients = {}
            for name, proxy in configs.items():
                await stack.enter_async_context(proxy)
                clients[name] = await stack.enter_async_context(
                    httpx.AsyncClient(
                        transport=httpx.ASGITransport(app=proxy),
                        base_url="http://p",
                        headers={"authorization": f"Bearer {KEY}"},
                    )
                )
            for round_ in range(rounds):
                order = list(clients.items())
                for name, client in order if round_ % 2 else reversed(order):
                    p50, cpu = await _measure(client, requests)
                    results[name]["p50_ms"].append(p50)
                    results[name]["cpu_ms"].append(cpu)
    medians = {
        name: {key: round(statistics.median(values), 4) for key, values in figures.items()}
        for name, figures in results.items()
    }
    for what in ("admission", "fleet of 2", "key with limits"):
        local, shared = medians[f"{what}, local"], medians[f"{what}, redis"]
        medians[f"{what}: Redis adds"] = {
            "p50_ms": round(shared["p50_ms"] - local["p50_ms"], 4),
            "cpu_ms": round(shared["cpu_ms"] - local["cpu_ms"], 4),
        }
    local, keyed = medians["key with limits, local"], medians["key without limits, local"]
    medians["limits checked here add"] = {
        "p50_ms": round(local["p50_ms"] - keyed["p50_ms"], 4),
        "cpu_ms": round(local["cpu_ms"] - keyed["cpu_ms"], 4),
    }
    return medians


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests (CI)")
    args = parser.parse_args()
    import uvloop  # the loop the launcher serves on (uvicorn picks it when installed)

    figures = uvloop.run(run(200 if args.quick else 1000, 2 if args.quick else 5))
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
