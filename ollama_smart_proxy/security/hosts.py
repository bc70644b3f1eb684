"""``HostGuard``: Ollama's own defences against DNS rebinding and cross-site requests, kept.

Ollama on loopback answers only requests whose ``Host`` is a local name or address, and
refuses a request whose ``Origin`` it does not allow. A proxy in front of it sends Ollama its
own ``Host`` and makes every request look local, so those checks no longer protect it: this
layer makes them again, at the proxy, when no API keys are in use (with keys, a page in a
browser has no key to send). A web page that makes a browser post to the proxy, or a
rebinding name (``evil.example`` resolving to 127.0.0.1), gets a 403 and reaches nothing.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence
from fnmatch import fnmatchcase
from urllib.parse import urlsplit

from ..errors import PermissionDenied
from ..kinds import OPEN_KINDS
from ..routing import route_of
from ..types import ASGIApp, Receive, Scope, Send

#: Names no public DNS can give an attacker: reserved for local and test use.
LOCAL_SUFFIXES = (".localhost", ".local", ".internal", ".test", ".home.arpa")
#: Origins Ollama allows by default besides loopback ones: desktop apps and editors.
LOCAL_SCHEMES = frozenset({"app", "file", "tauri", "vscode-webview", "vscode-file"})


def _host_of(value: str) -> str:
    """The host of a ``Host`` header (no port, no brackets, lower case)."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def is_local_host(host: str) -> bool:
    """Whether ``host`` is a name or address only this machine or its network can mean."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        # A local name, a single label (no public DNS name has none), or this machine's name.
        return (
            not host
            or host == "localhost"
            or host.endswith(LOCAL_SUFFIXES)
            or "." not in host
            or host == socket.gethostname().lower()
        )
    return address.is_loopback or address.is_private or address.is_unspecified


class HostGuard:
    """``HostGuard(app, *, allowed_hosts=(), allowed_origins=())``.

    A request is refused (403, in its dialect) when its ``Host`` is neither local (loopback,
    a private address, ``localhost``, ``*.local``, ``*.internal``, ``*.test``, a single-label
    name, this machine's name) nor one of ``allowed_hosts`` (shell patterns, ``*`` for any);
    or when it carries an ``Origin`` that is neither the proxy itself, a local origin, nor
    one of ``allowed_origins`` (the CORS origins). The probes are never refused.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        allowed_hosts: Sequence[str] = (),
        allowed_origins: Sequence[str] = (),
    ) -> None:
        self.app = app
        self.allowed_hosts = [pattern.lower() for pattern in allowed_hosts]
        self.allowed_origins = {origin.rstrip("/").lower() for origin in allowed_origins}
        self.any_host = "*" in self.allowed_hosts
        #: Decisions by (Host, Origin): a proxy sees few distinct ones.
        self._seen: dict[tuple[bytes | None, bytes | None], str] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and route_of(scope).kind not in OPEN_KINDS:
            self.check(scope)
        await self.app(scope, receive, send)

    def check(self, scope: Scope) -> None:
        raw_host = origin = None
        for name, value in scope["headers"]:
            if name == b"host":
                raw_host = value
            elif name == b"origin":
                origin = value
        known = self._seen.get((raw_host, origin))
        if known is None:
            known = self._decide(raw_host, origin)
            if len(self._seen) >= 512:
                self._seen.clear()
            self._seen[(raw_host, origin)] = known
        if known:
            raise PermissionDenied(known)

    def _decide(self, raw_host: bytes | None, origin: bytes | None) -> str:
        """Why a request with this Host and Origin is refused ("" if it is not)."""
        host = _host_of(raw_host.decode("latin-1")) if raw_host is not None else ""
        if not self.any_host and not self._host_allowed(host):
            return (
                f"the Host {host!r} is not a local name: without API keys the proxy answers "
                "only local names (list others in OSP_ALLOWED_HOSTS), as Ollama does"
            )
        if origin is not None and not self._origin_allowed(origin.decode("latin-1"), raw_host):
            return (
                f"requests from the web page at {origin.decode('latin-1')!r} are not allowed "
                "(list it in OSP_CORS_ORIGINS to allow it), as Ollama refuses them"
            )
        return ""

    def _host_allowed(self, host: str) -> bool:
        if is_local_host(host):
            return True
        return any(fnmatchcase(host, pattern) for pattern in self.allowed_hosts)

    def _origin_allowed(self, origin: str, raw_host: bytes | None) -> bool:
        origin = origin.strip().rstrip("/").lower()
        if origin in self.allowed_origins or "*" in self.allowed_origins:
            return True
        split = urlsplit(origin)
        if split.scheme in LOCAL_SCHEMES:
            return True
        if raw_host is not None and split.netloc == raw_host.decode("latin-1").lower():
            return True  # the proxy's own page
        host = (split.hostname or "").lower()
        try:
            return host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:
            return host.endswith(".localhost")


__all__ = ["HostGuard", "is_local_host"]
