"""ollama-smart-proxy: a composable pure-ASGI proxy in front of one Ollama server."""

from __future__ import annotations

from ._version import __version__
from .app import SmartProxy
from .boundary import ErrorBoundary
from .entry import NativeEntry
from .errors import (
    AuthenticationError,
    LoopDetected,
    ModelNotFound,
    Overloaded,
    PermissionDenied,
    ProxyError,
    RequestError,
    RequestTooLarge,
    UpstreamError,
    UpstreamStatusError,
    UpstreamTimeout,
)
from .exchange import Exchange, get_exchange
from .openai import OpenAICompat
from .settings import Settings
from .upstream import OllamaUpstream

__all__ = [
    "AuthenticationError",
    "ErrorBoundary",
    "Exchange",
    "LoopDetected",
    "ModelNotFound",
    "NativeEntry",
    "OllamaUpstream",
    "OpenAICompat",
    "Overloaded",
    "PermissionDenied",
    "ProxyError",
    "RequestError",
    "RequestTooLarge",
    "Settings",
    "SmartProxy",
    "UpstreamError",
    "UpstreamStatusError",
    "UpstreamTimeout",
    "__version__",
    "get_exchange",
]
