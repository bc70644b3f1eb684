"""A fleet on real sockets: three FakeOllama servers, the proxy, the official clients."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import ollama
import openai
import pytest

from ollama_smart_proxy import Settings, SmartProxy
from ollama_smart_proxy.testing import FakeModel, FakeOllama, serve_in_thread

MESSAGES = [{"role": "user", "content": "why is the sky blue"}]

#: A FakeOllama in a process of its own, on the socket it is handed: a backend to SIGKILL.
SERVE_FAKE = """
import socket, sys, uvicorn
from ollama_smart_proxy.testing import FakeOllama
sock = socket.socket(fileno=int(sys.argv[1]))
uvicorn.run(FakeOllama(token_delay=0.02), fd=sock.fileno(), log_level="warning")
"""


@contextlib.contextmanager
def fake_process() -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    port = sock.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-c", SERVE_FAKE, str(sock.fileno())], pass_fds=[sock.fileno()]
    )
    sock.close()
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(f"{url}/api/version", timeout=1)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield url, process
    finally:
        process.kill()
        process.wait()


class Fleet:
    """Fakes on loopback, each its own server that a test may stop (a backend killed)."""

    def __init__(self, fakes: dict[str, FakeOllama]) -> None:
        self.fakes = fakes
        self.stacks: dict[str, contextlib.ExitStack] = {}
        self.urls: dict[str, str] = {}
        for name, fake in fakes.items():
            stack = contextlib.ExitStack()
            self.urls[name] = stack.enter_context(
                serve_in_thread(fake, timeout_graceful_shutdown=0.2)
            )
            self.stacks[name] = stack

    def kill(self, name: str) -> None:
        self.stacks.pop(name).close()

    def close(self) -> None:
        for stack in self.stacks.values():
            stack.close()

    def backends(self, **extra: dict[str, Any]) -> list[dict[str, Any]]:
        return [
            {"name": name, "url": url, **extra.get(name, {})} for name, url in self.urls.items()
        ]


@pytest.fixture
def fleet() -> Iterator[Fleet]:
    no_qwen = [m for m in FakeOllama().models.values() if not m.name.startswith("qwen3")]
    fleet = Fleet(
        {
            "gpu-a": FakeOllama(models=no_qwen, token_delay=0.005),
            "gpu-b": FakeOllama(models=no_qwen, token_delay=0.005),
            "gpu-c": FakeOllama(
                models=[FakeModel("qwen3", capabilities=("completion", "thinking"))],
                token_delay=0.005,
            ),
        }
    )
    yield fleet
    fleet.close()


@contextlib.contextmanager
def proxy(fleet: Fleet, **options: Any) -> Iterator[str]:
    settings = Settings(backends=fleet.backends(), poll_interval=0.2, **options)
    with serve_in_thread(SmartProxy(settings)) as url:
        yield url


def test_the_official_clients_work_over_a_fleet(fleet: Fleet) -> None:
    with proxy(fleet) as url:
        with ollama.Client(host=url) as client:
            reply = client.chat(model="llama3.2", messages=MESSAGES)
            assert reply.message.content == "why is the sky blue"
            parts = list(client.chat(model="qwen3", messages=MESSAGES, stream=True, think=False))
            assert "".join(p.message.content or "" for p in parts) == "why is the sky blue"
            assert {m.model for m in client.list().models} == {
                "llama3.2:latest",
                "qwen3:latest",
                "llava:latest",
                "all-minilm:latest",
            }
            assert len(client.embed(model="all-minilm", input=["a"]).embeddings) == 1
            with pytest.raises(ollama.ResponseError) as info:
                client.chat(model="nope", messages=MESSAGES)
            assert info.value.status_code == 404
            assert "model 'nope' not found" in info.value.error
        assert fleet.fakes["gpu-c"].calls("/api/chat")[0].json["model"] == "qwen3"
        sdk = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        raw = sdk.chat.completions.with_raw_response.create(model="llama3.2", messages=MESSAGES)
        assert raw.headers["x-osp-backend"] in ("gpu-a", "gpu-b")
        assert raw.parse().choices[0].message.content == "why is the sky blue"
        models = {m.id: m for m in sdk.models.list()}
        assert models["qwen3:latest"].model_extra == {"backends": ["gpu-c"]}
        health = httpx.get(f"{url}/health").json()
        assert [b["name"] for b in health["fleet"]["backends"]] == ["gpu-a", "gpu-b", "gpu-c"]


def test_a_backend_killed_mid_run_loses_nothing_before_the_first_byte(fleet: Fleet) -> None:
    for fake in fleet.fakes.values():
        fake.token_delay = 0.02
    with fake_process() as (doomed_url, doomed):
        backends = [{"name": "doomed", "url": doomed_url}, *fleet.backends()]
        settings = Settings(backends=backends, poll_interval=0.2)
        with serve_in_thread(SmartProxy(settings)) as url:
            outcomes = _run_and_kill(url, doomed)
            health = httpx.get(f"{url}/health").json()
    assert len(outcomes) == 32
    assert "lost before first byte" not in outcomes
    assert not [o for o in outcomes if o.startswith("status")], outcomes
    # the streams the kill cut ended with an error the client saw; nothing was replayed
    assert 1 <= sum(o.endswith("after first byte") for o in outcomes) <= 8
    states = {b["name"]: b["state"] for b in health["fleet"]["backends"]}
    assert states["doomed"] in ("down", "ejected") and states["gpu-b"] == "up"


def _run_and_kill(url: str, doomed: subprocess.Popen[bytes]) -> list[str]:
    """Eight clients, four turns each; the doomed backend is killed once it streams."""
    outcomes: list[str] = []
    lock = threading.Lock()
    streaming = threading.Event()

    def client(index: int) -> None:
        for turn in range(4):
            body = {
                "model": "llama3.2",
                "stream": True,
                "messages": [{"role": "user", "content": f"client {index} turn {turn} " * 3}],
            }
            started = False
            try:
                with httpx.stream("POST", f"{url}/api/chat", json=body, timeout=30) as r:
                    text = ""
                    for piece in r.iter_text():
                        started = True
                        if r.headers.get("x-osp-backend") == "doomed":
                            streaming.set()
                        text += piece
                if r.status_code != 200:
                    outcome = f"status {r.status_code}"
                elif '"error"' in text:
                    outcome = "error after first byte"
                else:
                    outcome = "ok" if '"done":true' in text else "cut after first byte"
            except httpx.HTTPError:
                outcome = "cut after first byte" if started else "lost before first byte"
            with lock:
                outcomes.append(outcome)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    assert streaming.wait(20), "the doomed backend never served"
    doomed.send_signal(signal.SIGKILL)
    for thread in threads:
        thread.join(timeout=60)
    return outcomes


def test_a_fast_failing_backend_is_ejected_and_draws_no_traffic(fleet: Fleet) -> None:
    broken = fleet.fakes["gpu-a"]
    broken.failure = (503, "server busy, please try again.  maximum pending requests exceeded")
    broken.loaded["llama3.2:latest"] = time.time() + 300  # the best place, were it well
    with proxy(fleet, eject_seconds=30) as url:
        with ollama.Client(host=url) as client:
            for index in range(30):
                messages = [{"role": "user", "content": f"question {index}"}]
                assert client.chat(model="llama3.2", messages=messages).message.content
        assert len(broken.calls("/api/chat")) == 1
        assert len(fleet.fakes["gpu-b"].calls("/api/chat")) == 30
        metrics = httpx.get(f"{url}/metrics").text
        assert 'osp_backend_ejections_total{backend="gpu-a"} 1.0' in metrics
        assert 'osp_backend_requests_total{backend="gpu-b",reason="failover"} 1.0' in metrics
