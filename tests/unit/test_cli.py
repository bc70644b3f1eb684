from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from ollama_smart_proxy import Settings
from ollama_smart_proxy.cli import build_parser, main, settings_from_args


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


@pytest.mark.parametrize(
    ("variables", "argv", "expected"),
    [
        (
            {"OSP_API_KEY": '["sk-1"]'},
            [],
            "OSP_API_KEY is not a setting: did you mean OSP_API_KEYS?",
        ),
        ({"OSP_PORT": "abc"}, [], "port (OSP_PORT"),
        ({"OSP_API_KEYS": "sk-1"}, [], """OSP_API_KEYS='["sk-..."]'"""),
        ({"OSP_ALIASES": "x"}, [], "OSP_ALIASES (aliases) is not valid JSON"),
        ({}, ["--upstream", "http://127.0.0.1:11434/v1"], "drop the '/v1'"),
        ({}, ["--upstream", "http//127.0.0.1:1"], "did you mean 'http://127.0.0.1:1'?"),
    ],
)
def test_a_bad_setting_stops_the_launcher_with_one_line_that_names_it(
    variables: dict[str, str],
    argv: list[str],
    expected: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert expected in err
    assert len(err.strip().splitlines()) == 1


def test_unknown_variables_may_be_allowed_where_others_are_expected(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OSP_SOMETHING_ELSE", "1")
    with pytest.raises(ValueError, match="OSP_SOMETHING_ELSE is not a setting"):
        Settings()
    monkeypatch.setenv("OSP_IGNORE_UNKNOWN_ENV", "true")
    assert Settings().ignore_unknown_env is True


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "cannot be read"),
        ("", "must hold a list of keys ([[keys]] in TOML)"),
        ('[keys]\nname = "x"\n', "must hold a list of keys"),
        ('[[keys]]\nkey = "sk"\nnmae = "x"\n', "key 1: nmae: Extra inputs are not permitted"),
        ('[[keys]]\nkey = "sk"\nadmin = "yes"\n', "key 1: admin: Input should be a valid boolean"),
    ],
)
def test_a_bad_keys_file_stops_the_launcher_with_one_line(
    content: str | None,
    expected: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = tmp_path / "keys.toml"
    if content is not None:
        path.write_text(content)
    monkeypatch.setenv("OSP_KEYS_FILE", str(path))
    assert main(["--port", "0"]) == 2
    err = capsys.readouterr().err
    assert expected in err and str(path) in err
    assert len(err.strip().splitlines()) == 1
