"""Upstream URLs, read as the official Ollama clients read ``OLLAMA_HOST``."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

DEFAULT_UPSTREAM = "http://127.0.0.1:11434"
#: A path that names one of Ollama's APIs: a mistake for the server's root.
_API_PATH = re.compile(r"/(?:api|v1)(?:/|$)", re.IGNORECASE)
_HOSTPORT = re.compile(r"^(?:[A-Za-z0-9._~-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{0,5})?$")


def parse_ollama_host(host: str | None) -> str:
    """Normalise an ``OLLAMA_HOST`` value the way the official Ollama clients do.

    ``localhost`` -> ``http://localhost:11434``; ``https://h`` -> ``https://h:443``;
    a path prefix is kept and a trailing ``/`` dropped.
    """
    host = (host or "").strip()
    if not host:
        return DEFAULT_UPSTREAM
    if re.match(r"^https?//", host, re.IGNORECASE):
        fixed = host.replace("//", "://", 1)
        raise ValueError(f"upstream {host!r} is not a URL: did you mean {fixed!r}?")
    scheme, separator, hostport = host.partition("://")
    if separator and not hostport:
        raise ValueError(f"upstream has no host: {host!r}")
    if not hostport:
        scheme, hostport = "http", scheme
    elif scheme not in ("http", "https"):
        raise ValueError(f"upstream must be an http:// or https:// URL, got {host!r}")
    default_port = {"http": 80, "https": 443}[scheme] if "://" in host else 11434
    split = urlsplit(f"{scheme}://{hostport}")
    if not _HOSTPORT.match(split.netloc or "127.0.0.1"):
        raise ValueError(f"upstream is not a URL or a host: {host!r}")
    hostname = split.hostname or "127.0.0.1"
    try:
        port = split.port or default_port
    except ValueError as exc:
        raise ValueError(f"upstream has an invalid port: {host!r}") from exc
    if ":" in hostname:  # IPv6 literal
        hostname = f"[{hostname}]"
    path = split.path.rstrip("/")
    if _API_PATH.search(path):
        raise ValueError(
            f"upstream {host!r} has the path {path!r}: the proxy speaks to Ollama's root and "
            f"adds /api and /v1 itself; drop the {path!r}"
        )
    return f"{scheme}://{hostname}:{port}{path}"


__all__ = ["DEFAULT_UPSTREAM", "parse_ollama_host"]
