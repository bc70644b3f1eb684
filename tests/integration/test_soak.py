"""A bounded soak: many concurrent paced streams through the launcher to a fake Ollama.

Every stream must end with ``done`` or with the error it was meant to end with, and the
proxy's memory must come back. CI runs 100 streams; ``OSP_SOAK_STREAMS=500`` runs the full
size (the closing notes give those figures).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from typing import Any

import httpx
import pytest

from ollama_smart_proxy.testing import FakeOllama, FakeReply, serve_in_thread
from tests.integration.test_shutdown import wait_until_up
from tests.unit.test_cli import free_port

STREAMS = int(os.environ.get("OSP_SOAK_STREAMS", "100"))


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def reply(body: dict[str, Any]) -> FakeReply:
    text = body["messages"][-1]["content"]
    if text.startswith("fail"):
        return FakeReply(content=" ".join(["x"] * 20), error="model crashed", error_after=5)
    return FakeReply(content=" ".join(["tok"] * 20))


async def one(client: httpx.AsyncClient, index: int) -> str:
    openai = index % 2 == 1
    text = "fail" if index % 10 == 0 else "go"
    body = {"model": "llama3.2", "messages": [{"role": "user", "content": text}], "stream": True}
    path = "/v1/chat/completions" if openai else "/api/chat"
    last = b""
    async with client.stream("POST", path, json=body) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line:
                last = line.encode()
    if openai:
        if last == b"data: [DONE]":
            return "done"
        return "error" if "error" in json.loads(last.removeprefix(b"data: ")) else "cut"
    data = json.loads(last)
    return "done" if data.get("done") else "error" if "error" in data else "cut"


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs /proc for RSS")
def test_concurrent_paced_streams_all_end_and_memory_comes_back() -> None:
    fake = FakeOllama(reply=reply, token_delay=0.02)
    port = free_port()
    with serve_in_thread(fake, limit_concurrency=None) as fake_url:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OSP_", "OLLAMA_HOST"))}
        process = subprocess.Popen(
            [sys.executable, "-m", "ollama_smart_proxy", "--upstream", fake_url,
             "--port", str(port), "--log-level", "warning"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )  # fmt: skip
        try:
            url = f"http://127.0.0.1:{port}"
            wait_until_up(url)

            async def run() -> list[str]:
                limits = httpx.Limits(max_connections=STREAMS + 10)
                async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
                    return list(await asyncio.gather(*(one(client, i) for i in range(STREAMS))))

            asyncio.run(run())  # warm up: pools, caches
            before = rss_kib(process.pid)
            outcomes = asyncio.run(run())
            outcomes += asyncio.run(run())
            after = rss_kib(process.pid)
        finally:
            process.terminate()
            process.wait(timeout=20)
    expected = ["error" if i % 10 == 0 else "done" for i in range(STREAMS)] * 2
    assert outcomes == expected
    print(f"\nsoak: {STREAMS} streams x2, proxy RSS {before / 1024:.1f} -> {after / 1024:.1f} MiB")
    assert after - before < 20 * 1024  # KiB: no growth per request
