from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from ollama_smart_proxy import Settings
from ollama_smart_proxy.settings import parse_ollama_host


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("OSP_") or name == "OLLAMA_HOST":
            monkeypatch.delenv(name)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", "http://127.0.0.1:11434"),
        ("localhost", "http://localhost:11434"),
        ("0.0.0.0:1234", "http://0.0.0.0:1234"),
        ("http://example.com", "http://example.com:80"),
        ("https://example.com", "https://example.com:443"),
        ("example.com/path/", "http://example.com:11434/path"),
        ("http://[::1]:11434", "http://[::1]:11434"),
    ],
)
def test_ollama_host_parsed_like_the_ollama_clients(value: str, expected: str) -> None:
    assert parse_ollama_host(value) == expected


def test_defaults() -> None:
    settings = Settings()
    assert settings.upstream == "http://127.0.0.1:11434"
    assert (settings.host, settings.port) == ("127.0.0.1", 11435)
    assert settings.max_body_bytes == 64 * 1024 * 1024
    assert settings.command_prefix == "/"
    assert settings.auto_pull == "off"
    assert settings.api_keys is None
    assert (settings.log_format, settings.log_level) == ("text", "info")


def test_environment_and_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "osp.toml"
    config.write_text(
        'default_model = "from-file"\nport = 1111\nupstream = "file-host"\n'
        '[aliases]\n"gpt-4o-mini" = "llama3.2:3b"\n'
    )
    monkeypatch.setenv("OSP_CONFIG", str(config))
    assert Settings().upstream == "http://file-host:11434"
    monkeypatch.setenv("OLLAMA_HOST", "ollama-host:1")
    assert Settings().upstream == "http://ollama-host:1"
    monkeypatch.setenv("OSP_UPSTREAM", "http://osp-host:2")
    monkeypatch.setenv("OSP_PORT", "2222")
    monkeypatch.setenv("OSP_AUTO_PULL", '["llama3*", "qwen*"]')
    monkeypatch.setenv("OSP_API_KEYS", '["k1"]')
    settings = Settings()
    assert settings.upstream == "http://osp-host:2"
    assert settings.port == 2222
    assert settings.default_model == "from-file"
    assert settings.aliases == {"gpt-4o-mini": "llama3.2:3b"}
    assert settings.auto_pull == ["llama3*", "qwen*"]
    assert settings.api_keys == ["k1"]
    assert Settings(port=3333, upstream="kw-host").port == 3333
    assert Settings(upstream="kw-host").upstream == "http://kw-host:11434"


def test_auto_pull_words(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OSP_AUTO_PULL", "ON")
    assert Settings().auto_pull == "on"


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"port": 70000}, "port"),
        ({"log_format": "xml"}, "log_format"),
        ({"max_body_bytes": 0}, "max_body_bytes"),
        ({"upstream": "ftp://x"}, "http:// or https://"),
        ({"no_such_setting": 1}, "no_such_setting"),
    ],
)
def test_invalid_settings_are_named(kwargs: dict[str, object], fragment: str) -> None:
    with pytest.raises(ValidationError, match=fragment):
        Settings(**kwargs)  # type: ignore[arg-type]


def test_config_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="config file not found"):
        Settings(config=tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("unknown_key = 1\n")
    with pytest.raises(ValueError, match="unknown setting"):
        Settings(config=bad)
