"""API keys as settings give them: their specification, and the key the proxy keeps.

A key is given as itself or as ``sha256:<hex digest>`` (so a keys file need hold no secret),
optionally with a name (what logs and metrics show, never the key) and the model name
patterns it may use. Settings parse these shapes; :mod:`ollama_smart_proxy.security.keys`
checks requests against them.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError, model_validator

from .names import matches
from .types import Scope

#: Where the authenticated key of a request is kept (as Starlette keeps ``scope["auth"]``).
KEY_SCOPE_KEY = "ollama_smart_proxy.key"


#: The limits a key may have, by field name.
LIMIT_FIELDS = (
    "requests_per_minute",
    "tokens_per_minute",
    "input_tokens_per_minute",
    "output_tokens_per_minute",
    "concurrent",
    "tokens_per_day",
    "tokens_per_month",
)


@dataclass(frozen=True)
class Limits:
    """One key's limits (``None``: no limit of that kind)."""

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    input_tokens_per_minute: int | None = None
    output_tokens_per_minute: int | None = None
    concurrent: int | None = None
    tokens_per_day: int | None = None
    tokens_per_month: int | None = None

    @classmethod
    def of(cls, values: Mapping[str, Any]) -> Limits | None:
        given = {name: values.get(name) for name in LIMIT_FIELDS if values.get(name) is not None}
        return cls(**given) if given else None


class KeySpec(BaseModel):
    """One key, as written in settings or a keys file."""

    model_config = ConfigDict(extra="forbid")

    key: str | None = None
    sha256: str | None = None
    name: str | None = None
    #: Model name patterns the key may use (``None``: any).
    models: list[str] | None = None
    admin: StrictBool = False
    #: Limits (docs/quotas.md); none given: the ``key_limits`` default, if any.
    requests_per_minute: int | None = Field(None, ge=1)
    tokens_per_minute: int | None = Field(None, ge=1)
    input_tokens_per_minute: int | None = Field(None, ge=1)
    output_tokens_per_minute: int | None = Field(None, ge=1)
    concurrent: int | None = Field(None, ge=1)
    tokens_per_day: int | None = Field(None, ge=1)
    tokens_per_month: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _one_secret(self) -> KeySpec:
        if (self.key is None) == (self.sha256 is None):
            raise ValueError("give a key either as 'key' or as its 'sha256' digest")
        if self.sha256 is not None and not _is_digest(self.sha256.removeprefix("sha256:")):
            raise ValueError("'sha256' must be the 64 hex digits of the key's SHA-256 digest")
        return self


@dataclass(frozen=True)
class ApiKey:
    """A key the proxy accepts (only its digest is kept)."""

    digest: bytes
    name: str
    models: tuple[str, ...] | None
    admin: bool
    #: Its own limits, if it has any.
    limits: Limits | None = None

    def may_use(self, *names: str) -> bool:
        """Whether the key may use a model known by any of ``names`` (an alias, its model)."""
        if self.models is None:
            return True
        return any(matches(pattern, name) for pattern in self.models for name in names)


def _is_digest(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdefABCDEF" for c in text)


def make_key(spec: str | KeySpec | dict[str, Any], *, admin: bool = False) -> ApiKey:
    """A key from its settings form: ``"KEY"``, ``"sha256:HEX"``, or an object."""
    if isinstance(spec, str):
        spec = KeySpec(sha256=spec) if spec.startswith("sha256:") else KeySpec(key=spec)
    elif isinstance(spec, dict):
        spec = KeySpec.model_validate(spec)
    if spec.key is not None:
        if not spec.key:
            raise ValueError("an API key must not be empty")
        digest = hashlib.sha256(spec.key.encode()).digest()
    else:
        digest = bytes.fromhex((spec.sha256 or "").removeprefix("sha256:"))
    name = spec.name or f"key-{digest.hex()[:8]}"
    models = tuple(spec.models) if spec.models is not None else None
    return ApiKey(digest, name, models, admin or spec.admin, Limits.of(spec.model_dump()))


def load_keys_file(path: str | Path) -> list[ApiKey]:
    """Keys from a TOML or JSON file: ``[[keys]]`` entries (``key`` or ``sha256``, ``name``,
    ``models``, ``admin``, and limits: ``requests_per_minute``, ``tokens_per_minute``...)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (OSError, ValueError) as exc:
        raise ValueError(f"keys file {path} cannot be read: {exc}") from None
    entries = data.get("keys") if isinstance(data, dict) else data
    if not isinstance(entries, list):
        raise ValueError(f"keys file {path} must hold a list of keys ([[keys]] in TOML)")
    keys = []
    for number, entry in enumerate(entries, 1):
        try:
            if not isinstance(entry, dict):
                raise ValueError(f"an entry must be a table, not {entry!r}")
            keys.append(make_key(entry))
        except ValidationError as exc:
            raise ValueError(
                f"keys file {path}, key {number}: {_one_line(exc)}; {_EXAMPLE}"
            ) from None
        except ValueError as exc:
            raise ValueError(f"keys file {path}, key {number}: {exc}; {_EXAMPLE}") from None
    return keys


_EXAMPLE = 'for example: [[keys]] name = "team" sha256 = "<64 hex digits>" models = ["llama3*"]'


def _one_line(exc: ValidationError) -> str:
    error = exc.errors(include_url=False)[0]
    field = ".".join(str(part) for part in error["loc"])
    got = f" (got {error['input']!r})" if "input" in error and field else ""
    message = error["msg"].removeprefix("Value error, ")
    return f"{field}: {message}{got}" if field else message


def request_key(scope: Scope) -> ApiKey | None:
    """The key this request was authenticated with, if keys are in use."""
    key = scope.get(KEY_SCOPE_KEY)
    return key if isinstance(key, ApiKey) else None


__all__ = [
    "KEY_SCOPE_KEY",
    "LIMIT_FIELDS",
    "ApiKey",
    "KeySpec",
    "Limits",
    "load_keys_file",
    "make_key",
    "request_key",
]
