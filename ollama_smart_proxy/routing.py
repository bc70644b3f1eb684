"""Routes: what a request path means, decided once, and the path that goes upstream.

Every layer reads the same :class:`Route` (``route_of(scope)``): the router picks a handler
from it, the error boundary its dialect, keys and policy the endpoint, the terminal layer the
path it forwards. The route is decided on one normalised form of the path, and the path
forwarded upstream is the client's own ``raw_path``: a path whose decoding is ambiguous
(encoded ``/``, ``?`` or ``#``, dot segments, empty segments, control bytes) is refused, so
what Ollama decodes is exactly the route the proxy decided on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Literal
from urllib.parse import unquote_to_bytes

from .errors import Dialect
from .kinds import (
    ADMIN_KINDS,
    GENERATION_KINDS,
    NATIVE_KINDS,
    NATIVE_PREFIX_KINDS,
    OPENAI_KINDS,
    OPENAI_PASSTHROUGH_KINDS,
    PROXY_KINDS,
)
from .types import Scope

#: Which part of the proxy serves a route.
Family = Literal["native", "openai", "responses", "anthropic", "proxy", "none", "invalid"]

ROUTE_KEY = "ollama_smart_proxy.route"

# Encoded separators and controls: their decoding would differ from what we route on.
_AMBIGUOUS = re.compile(rb"%(?:2f|5c|3f|23|0[0-9a-f]|1[0-9a-f]|7f)", re.IGNORECASE)
_ENCODED_CONTROL = re.compile(rb"%(?:0[0-9a-f]|1[0-9a-f]|7f)", re.IGNORECASE)
_CONTROL = re.compile(rb"[\x00-\x20\x7f-\xff]")  # and raw non-ASCII: not a valid target
#: Routes whose last part is an identifier, never forwarded as a path: an encoded ``/`` is
#: part of the id (the OpenAI SDK sends ``/v1/models/user%2Fmodel:7b``).
_ID_ROUTES = (b"/v1/models/", b"/models/")


@dataclass(frozen=True, slots=True)
class Route:
    """One request's route.

    ``path`` is the decoded, normalised path below the mount point; ``raw_path`` the bytes
    forwarded upstream (the client's own); ``family`` the part of the proxy that serves it;
    ``kind`` the endpoint (``"chat"``, ``"openai.chat"``, ``"health.live"``...); ``dialect``
    the API dialect of the client, which every error on this request is written in;
    ``problem`` why the path was refused (``family == "invalid"``).
    """

    path: str
    raw_path: bytes
    family: Family
    kind: str
    dialect: Dialect
    problem: str = ""

    def target(self, query: bytes) -> bytes:
        """The request target sent upstream: the raw path and the query as the client sent."""
        return self.raw_path + b"?" + query if query else self.raw_path

    def rewritten(self, path: str) -> Route:
        """This route moved to a native ``path`` (a translated request), same dialect."""
        family, kind = _classify(path)[:2]
        return replace(self, path=path, raw_path=path.encode(), family=family, kind=kind)


def _classify(path: str) -> tuple[Family, str, Dialect]:
    kind = NATIVE_KINDS.get(path)
    if kind is not None:
        return "native", kind, "ollama"
    if path.startswith("/api/"):
        for prefix, prefixed in NATIVE_PREFIX_KINDS.items():
            if path.startswith(prefix) and len(path) > len(prefix):
                return "native", prefixed, "ollama"
        return "native", "api", "ollama"
    kind = PROXY_KINDS.get(path)
    if kind is not None:
        return "proxy", kind, "ollama"
    sub = path[3:] if path.startswith("/v1/") else path
    kind = OPENAI_KINDS.get(sub)
    if kind is not None:
        return "openai", kind, "openai"
    if sub.startswith("/models/") and len(sub) > len("/models/"):
        return "openai", "openai.model", "openai"
    if path == "/v1/responses":
        return "responses", "responses", "responses"
    if path == "/v1/messages":
        return "anthropic", "messages", "anthropic"
    if path == "/v1/messages/count_tokens":
        return "anthropic", "count_tokens", "anthropic"
    kind = OPENAI_PASSTHROUGH_KINDS.get(path)
    if kind is not None:
        return "native", kind, "openai"
    if path.startswith("/v1/"):
        # Any other route under /v1 goes through as it is, never hidden (an unknown route:
        # admin-only when keys are in use).
        return "native", "v1", "openai"
    return "none", "unknown", "openai" if path == "/v1" else "ollama"


def _invalid(path: str, problem: str) -> Route:
    dialect: Dialect = "openai" if path.startswith("/v1") else "ollama"
    return Route(path, b"", "invalid", "invalid", dialect, problem)


def resolve_path(raw: bytes) -> Route:
    """The route of a raw path (already below the mount point)."""
    if not raw:
        raw = b"/"
    text = raw.decode("latin-1")
    for prefix in _ID_ROUTES:
        if raw.startswith(prefix) and len(raw) > len(prefix) and not _CONTROL.search(raw):
            if _ENCODED_CONTROL.search(raw):
                break
            try:
                ident = unquote_to_bytes(raw[len(prefix) :]).decode("utf-8")
            except UnicodeDecodeError:
                break
            return Route(prefix.decode() + ident, raw, "openai", "openai.model", "openai")
    if _CONTROL.search(raw) or _AMBIGUOUS.search(raw):
        return _invalid(
            text,
            f"the path {text!r} has an encoded separator, a control byte or a raw non-ASCII "
            "byte (percent-encode it)",
        )
    if not raw.startswith(b"/"):
        return _invalid(text, f"the path {text!r} does not start with '/'")
    try:
        path = unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        return _invalid(text, f"the path {text!r} is not UTF-8 once decoded")
    segments = path.split("/")[1:]
    for index, segment in enumerate(segments):
        if segment in (".", "..") or (not segment and index < len(segments) - 1):
            return _invalid(text, f"the path {text!r} has empty or dot segments")
    family, kind, dialect = _classify(path)
    return Route(path, raw, family, kind, dialect)


def resolve(scope: Scope) -> Route:
    """The route of an ASGI HTTP scope (``raw_path`` below ``root_path``)."""
    raw: bytes | None = scope.get("raw_path")
    root: str = scope.get("root_path", "")
    if raw is None:
        from urllib.parse import quote

        raw = quote(scope["path"], safe="/:@!$&'()*+,;=~").encode("ascii")
    if root and unquote_to_bytes(raw).decode("utf-8", "replace").startswith(root):
        # Mounted: drop as many raw segments as the mount point has.
        depth = root.rstrip("/").count("/")
        parts = raw.split(b"/", depth + 1)
        raw = b"/" + parts[depth + 1] if len(parts) > depth + 1 else b"/"
    cached = _CACHE.get(raw)
    if cached is None:
        cached = resolve_path(raw)
        if len(_CACHE) >= 1024:
            _CACHE.clear()
        _CACHE[raw] = cached
    return cached


_CACHE: dict[bytes, Route] = {}


def route_of(scope: Scope) -> Route:
    """The route of this request: decided by the first layer that asks, kept in the scope."""
    route: Route | None = scope.get(ROUTE_KEY)
    if route is None:
        route = resolve(scope)
        scope[ROUTE_KEY] = route
    return route


__all__ = [
    "ADMIN_KINDS",
    "GENERATION_KINDS",
    "NATIVE_KINDS",
    "OPENAI_KINDS",
    "PROXY_KINDS",
    "ROUTE_KEY",
    "Family",
    "Route",
    "resolve",
    "resolve_path",
    "route_of",
]
