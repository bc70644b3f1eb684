from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx
import pytest

from ollama_smart_proxy.cli import build_parser, settings_from_args


def test_flags_win_over_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OSP_PORT", "1234")
    monkeypatch.setenv("OSP_UPSTREAM", "http://env:1")
    args = build_parser().parse_args(["--port", "4321", "--plugins-dir", "a", "--plugins-dir", "b"])
    settings = settings_from_args(args)
    assert settings.port == 4321
    assert settings.upstream == "http://env:1"
    assert [str(p) for p in settings.plugins_dirs] == ["a", "b"]


@pytest.mark.slow
def test_invalid_settings_exit_2() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ollama_smart_proxy", "--upstream", "ftp://nope"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "invalid settings" in result.stderr


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_demo_serves_without_ollama(workers: int) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OSP_")}
    command = [sys.executable, "-m", "ollama_smart_proxy", "--demo", "--port", str(port)]
    process = subprocess.Popen(
        [*command, "--workers", str(workers)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(url + "/health/live").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the demo did not start"
            time.sleep(0.1)
        assert httpx.get(url + "/health").json()["status"] == "ok"
        reply = httpx.post(
            url + "/api/chat",
            json={
                "model": "llama3.2",
                "messages": [{"role": "user", "content": "hi demo"}],
                "stream": False,
            },
        )
        assert reply.json()["message"]["content"] == "hi demo"
        aliased = httpx.post(
            url + "/v1/chat/completions",
            json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert aliased.json()["model"] == "gpt-4o-mini"
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=10)
    assert f"listening on http://127.0.0.1:{port}" in output
    assert "upstream: in-process FakeOllama (--demo)" in output
    assert "agents:   help, clear, set, load, show" in output
    assert "demo models: llama3.2:latest" in output
    assert "aliases:     gpt-4o-mini -> llama3.2" in output
    assert "try model 'mistral'" in output
    if workers > 1:
        assert f"workers:  {workers}" in output


def run_launcher(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OSP_", "OLLAMA_HOST"))}
    return subprocess.run(
        [sys.executable, "-m", "ollama_smart_proxy", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**clean, **(env or {})},
    )


@pytest.mark.slow
def test_not_a_url_is_refused() -> None:
    result = run_launcher("--upstream", "not a url")
    assert result.returncode == 2
    assert "upstream is not a URL or a host: 'not a url'" in result.stderr


@pytest.mark.slow
def test_busy_port_names_the_port_and_the_way_out() -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_launcher("--demo", "--port", str(port))
    assert result.returncode == 2
    assert f"port {port} on 127.0.0.1 is already in use" in result.stderr
    assert "--port or OSP_PORT" in result.stderr
    assert "Errno" not in result.stderr
    assert "listening" not in result.stdout  # nothing claims to listen before the bind


@pytest.mark.slow
def test_a_proxy_that_is_its_own_upstream_is_refused() -> None:
    # A user exported OLLAMA_HOST for their clients, then started the proxy in that shell.
    result = run_launcher("--port", "11999", env={"OLLAMA_HOST": "127.0.0.1:11999"})
    assert result.returncode == 2
    assert "is this proxy itself" in result.stderr
    assert "OLLAMA_HOST=127.0.0.1:11999 is set in this environment" in result.stderr
    other = run_launcher("--port", "11999", "--upstream", "http://localhost:11999")
    assert other.returncode == 2 and "is this proxy itself" in other.stderr
