"""Strict FIFO against model affinity in the admission queue, when models alternate.

    python -m benchmarks.affinity

A GPU that holds one model at a time (``FakeOllama(max_loaded=1)``, each load taking
``LOAD`` seconds, as Ollama's scheduler unloads an idle model to load another), or both, and
clients that each ask one of two models, one request after another. With ``max_concurrent`` set the
proxy's queue decides the order in which Ollama sees them: first in first out, or first the
requests for the model Ollama has loaded (for at most ``queue_affinity`` seconds each). The
whole run is in-process (no sockets): only the order, the loads and the waits differ.
"""

from __future__ import annotations

import asyncio
import statistics
import time

import httpx

from ollama_smart_proxy import Settings, SmartProxy
from ollama_smart_proxy.testing import FakeOllama, StreamingASGITransport

LOAD = 0.5  # seconds to load a model (a small one, from a fast disk)
TOKEN = 0.01  # seconds a token
CLIENTS = 8  # half ask one model, half the other
REQUESTS = 6  # each, one after another
MODELS = ("llama3.2", "qwen3")


async def run(fit: int, max_concurrent: int, affinity: float) -> dict[str, float]:
    fake = FakeOllama(load_delay=LOAD, max_loaded=fit, token_delay=TOKEN)
    settings = Settings(max_concurrent=max_concurrent, queue_affinity=affinity, queue_timeout=600)
    proxy = SmartProxy(settings, transport=StreamingASGITransport(fake))
    client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=proxy), base_url="http://proxy", timeout=600
    )
    latencies: list[float] = []
    prompt = " ".join(["word"] * 20)

    async def one_client(index: int) -> None:
        model = MODELS[index % 2]
        body = {"model": model, "messages": [{"role": "user", "content": prompt}], "stream": True}
        for _ in range(REQUESTS):
            started = time.perf_counter()
            response = await client.post("/api/chat", json=body)
            assert response.status_code == 200, response.text
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(one_client(i) for i in range(CLIENTS)))
    elapsed = time.perf_counter() - started
    await client.aclose()
    await proxy.aclose()
    latencies.sort()
    return {
        "elapsed": elapsed,
        "loads": sum(fake.loads.values()),
        "p50": statistics.median(latencies),
        "p95": latencies[int(0.95 * (len(latencies) - 1))],
        "max": latencies[-1],
    }


async def main() -> None:
    print(f"{CLIENTS} clients x {REQUESTS} requests of 20 tokens, 2 models, a load takes {LOAD}s")
    print("| models that fit | max_concurrent | queue_affinity | total | loads | p50 | p95 | max |")
    print("|---|---|---|---|---|---|---|---|")
    for fit in (1, 2):
        for max_concurrent in (1, 2):
            for affinity in (0.0, 5.0):
                r = await run(fit, max_concurrent, affinity)
                print(
                    f"| {fit} | {max_concurrent} | {affinity:g} s | {r['elapsed']:.1f} s | "
                    f"{r['loads']:.0f} | {r['p50']:.2f} s | {r['p95']:.2f} s | {r['max']:.2f} s |"
                )


if __name__ == "__main__":
    asyncio.run(main())
