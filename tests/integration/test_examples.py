"""Every example runs, against a FakeOllama on a real socket."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import anyio
import httpx
import pytest
from asgi_lifespan import LifespanManager

from ollama_smart_proxy import Settings, SmartProxy
from ollama_smart_proxy.testing import FakeOllama, StreamingASGITransport
from tests.conftest import upstream
from tests.unit.test_cli import free_port

EXAMPLES = Path(__file__).parents[2] / "examples"
CHAT = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}], "stream": False}


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.anyio
@pytest.mark.parametrize("name", ["mount_in_starlette", "mount_in_fastapi"])
async def test_mount_examples(name: str, fake_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OSP_UPSTREAM", fake_url)
    module = load(name)
    async with LifespanManager(module.app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            assert (await client.get("/")).status_code == 200
            reply = await client.post("/llm/api/chat", json=CHAT)
            assert reply.json()["message"]["content"] == "hi"
            assert (await client.get("/llm/health")).json()["status"] == "ok"


def test_standalone_example(fake_url: str) -> None:
    port = free_port()
    env = {**os.environ, "OSP_UPSTREAM": fake_url, "OSP_PORT": str(port)}
    process = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "standalone.py")],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                reply = httpx.post(f"http://127.0.0.1:{port}/api/chat", json=CHAT)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert reply.json()["message"]["content"] == "hi"
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_openai_client_example(proxy_url: str) -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "openai_client.py"), proxy_url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "chat: Say hello in five words." in result.stdout
    assert "stream: Count to five." in result.stdout


def test_anthropic_client_example(proxy_url: str) -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "anthropic_client.py"), proxy_url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "message: Say hello in five words." in result.stdout
    assert "stream: Count to five." in result.stdout
    tokens = int(result.stdout.rsplit("count_tokens (an estimate):", 1)[1])
    assert tokens > 0


@pytest.mark.anyio
async def test_keys_file_example(fake_url: str) -> None:
    settings = Settings(upstream=fake_url, keys_file=str(EXAMPLES / "keys.toml"))
    proxy = SmartProxy(settings)
    async with LifespanManager(proxy) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://proxy") as client:
            assert (await client.get("/api/tags")).status_code == 401
            webui = {"Authorization": "Bearer sk-example-webui"}
            ops = {"X-API-Key": "sk-example-ops"}
            assert (await client.post("/api/chat", json=CHAT, headers=webui)).status_code == 200
            other = {**CHAT, "model": "mistral"}
            refused = await client.post("/api/chat", json=other, headers=webui)
            assert refused.status_code == 403, refused.text
            assert "open-webui" in refused.json()["error"]
            pull = {"model": "llama3.2", "stream": False}
            assert (await client.post("/api/pull", json=pull, headers=webui)).status_code == 403
            assert (await client.post("/api/pull", json=pull, headers=ops)).status_code == 200


@pytest.mark.anyio
async def test_single_agent_example(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["single_agent.py", "--demo"])
    module = load("single_agent")
    transport = httpx.ASGITransport(app=module.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
        reply = await client.post(
            "/api/chat",
            json={
                "model": "llama3.2",
                "messages": [{"role": "user", "content": "/redact mail me@example.com now"}],
                "stream": False,
            },
        )
    assert reply.json()["message"]["content"] == "mail [hidden] now"


@pytest.mark.anyio
async def test_one_gpu_config_example() -> None:
    """The one-GPU config loads, and its affinity keeps a one-model GPU from reloading."""
    settings = Settings(config=EXAMPLES / "one-gpu.toml")
    assert (settings.max_concurrent, settings.queue_affinity) == (1, 10)
    assert settings.aliases["claude-sonnet-5"] == "qwen3"
    fake = FakeOllama(load_delay=0.2, max_loaded=1)  # all 8 are queued before the 1st ends
    proxy = SmartProxy(settings.model_copy(update={"preload": []}), transport=upstream(fake))
    async with LifespanManager(proxy) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://proxy") as client:

            async def chat(model: str) -> None:
                response = await client.post("/api/chat", json={**CHAT, "model": model})
                assert response.status_code == 200, response.text

            async with anyio.create_task_group() as group:
                for model in ["llama3.2", "qwen3"] * 4:
                    group.start_soon(chat, model)
    assert sum(fake.loads.values()) == 2  # one load per model, not one per request


@pytest.mark.anyio
async def test_lan_config_example() -> None:
    """The LAN config loads; its hosts are answered, a rebinding name and a foreign page not."""
    settings = Settings(config=EXAMPLES / "lan.toml")
    fake = FakeOllama()
    proxy = SmartProxy(settings, transport=StreamingASGITransport(fake))
    transport = httpx.ASGITransport(app=proxy)
    async with proxy, httpx.AsyncClient(transport=transport, base_url="http://x") as client:
        for host, expected in (
            ("ollama.corp.example", 200),
            ("gpu1.ai.corp.example", 200),
            ("192.168.1.20:11435", 200),
            ("evil.example", 403),
        ):
            response = await client.get("/api/tags", headers={"host": host})
            assert response.status_code == expected, host
        page = await client.get(
            "/api/tags", headers={"host": "ollama.corp.example", "origin": "https://x.example"}
        )
        assert page.status_code == 403
        pull = await client.post(
            "/api/pull", json={"model": "llama3.2"}, headers={"host": "localhost"}
        )
        assert pull.status_code == 403


@pytest.mark.anyio
async def test_fleet_config_example() -> None:
    """The fleet config loads; over a fake per backend, a chat is placed, a conversation
    stays on its server, and a server that refuses is failed over."""
    from ollama_smart_proxy.testing import HostsASGITransport

    settings = Settings(config=EXAMPLES / "fleet.toml")
    assert [b.name for b in settings.backends] == ["gpu-a", "gpu-b", "small"]
    assert settings.backends[1].weight == 2 and settings.backends[2].max_concurrent == 2
    fakes = {host: FakeOllama() for host in ("gpu-a.internal", "gpu-b.internal", "small.internal")}
    transport = HostsASGITransport(fakes)
    proxy = SmartProxy(settings, transport=transport)
    async with LifespanManager(proxy) as manager:
        asgi = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=asgi, base_url="http://proxy") as client:
            messages = [{"role": "user", "content": "hello"}]
            homes = set()
            for turn in range(3):
                body = {**CHAT, "model": "gpt-4o-mini", "messages": messages}
                response = await client.post("/api/chat", json=body)
                assert response.status_code == 200, response.text
                homes.add(response.headers["x-osp-backend"])
                messages = [
                    *messages,
                    {"role": "assistant", "content": "hi"},
                    {"role": "user", "content": f"turn {turn}"},
                ]
            assert len(homes) == 1
            transport.down(f"{homes.pop()}.internal")
            response = await client.post("/api/chat", json={**CHAT, "messages": messages})
            assert response.status_code == 200
            health = (await client.get("/health")).json()
            assert {b["name"] for b in health["fleet"]["backends"]} == {"gpu-a", "gpu-b", "small"}
