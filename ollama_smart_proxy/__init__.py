"""ollama-smart-proxy: a composable pure-ASGI proxy in front of Ollama.

Every layer of the stack is importable from here and usable on its own around any ASGI app
(``docs/architecture.md`` draws the stack); ``SmartProxy`` builds them all from ``Settings``,
and :func:`standalone` serves an agent or the model loader alone.
"""

from __future__ import annotations

from ._version import __version__
from .access_log import AccessLog
from .admission import Admission
from .anthropic import AnthropicCompat
from .app import SmartProxy, standalone
from .boundary import ErrorBoundary
from .entry import Dialect, Endpoint, ModelEntry, NativeEntry, Translation
from .errors import (
    AuthenticationError,
    BadRequest,
    LoopDetected,
    ModelNotFound,
    Overloaded,
    PermissionDenied,
    ProxyError,
    RequestError,
    RequestTooLarge,
    SmartProxyError,
    UpstreamError,
    UpstreamStatusError,
    UpstreamTimeout,
)
from .exchange import Exchange, get_exchange
from .models import ModelLoader
from .openai import OpenAICompat
from .responses import ResponsesCompat
from .security import ApiKeys, RoutePolicy
from .settings import Settings
from .upstream import OllamaUpstream

__all__ = [
    "AccessLog",
    "Admission",
    "AnthropicCompat",
    "ApiKeys",
    "AuthenticationError",
    "BadRequest",
    "Dialect",
    "Endpoint",
    "ErrorBoundary",
    "Exchange",
    "LoopDetected",
    "ModelEntry",
    "ModelLoader",
    "ModelNotFound",
    "NativeEntry",
    "OllamaUpstream",
    "OpenAICompat",
    "Overloaded",
    "PermissionDenied",
    "ProxyError",
    "RequestError",
    "RequestTooLarge",
    "ResponsesCompat",
    "RoutePolicy",
    "Settings",
    "SmartProxy",
    "SmartProxyError",
    "Translation",
    "UpstreamError",
    "UpstreamStatusError",
    "UpstreamTimeout",
    "__version__",
    "get_exchange",
    "standalone",
]
