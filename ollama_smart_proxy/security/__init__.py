"""Who may use the proxy: API keys and the route policy (CORS is Starlette's own)."""

from __future__ import annotations

from .bodies import BodyBudget, BodyGuard
from .hosts import HostGuard
from .keys import ApiKey, ApiKeys, KeySpec, keys_from_settings, make_key, request_key
from .policy import RoutePolicy

__all__ = [
    "ApiKey",
    "ApiKeys",
    "BodyBudget",
    "BodyGuard",
    "HostGuard",
    "KeySpec",
    "RoutePolicy",
    "keys_from_settings",
    "make_key",
    "request_key",
]
