"""API keys: who may use the proxy, under which name, with which models.

A key is given as itself or as ``sha256:<hex digest>`` (so a keys file need hold no secret),
optionally with a name (what logs and metrics show, never the key) and the model name
patterns it may use. Clients send it as ``Authorization: Bearer KEY`` (the OpenAI SDK, the
Ollama client with ``OLLAMA_API_KEY``) or ``X-API-Key: KEY`` (the Anthropic SDK).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from .._keys import KEY_SCOPE_KEY, ApiKey, KeySpec, load_keys_file, make_key, request_key
from ..access_log import get_context
from ..errors import AuthenticationError
from ..kinds import OPEN_KINDS
from ..routing import route_of
from ..types import ASGIApp, Receive, Scope, Send

logger = logging.getLogger("ollama_smart_proxy.security")


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
