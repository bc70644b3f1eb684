"""Claude Code (``claude -p``) and Codex (``codex exec``) against the proxy over FakeOllama.

The CLIs come from npm (``npm install @anthropic-ai/claude-code @openai/codex``); without them
on PATH these tests are skipped, and say so.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from ollama_smart_proxy import Settings, SmartProxy
from ollama_smart_proxy.testing import FakeOllama, serve_in_thread

ANSWER = "Hello from the fake model."
ALIASES = {"claude-sonnet-5": "qwen3", "claude-haiku-4-5-20251001": "qwen3", "gpt-5-codex": "qwen3"}


@pytest.fixture
def url() -> Iterator[tuple[str, FakeOllama]]:
    fake = FakeOllama(reply=ANSWER)
    with serve_in_thread(fake) as fake_url:
        settings = Settings(upstream=fake_url, aliases=ALIASES, drop_unsupported_tools=True)
        with serve_in_thread(SmartProxy(settings, entry_points=False)) as proxy_url:
            yield proxy_url, fake


def quiet_env(home: Path) -> dict[str, str]:
    keep = ("PATH", "LANG", "TERM", "TMPDIR")
    env = {name: os.environ[name] for name in keep if name in os.environ}
    return {**env, "HOME": str(home), "NO_COLOR": "1"}


@pytest.mark.skipif(
    shutil.which("claude") is None,
    reason="Claude Code (npm @anthropic-ai/claude-code) is not on PATH",
)
def test_claude_print_mode(url: tuple[str, FakeOllama], tmp_path: Path) -> None:
    proxy_url, fake = url
    env = {
        **quiet_env(tmp_path),
        "ANTHROPIC_BASE_URL": proxy_url,
        "ANTHROPIC_API_KEY": "sk-any",
        "DISABLE_TELEMETRY": "1",
        "DISABLE_ERROR_REPORTING": "1",
        "DISABLE_AUTOUPDATER": "1",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    }
    result = subprocess.run(
        ["claude", "-p", "say hi", "--model", "claude-sonnet-5"],
        capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert ANSWER in result.stdout
    assert fake.calls("/api/chat")[-1].json["model"] == "qwen3"


@pytest.mark.skipif(
    shutil.which("codex") is None, reason="Codex (npm @openai/codex) is not on PATH"
)
def test_codex_exec(url: tuple[str, FakeOllama], tmp_path: Path) -> None:
    proxy_url, fake = url
    home = tmp_path / "codex"
    home.mkdir()
    (home / "config.toml").write_text(
        'model = "gpt-5-codex"\nmodel_provider = "osp"\n\n[model_providers.osp]\n'
        f'name = "ollama-smart-proxy"\nbase_url = "{proxy_url}/v1"\nwire_api = "responses"\n'
    )
    env = {**quiet_env(tmp_path), "CODEX_HOME": str(home)}
    result = subprocess.run(
        ["codex", "exec", "--skip-git-repo-check", "say hi"],
        capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert ANSWER in result.stdout
    assert fake.calls("/api/chat")[-1].json["model"] == "qwen3"
