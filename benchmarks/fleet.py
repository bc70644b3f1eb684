"""The fleet's router against the strategies users have today, on one simulated workload.

    python -m benchmarks.fleet [--quick] [--out benchmarks/results/fleet.json] [--plot PNG]

Six ``FakeOllama`` servers on loopback, each a GPU as the fake simulates one: two slots per
model (``OLLAMA_NUM_PARALLEL=2``), a prompt cache per slot (a turn reaches its first token
sooner by the part of its prompt that slot processed last), room for two models (a third
means unloading one), a load of ``LOAD`` seconds, ``TOKEN`` seconds a token. Four models, two
on every server, two on half of them each. The workload: multi-turn conversations, each with
its own system prompt, over those models, with a pause between turns.

Four routers, one at a time, over fresh servers and the same workload:

- ``smart-proxy``: this proxy's fleet (placement, slots and queue, affinity, ejection);
- ``random``: a random server among those that list the model (Open WebUI's
  ``OLLAMA_BASE_URLS``);
- ``least-conn``: the server that lists the model with the fewest requests in flight
  (Olla's default);
- ``round-robin``: the next server that lists the model.

The three baselines are written here as their projects describe them (they forward at once and
know nothing of loads or caches) and run in the same process, on the same sockets, so only the
decision differs. Then the faults: one server fails every generation fast with 503 from the
start, another crashes mid-run; counted: requests lost before their first byte, streams cut
after it, requests sent to the failing server.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import itertools
import json
import random
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from ollama_smart_proxy import Settings, SmartProxy
from ollama_smart_proxy.testing import FakeModel, FakeOllama, serve_in_thread

LOAD = 1.5  # seconds a model takes to load
TOKEN = 0.01  # seconds a generated token
PREFILL = 0.003  # seconds a prompt token the slot's cache does not hold
SERVERS = 6
SLOTS = 2
MODELS = {  # model -> the servers that have it
    "llama3.2": range(SERVERS),
    "qwen3": range(SERVERS),
    "mistral": range(SERVERS // 2),
    "phi3": range(SERVERS // 2, SERVERS),
}
SHARE = {"llama3.2": 0.4, "qwen3": 0.3, "mistral": 0.15, "phi3": 0.15}
SYSTEM_WORDS = 150
USER_WORDS = 12


@dataclass
class Workload:
    conversations: int
    turns: int
    spread: float  # seconds over which conversations start
    pause: tuple[float, float]  # seconds between a conversation's turns

    def plan(self, seed: int = 7) -> list[tuple[float, str, int]]:
        """(start time, model, conversation number) for every conversation."""
        rng = random.Random(seed)
        models = list(SHARE)
        weights = [SHARE[m] for m in models]
        return [
            (rng.uniform(0, self.spread), rng.choices(models, weights)[0], index)
            for index in range(self.conversations)
        ]


FULL = Workload(conversations=32, turns=6, spread=12.0, pause=(0.5, 1.5))
QUICK = Workload(conversations=16, turns=3, spread=3.0, pause=(0.1, 0.3))


def make_fakes() -> list[FakeOllama]:
    fakes = []
    for index in range(SERVERS):
        models = [
            FakeModel(name, capabilities=("completion",))
            for name, where in MODELS.items()
            if index in where
        ]
        fakes.append(
            FakeOllama(
                models=models,
                token_delay=TOKEN,
                load_delay=LOAD,
                max_loaded=2,
                parallel=SLOTS,
                prefill_delay=PREFILL,
            )
        )
    return fakes


# -- the baselines ---------------------------------------------------------------------------


class Baseline:
    """A router as the peers write one: it knows which servers list which model (their
    ``/api/tags``), picks by ``strategy`` and forwards at once, with no queue, no health
    check and no failover."""

    def __init__(self, urls: list[str], strategy: str) -> None:
        self.urls = urls
        self.strategy = strategy
        self.has: dict[str, list[str]] = {}
        self.in_flight = dict.fromkeys(urls, 0)
        self.turn = itertools.count()
        self.client: httpx.AsyncClient | None = None
        self.rng = random.Random(11)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if self.client is None:
            self.client = httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=1000))
            for url in self.urls:
                tags = (await self.client.get(f"{url}/api/tags")).json()["models"]
                for entry in tags:
                    self.has.setdefault(entry["name"].split(":")[0], []).append(url)
        model = json.loads(body)["model"]
        candidates = self.has.get(model, self.urls)
        if self.strategy == "random":
            url = self.rng.choice(candidates)
        elif self.strategy == "least-conn":
            url = min(candidates, key=lambda u: (self.in_flight[u], self.rng.random()))
        else:
            url = candidates[next(self.turn) % len(candidates)]
        self.in_flight[url] += 1
        try:
            request = self.client.build_request("POST", url + scope["path"], content=body)
            try:
                response = await self.client.send(request, stream=True)
            except httpx.HTTPError:
                await send({"type": "http.response.start", "status": 502, "headers": []})
                await send({"type": "http.response.body", "body": b'{"error":"bad gateway"}'})
                return
            name = f"gpu-{self.urls.index(url)}".encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status_code,
                    "headers": [(b"x-osp-backend", name)],
                }
            )
            try:
                async for piece in response.aiter_raw():
                    await send({"type": "http.response.body", "body": piece, "more_body": True})
            except httpx.HTTPError:
                pass  # cut: the client sees a stream that ends without its final chunk
            finally:
                await response.aclose()
            await send({"type": "http.response.body", "body": b""})
        finally:
            self.in_flight[url] -= 1


# -- one run ---------------------------------------------------------------------------------


@dataclass
class Result:
    router: str
    faults: bool
    turns: int = 0
    ok: int = 0
    lost_before_first_byte: int = 0
    cut_after_first_byte: int = 0
    ttft: list[float] = field(default_factory=list)
    elapsed: float = 0.0
    cold_loads: int = 0
    follow_ups: int = 0
    follow_ups_home: int = 0
    prompts_later: int = 0
    cache_hits: int = 0
    to_failing: int = 0

    def row(self) -> dict[str, Any]:
        ttft = sorted(self.ttft) or [0.0]
        return {
            "router": self.router,
            "faults": self.faults,
            "turns": self.turns,
            "ok": self.ok,
            "cold_loads": self.cold_loads,
            "ttft_p50_s": round(statistics.median(ttft), 3),
            "ttft_p95_s": round(ttft[int(0.95 * (len(ttft) - 1))], 3),
            "throughput_turns_s": round(self.ok / self.elapsed, 2) if self.elapsed else 0.0,
            "follow_ups_home": round(self.follow_ups_home / self.follow_ups, 3)
            if self.follow_ups
            else 0.0,
            "cache_hits": round(self.cache_hits / self.prompts_later, 3)
            if self.prompts_later
            else 0.0,
            "lost_before_first_byte": self.lost_before_first_byte,
            "cut_after_first_byte": self.cut_after_first_byte,
            "sent_to_failing": self.to_failing,
        }


def words(prefix: str, count: int) -> str:
    return " ".join(f"{prefix}{i}" for i in range(count))


async def converse(
    client: httpx.AsyncClient,
    result: Result,
    workload: Workload,
    start: float,
    model: str,
    index: int,
    began: float,
) -> None:
    rng = random.Random(index)
    await asyncio.sleep(max(0.0, began + start - time.perf_counter()))
    messages = [{"role": "system", "content": words(f"c{index}s", SYSTEM_WORDS)}]
    home = None
    for turn in range(workload.turns):
        messages.append({"role": "user", "content": words(f"c{index}t{turn}w", USER_WORDS)})
        body = {"model": model, "messages": messages, "stream": True}
        result.turns += 1
        sent = time.perf_counter()
        first = 0.0
        text = b""
        try:
            async with client.stream("POST", "/api/chat", json=body) as response:
                async for piece in response.aiter_bytes():
                    if not first and b'"content":"c' in piece:
                        first = time.perf_counter()
                    text += piece
        except httpx.HTTPError:
            pass
        if response.status_code == 200 and b'"done":true' in text and b'"error"' not in text:
            result.ok += 1
            result.ttft.append(first - sent)
            backend = response.headers.get("x-osp-backend")
            if home is not None:
                result.follow_ups += 1
                result.follow_ups_home += backend == home
            home = backend
        elif first:
            result.cut_after_first_byte += 1
        else:
            result.lost_before_first_byte += 1
        answer = words(f"c{index}t{turn}w", USER_WORDS)  # the fake echoes the question
        messages.append({"role": "assistant", "content": answer})
        await asyncio.sleep(rng.uniform(*workload.pause))


def _follow_ups(fake: FakeOllama) -> tuple[int, int]:
    """(follow-up turns this server answered, those it found mostly in a slot's cache)."""
    first_turn = SYSTEM_WORDS + USER_WORDS + 2  # tokens of a first turn's prompt
    later = [(prompt, cached) for prompt, cached in fake.prefills if prompt > first_turn]
    return len(later), sum(cached >= prompt / 2 for prompt, cached in later)


@contextlib.contextmanager
def servers(fakes: list[FakeOllama]) -> Iterator[tuple[list[str], list[contextlib.ExitStack]]]:
    stacks = []
    urls = []
    for fake in fakes:
        stack = contextlib.ExitStack()
        urls.append(
            stack.enter_context(
                serve_in_thread(fake, timeout_graceful_shutdown=1, log_level="critical")
            )
        )
        stacks.append(stack)
    try:
        yield urls, stacks
    finally:
        for stack in stacks:
            stack.close()


async def run(router: str, workload: Workload, faults: bool) -> Result:
    fakes = make_fakes()
    result = Result(router, faults)
    failing, crashing = SERVERS - 2, SERVERS - 1
    if faults:
        fakes[failing].failure = (
            503,
            "server busy, please try again.  maximum pending requests exceeded",
        )
    with servers(fakes) as (urls, stacks):
        if router == "smart-proxy":
            settings = Settings(
                backends=[
                    {"name": f"gpu-{i}", "url": url, "parallel": SLOTS}
                    for i, url in enumerate(urls)
                ],
                queue_timeout=300,
                max_queue=1000,
                poll_interval=1.0,
                eject_seconds=5.0,
                log_level="warning",
            )
            app: Any = SmartProxy(settings)
        else:
            app = Baseline(urls, router)
        with serve_in_thread(app, log_level="critical") as proxy_url:
            async with httpx.AsyncClient(base_url=proxy_url, timeout=300) as client:
                began = time.perf_counter()
                tasks = [
                    asyncio.ensure_future(converse(client, result, workload, s, m, i, began))
                    for s, m, i in workload.plan()
                ]
                if faults:
                    await asyncio.sleep(workload.spread / 2)
                    fakes[crashing].crash()
                    stacks[crashing].close()
                await asyncio.gather(*tasks)
                result.elapsed = time.perf_counter() - began
    for fake in fakes:
        result.cold_loads += sum(fake.loads.values())
        count, cached = _follow_ups(fake)
        result.prompts_later += count
        result.cache_hits += cached
    if faults:
        result.to_failing = len(fakes[failing].calls("/api/chat"))
    return result


ROUTERS = ("smart-proxy", "random", "least-conn", "round-robin")
COLUMNS = (
    ("router", "router"),
    ("cold_loads", "cold loads"),
    ("ttft_p50_s", "TTFT p50 s"),
    ("ttft_p95_s", "TTFT p95 s"),
    ("throughput_turns_s", "turns/s"),
    ("follow_ups_home", "follow-ups on their server"),
    ("cache_hits", "prompt cache hits"),
    ("lost_before_first_byte", "lost, no token"),
    ("cut_after_first_byte", "cut mid-answer"),
    ("sent_to_failing", "to the 503 server"),
)


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(title for _, title in COLUMNS) + " |"]
    lines.append("|" + "---|" * len(COLUMNS))
    for row in rows:
        cells = []
        for key, _ in COLUMNS:
            value = row[key]
            if key in ("follow_ups_home", "cache_hits"):
                value = f"{value * 100:.0f}%"
            if key == "router" and row["faults"]:
                value = f"{value} (faults)"
            cells.append(str(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    calm = [row for row in rows if not row["faults"]]
    names = [row["router"] for row in calm]
    figure, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    for axis, key, title in zip(
        axes,
        ("ttft_p95_s", "cold_loads", "follow_ups_home"),
        ("TTFT p95 (s)", "cold loads", "follow-up turns on their server"),
        strict=True,
    ):
        values = [row[key] for row in calm]
        axis.bar(names, values, color=["#2a7"] + ["#999"] * (len(names) - 1))
        axis.set_title(title)
        axis.tick_params(axis="x", rotation=20)
    figure.suptitle("6 simulated GPUs, multi-turn conversations over 4 models (one run)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


async def main_async(args: argparse.Namespace) -> list[dict[str, Any]]:
    workload = QUICK if args.quick else FULL
    rows = []
    for faults in (False, True):
        for router in ROUTERS:
            result = await run(router, workload, faults)
            rows.append(result.row())
            print(f"  {router}{' (faults)' if faults else ''}: {rows[-1]}", file=sys.stderr)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smaller workload (CI)")
    parser.add_argument("--out", type=Path, help="write the rows as JSON here")
    parser.add_argument("--plot", type=Path, help="draw the comparison as a PNG here")
    parser.add_argument(
        "--cost", action="store_true", help="only what the fleet costs a request (CPU, in-process)"
    )
    args = parser.parse_args()
    if args.cost:
        figures = asyncio.run(cost(200 if args.quick else 1000, 2 if args.quick else 5))
        print(json.dumps(figures, indent=2))
        return
    rows = asyncio.run(main_async(args))
    print(table(rows))
    if args.out:
        args.out.write_text(
            json.dumps({"workload": "quick" if args.quick else "full", "rows": rows}, indent=2)
            + "\n"
        )
    if args.plot:
        plot(rows, args.plot)


# -- what the fleet costs per request ------------------------------------------------------


async def _cpu_per_request(client: httpx.AsyncClient, requests: int) -> float:
    body = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}], "stream": False}
    for _ in range(50):  # warm up
        await client.post("/api/chat", json=body)
    gc.collect()
    started = time.process_time()
    for index in range(requests):
        body["messages"][0]["content"] = f"conversation {index}"  # a new key each time
        response = await client.post("/api/chat", json=body)
        assert response.status_code == 200, response.text
    return (time.process_time() - started) / requests


_CANNED = {
    "/api/chat": json.dumps(
        {
            "model": "llama3.2:latest",
            "created_at": "2026-11-27T06:40:39.704198521Z",
            "message": {"role": "assistant", "content": "hello"},
            "done": True,
            "done_reason": "stop",
            "total_duration": 1000,
            "load_duration": 10,
            "prompt_eval_count": 8,
            "eval_count": 1,
        }
    ).encode(),
    "/api/tags": b'{"models":[{"name":"llama3.2:latest","model":"llama3.2:latest"}]}',
    "/api/ps": b'{"models":[{"name":"llama3.2:latest","model":"llama3.2:latest",'
    b'"expires_at":"2318-01-01T00:00:00Z"}]}',
    "/api/version": b'{"version":"0.12.3"}',
}


async def _canned(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """An Ollama that costs next to nothing: a fixed answer per route (for the proxy's cost)."""
    while (await receive()).get("more_body"):
        pass
    body = _CANNED[scope["path"]]
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def cost(requests: int, rounds: int = 5) -> dict[str, float]:
    """CPU per non-streaming chat, in one process (no sockets), over backends that answer
    at next to no cost: the proxy with one upstream, and over fleets of 1 and 8 backends;
    each the median of ``rounds`` interleaved rounds (the ratio too: the median of each
    round's). And one routing decision over 8 backends."""
    from ollama_smart_proxy.fleet import Backend, choose
    from ollama_smart_proxy.testing import HostsASGITransport, StreamingASGITransport

    def client_of(app: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://p")

    def fleet_of(count: int) -> SmartProxy:
        hosts = {f"gpu-{i}": _canned for i in range(count)}
        backends = [{"name": n, "url": f"http://{n}:11434", "parallel": 4} for n in hosts]
        return SmartProxy(
            Settings(backends=backends, poll_interval=60, log_level="warning"),
            transport=HostsASGITransport(hosts),
        )

    proxies = {
        "upstream": SmartProxy(
            Settings(log_level="warning"), transport=StreamingASGITransport(_canned)
        ),
        "fleet_1": fleet_of(1),
        "fleet_8": fleet_of(8),
    }
    spent: dict[str, list[float]] = {name: [] for name in proxies}
    ratios = []
    async with contextlib.AsyncExitStack() as stack:
        clients = {}
        for name, proxy in proxies.items():
            await stack.enter_async_context(proxy)
            clients[name] = await stack.enter_async_context(client_of(proxy))
        for round_ in range(rounds):
            order = list(clients.items())
            for name, client in order if round_ % 2 else reversed(order):
                spent[name].append(await _cpu_per_request(client, requests) * 1000)
            ratios.append(spent["fleet_8"][-1] / spent["fleet_1"][-1])
    results = {f"{name}_ms": statistics.median(values) for name, values in spent.items()}
    results["fleet_8_over_fleet_1"] = statistics.median(ratios)
    results["fleet_1_over_upstream"] = results["fleet_1_ms"] / results["upstream_ms"]

    async def _app(scope: Any, receive: Any, send: Any) -> None:  # pragma: no cover
        raise AssertionError

    fleet = [Backend(name=f"gpu-{i}", app=_app, parallel=2) for i in range(8)]
    for index, backend in enumerate(fleet):
        backend.installed = {"llama3.2:latest": {}}
        if index % 2:
            backend.loaded["llama3.2:latest"] = time.time() + 300
    now, wall, rounds = time.monotonic(), time.time(), 20_000
    started = time.perf_counter()
    for index in range(rounds):
        choose("llama3.2:latest", fleet, index.to_bytes(8, "big"), now, wall)
    results["choose_8_us"] = (time.perf_counter() - started) / rounds * 1e6
    return {key: round(value, 4) for key, value in results.items()}


if __name__ == "__main__":
    main()
