"""ollama-smart-proxy: a composable pure-ASGI proxy in front of one Ollama server."""

from __future__ import annotations

from ._version import __version__
from .app import SmartProxy
from .errors import (
    ModelNotFound,
    ProxyError,
    RequestError,
    RequestTooLarge,
    UpstreamError,
    UpstreamTimeout,
)
from .exchange import Exchange, get_exchange
from .settings import Settings
from .upstream import OllamaUpstream

__all__ = [
    "Exchange",
    "ModelNotFound",
    "OllamaUpstream",
    "ProxyError",
    "RequestError",
    "RequestTooLarge",
    "Settings",
    "SmartProxy",
    "UpstreamError",
    "UpstreamTimeout",
    "__version__",
    "get_exchange",
]
