"""``Settings``: keyword arguments, ``OSP_*`` environment variables, and a TOML file.

Precedence, highest first: keyword arguments (the launcher's flags), ``OSP_*`` variables,
``OLLAMA_HOST`` (for ``upstream`` only), the TOML file (``config=`` or ``OSP_CONFIG``),
the defaults.
"""

from __future__ import annotations

import difflib
import json
import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from ._keys import KeySpec
from ._urls import DEFAULT_UPSTREAM, parse_ollama_host
from .fleet.spec import BackendSpec, check_unique


class _OllamaHostSource(PydanticBaseSettingsSource):
    """``OLLAMA_HOST`` as a fallback for ``upstream``, below ``OSP_UPSTREAM``."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # pragma: no cover - __call__ does the work

    def __call__(self) -> dict[str, Any]:
        value = os.environ.get("OLLAMA_HOST")
        return {"upstream": value} if value else {}


class _TomlSource(PydanticBaseSettingsSource):
    """The TOML file named by ``config=`` or ``OSP_CONFIG``: setting names at the top level."""

    def __init__(self, settings_cls: type[BaseSettings], init: InitSettingsSource) -> None:
        super().__init__(settings_cls)
        self._init = init

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # pragma: no cover - __call__ does the work

    def __call__(self) -> dict[str, Any]:
        path = self._init.init_kwargs.get("config") or os.environ.get("OSP_CONFIG")
        if not path:
            return {}
        try:
            with open(path, "rb") as file:
                data = tomllib.load(file)
        except FileNotFoundError as exc:
            raise ValueError(f"config file not found: {path}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"config file {path} is not valid TOML: {exc}") from exc
        unknown = sorted(set(data) - set(self.settings_cls.model_fields))
        if unknown:
            raise ValueError(f"config file {path}: unknown setting(s) {', '.join(unknown)}")
        return data


class Settings(BaseSettings):
    """Every setting of the proxy. See ``docs/configuration.md`` for the reference."""

    model_config = SettingsConfigDict(env_prefix="OSP_", extra="forbid", validate_default=True)

    upstream: str = Field(DEFAULT_UPSTREAM, description="URL of the Ollama server.")
    host: str = Field("127.0.0.1", description="Address the launcher listens on.")
    port: int = Field(11435, ge=0, le=65535, description="Port the launcher listens on.")
    config: Path | None = Field(None, description="TOML file to read settings from.")

    aliases: dict[str, str] = Field(default_factory=dict, description="Model aliases.")
    default_model: str | None = Field(None, description="Model for requests that name none.")
    auto_pull: Annotated[Literal["off", "on"] | list[str], NoDecode] = Field(
        "off", description="Pull missing models: off, on, or a list of name patterns."
    )
    preload: list[str] = Field(default_factory=list, description="Models to load at startup.")
    ready_waits_for_preload: bool = Field(
        True, description="/health/ready answers 503 until the preload is done."
    )
    keep_alive: dict[str, int | float | str] = Field(
        default_factory=dict,
        description="keep_alive per model name pattern (first match wins; a client's own wins).",
    )
    pull_timeout: float = Field(
        1800.0, gt=0, description="Seconds an automatic pull may take before its waiters get 504."
    )
    max_pulls: int = Field(2, gt=0, description="Automatic pulls that run at once.")
    max_waiting_pulls: int = Field(
        16, ge=0, description="Automatic pulls that wait for a place (one more: 503)."
    )
    pull_grace: float = Field(
        30.0, ge=0, description="Seconds a pull goes on once nobody waits for it."
    )
    catalogue_ttl: float = Field(
        10.0, ge=0, description="Seconds the list of installed models (/api/tags) is kept."
    )
    api_keys: list[str | KeySpec] | None = Field(
        None, description="Keys accepted for the API (a key, sha256:HEX, or an object)."
    )
    admin_keys: list[str | KeySpec] | None = Field(
        None, description="Keys accepted for every route, the admin ones too."
    )
    keys_file: Path | None = Field(
        None,
        description="TOML or JSON file of keys ([[keys]]: key or sha256, name, models, admin).",
    )
    key_limits: dict[str, int] = Field(
        default_factory=dict,
        description="Limits for keys that set none (docs/quotas.md): requests_per_minute, "
        "tokens_per_minute, input_tokens_per_minute, output_tokens_per_minute, concurrent, "
        "tokens_per_day, tokens_per_month.",
    )
    admin_routes: Literal["open", "closed"] = Field(
        "open",
        description="Routes that change the server (pull, delete, ...): open (to admin keys, "
        "when keys are in use), or closed to everyone.",
    )
    upstream_api_key: str | None = Field(
        None, description="A token the proxy sends to Ollama (Authorization: Bearer)."
    )
    max_concurrent: int | None = Field(
        None, gt=0, description="Generations forwarded to Ollama at once (none: no bound)."
    )
    max_queue: int = Field(
        256, ge=0, description="Generations waiting behind max_concurrent; one more gets 503."
    )
    queue_timeout: float = Field(
        30.0, gt=0, description="Seconds a generation may wait in the queue before a 503."
    )
    queue_affinity: float = Field(
        0.0,
        ge=0,
        description="Seconds a queued generation may be passed over by later ones for a model "
        "that is running or just ran, so alternating models do not make Ollama reload (0: FIFO).",
    )
    shutdown_grace: float = Field(
        30.0, ge=0, description="Seconds streams may go on after SIGTERM before they are ended."
    )
    plugins_dirs: list[Path] = Field(default_factory=list, description="Plugin folders.")
    command_prefix: str = Field("/", min_length=1, description="Slash-command prefix.")
    enabled_agents: list[str] | None = Field(
        None, description="Agents to run, by name (none given: every agent found)."
    )
    disabled_agents: list[str] = Field(
        default_factory=list, description="Agents found but not run, by name."
    )
    agent_order: list[str] = Field(
        default_factory=list,
        description="Agents to run first, outermost first; the rest follow by priority.",
    )
    agent_options: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Options per agent name (over its config.json)."
    )
    max_body_bytes: int = Field(64 * 1024 * 1024, gt=0, description="Largest request body.")
    max_buffered_bytes: int = Field(
        512 * 1024 * 1024,
        gt=0,
        description="Most bytes of request bodies held at once, all clients together (503 past).",
    )
    body_timeout: float = Field(
        60.0, gt=0, description="Seconds a client may take to send its whole body (408 past)."
    )
    write_timeout: float = Field(
        60.0,
        gt=0,
        description="Seconds a client may take no data before its response is ended.",
    )
    max_messages: int = Field(
        10_000, gt=0, description="Most messages in one chat request (any dialect)."
    )
    max_json_objects: int = Field(
        100_000,
        gt=0,
        description="Most JSON objects and arrays in one request body (counted before parsing).",
    )
    cors_origins: list[str] = Field(default_factory=list, description="CORS origins.")
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Host names (shell patterns; * for any) answered besides local ones when "
        "no keys are in use.",
    )
    log_format: Literal["text", "json"] = Field("text", description="Access log format.")
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field(
        "info", description="Log level."
    )

    backends: list[BackendSpec] = Field(
        default_factory=list,
        description="Several Ollama servers (a fleet): a JSON list or TOML [[backends]] of "
        "{name, url, parallel, max_concurrent, weight, labels, api_key}; instead of upstream.",
    )
    poll_interval: float = Field(
        5.0,
        gt=0,
        description="Seconds between polls of each backend's /api/version, /api/tags and "
        "/api/ps (with 20% jitter; never a generation).",
    )
    failover_attempts: int = Field(
        2,
        ge=0,
        description="Other backends a generation is tried on when one fails before its first "
        "byte (refused, unreachable, 5xx); never after, never for an admin route.",
    )
    eject_seconds: float = Field(
        5.0,
        gt=0,
        description="Seconds a failing backend is ejected for at first; doubled at each "
        "failure in a row, up to 60 s (or this, if larger).",
    )
    pull_to: Literal["one", "all"] = Field(
        "one",
        description="Where a pull goes: the one backend routing picks for the model, or all.",
    )
    session_headers: list[str] = Field(
        default_factory=lambda: ["x-claude-code-session-id", "x-session-id"],
        description="Request headers that name a conversation, for backend affinity (else the "
        "system prompt and first message do).",
    )

    redis_url: str | None = Field(
        None,
        description="Redis (or Valkey) shared by several replicas: redis://, rediss:// or "
        "unix:// (the redis extra). Without it, limits are per process.",
    )
    redis_failure: Literal["local", "open", "closed"] = Field(
        "local",
        description="While Redis is unreachable: local (each replica its share of the limits), "
        "open (limits not shared), or closed (503).",
    )
    redis_timeout: float = Field(
        0.25, gt=0, description="Seconds one Redis operation may take before Redis counts as away."
    )
    lease_ttl: float = Field(
        10.0,
        gt=0,
        description="Seconds a shared place outlives a replica that stopped renewing it (died).",
    )

    upstream_connect_timeout: float = Field(
        5.0, gt=0, description="Seconds to wait for a connection to Ollama."
    )
    upstream_timeout: float = Field(
        300.0,
        gt=0,
        description="Seconds to wait for Ollama's next bytes (first token, next chunk).",
    )
    upstream_max_connections: int = Field(
        1024, gt=0, description="Size of the connection pool to Ollama."
    )
    max_line_bytes: int = Field(
        16 * 1024 * 1024, gt=0, description="Longest NDJSON line accepted from Ollama."
    )
    default_max_output_tokens: int | None = Field(
        None,
        gt=0,
        description="Cap on generated tokens for Responses requests that name none (Codex).",
    )
    drop_unsupported_tools: bool = Field(
        False,
        description="Drop the tools of a request for a model that cannot call tools.",
    )
    openai_unsupported: Literal["error", "ignore"] = Field(
        "error",
        description="OpenAI fields Ollama cannot honour (n > 1, logprobs, ...): 400, or ignore.",
    )
    health_timeout: float = Field(
        2.0, gt=0, description="Seconds /health waits for Ollama's /api/version."
    )
    ignore_unknown_env: bool = Field(
        False,
        description="Accept OSP_ variables that name no setting (for shared environments); "
        "by default one is an error that names the nearest setting.",
    )

    @model_validator(mode="after")
    def _no_unknown_variables(self) -> Settings:
        if self.ignore_unknown_env:
            return self
        names = set(type(self).model_fields)
        for variable in sorted(os.environ):
            if not variable.startswith("OSP_") or variable[4:].lower() in names:
                continue
            known = [f"OSP_{name.upper()}" for name in names]
            near = difflib.get_close_matches(variable.upper(), known, n=1)
            hint = f"did you mean {near[0]}? " if near else ""
            raise ValueError(
                f"{variable} is not a setting: {hint}(set OSP_IGNORE_UNKNOWN_ENV=true where "
                "OSP_ variables of other programs are expected)"
            )
        return self

    @model_validator(mode="after")
    def _one_form_of_upstream(self) -> Settings:
        if not self.backends:
            return self
        check_unique(self.backends)
        from_ollama_host = (
            "OSP_UPSTREAM" not in os.environ
            and bool(os.environ.get("OLLAMA_HOST"))
            and parse_ollama_host(os.environ["OLLAMA_HOST"]) == self.upstream
        )
        if "upstream" in self.model_fields_set and not from_ollama_host:
            raise ValueError(
                "upstream and backends are both given: give one Ollama as upstream "
                "(OSP_UPSTREAM) or several as backends (OSP_BACKENDS), not both"
            )
        return self

    @field_validator("key_limits")
    @classmethod
    def _check_key_limits(cls, value: dict[str, int]) -> dict[str, int]:
        from ._keys import LIMIT_FIELDS

        for name, number in value.items():
            if name not in LIMIT_FIELDS:
                raise ValueError(
                    f"key_limits: {name!r} is not a limit (one of {', '.join(LIMIT_FIELDS)})"
                )
            if number < 1:
                raise ValueError(f"key_limits: {name} must be at least 1, got {number}")
        return value

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str | None) -> str | None:
        if value and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(
                f"redis_url must start with redis://, rediss:// or unix://, got {value!r}"
            )
        return value or None

    @field_validator("session_headers")
    @classmethod
    def _lower_headers(cls, value: list[str]) -> list[str]:
        return [name.strip().lower() for name in value if name.strip()]

    @field_validator("upstream", mode="before")
    @classmethod
    def _normalise_upstream(cls, value: object) -> object:
        return parse_ollama_host(value) if isinstance(value, str) else value

    @field_validator("auto_pull", mode="before")
    @classmethod
    def _decode_auto_pull(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return text.lower()
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower_log_level(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        if not isinstance(init_settings, InitSettingsSource):  # pragma: no cover
            raise TypeError("pydantic-settings changed its init source")
        return (
            init_settings,
            env_settings,
            _OllamaHostSource(settings_cls),
            _TomlSource(settings_cls, init_settings),
        )


__all__ = [
    "DEFAULT_UPSTREAM",
    "Settings",
    "parse_ollama_host",
]
