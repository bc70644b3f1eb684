"""API keys: who may use the proxy, under which name, with which models.

A key is given as itself or as ``sha256:<hex digest>`` (so a keys file need hold no secret),
optionally with a name (what logs and metrics show, never the key) and the model name
patterns it may use. Clients send it as ``Authorization: Bearer KEY`` (the OpenAI SDK, the
Ollama client with ``OLLAMA_API_KEY``) or ``X-API-Key: KEY`` (the Anthropic SDK).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from ..access_log import get_context
from ..errors import AuthenticationError
from ..names import matches
from ..routing import route_of
from ..types import ASGIApp, Receive, Scope, Send

logger = logging.getLogger("ollama_smart_proxy.security")

#: Where the authenticated key of a request is kept (as Starlette keeps ``scope["auth"]``).
KEY_SCOPE_KEY = "ollama_smart_proxy.key"

#: Routes anyone may call: the probes of an orchestrator (they send no credentials).
OPEN_KINDS = frozenset({"health.live", "health.ready"})


class KeySpec(BaseModel):
    """One key, as written in settings or a keys file."""

    model_config = ConfigDict(extra="forbid")

    key: str | None = None
    sha256: str | None = None
    name: str | None = None
    #: Model name patterns the key may use (``None``: any).
    models: list[str] | None = None
    admin: bool = False

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
    return ApiKey(digest, name, models, admin or spec.admin)


def load_keys_file(path: str | Path) -> list[ApiKey]:
    """Keys from a TOML or JSON file: ``[[keys]]`` entries (``key`` or ``sha256``, ``name``,
    ``models``, ``admin``)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (OSError, ValueError) as exc:
        raise ValueError(f"keys file {path} cannot be read: {exc}") from None
    entries = data.get("keys") if isinstance(data, dict) else data
    if not isinstance(entries, list):
        raise ValueError(f"keys file {path} must hold a list of keys ([[keys]] in TOML)")
    try:
        return [make_key(entry) for entry in entries]
    except (ValidationError, ValueError, TypeError) as exc:
        raise ValueError(f"keys file {path}: {exc}") from None


def presented_key(scope: Scope) -> bytes | None:
    """The key a request carries: ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``."""
    bearer = None
    api_key = None
    for name, value in scope["headers"]:
        if name == b"authorization" and value[:7].lower() == b"bearer ":
            bearer = value[7:].strip()
        elif name == b"x-api-key":
            api_key = value.strip()
    return bearer or api_key


def request_key(scope: Scope) -> ApiKey | None:
    """The key this request was authenticated with, if keys are in use."""
    key = scope.get(KEY_SCOPE_KEY)
    return key if isinstance(key, ApiKey) else None


class ApiKeys:
    """``ApiKeys(app, keys=[...])``: with keys, every request needs one, but the probes
    (``/health/live``, ``/health/ready``); CORS preflights never get this far.

    No key or a wrong one is a 401 in the client's dialect, and nothing reaches Ollama. The
    key is compared by its SHA-256 digest, against every configured key, in constant time.
    """

    def __init__(self, app: ASGIApp, *, keys: Sequence[ApiKey]) -> None:
        if not keys:
            raise ValueError("ApiKeys needs at least one key (no keys: leave the layer out)")
        self.app = app
        self.keys = list(keys)

    def find(self, presented: bytes) -> ApiKey | None:
        digest = hashlib.sha256(presented).digest()
        found = None
        for key in self.keys:  # no early exit: the time does not depend on which key matched
            if hmac.compare_digest(digest, key.digest):
                found = key
        return found

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or route_of(scope).kind in OPEN_KINDS:
            await self.app(scope, receive, send)
            return
        presented = presented_key(scope)
        key = self.find(presented) if presented else None
        if key is None:
            raise AuthenticationError(
                "a valid API key is required: send it as 'Authorization: Bearer KEY' or "
                "'X-API-Key: KEY'"
                if presented is None
                else "the API key is not valid"
            )
        context = get_context(scope)
        if context is not None:
            context.key = key.name
        scope = dict(scope)
        scope[KEY_SCOPE_KEY] = key
        await self.app(scope, receive, send)


def keys_from_settings(
    api_keys: Iterable[str | KeySpec | dict[str, Any]] | None,
    admin_keys: Iterable[str | KeySpec | dict[str, Any]] | None,
    keys_file: str | Path | None,
) -> list[ApiKey]:
    """Every key the settings give: API keys, admin keys (also API keys), the keys file."""
    keys = [make_key(spec) for spec in api_keys or ()]
    keys += [make_key(spec, admin=True) for spec in admin_keys or ()]
    if keys_file:
        keys += load_keys_file(keys_file)
    return keys


__all__ = [
    "KEY_SCOPE_KEY",
    "ApiKey",
    "ApiKeys",
    "KeySpec",
    "keys_from_settings",
    "load_keys_file",
    "make_key",
    "presented_key",
    "request_key",
]
