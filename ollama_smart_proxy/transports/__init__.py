"""Upstream transports: the connection pool to Ollama, behind httpx's transport API.

:func:`create_transport` makes the proxy's pool (any httpx transport can be injected
instead), and :func:`map_transport_errors` is the one place where a transport's exceptions
become the proxy's.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from contextlib import contextmanager

import httpx

from ..errors import RequestError, UpstreamError, UpstreamTimeout
from ._pool import MAX_HEAD_BYTES, HTTP11Transport


def upstream_limits(max_connections: int, keepalive_expiry: float = 30.0) -> httpx.Limits:
    """The upstream pool's limits: sized by the caller, never httpx's default of 100."""
    return httpx.Limits(
        max_connections=max_connections,
        max_keepalive_connections=max_connections,
        keepalive_expiry=keepalive_expiry,
    )


def create_transport(
    *, limits: httpx.Limits | None = None, ssl_context: ssl.SSLContext | None = None
) -> HTTP11Transport:
    """The proxy's transport to Ollama: its own pool on llhttp, for http and https.

    httpcore's pool (httpx's default) and aiohttp's are not offered: both fail the framing
    conformance suite (``tests/integration/test_transport_conformance.py``), httpcore by
    answering a request with bytes left over from the previous one.
    """
    return HTTP11Transport(limits=limits or upstream_limits(1024), ssl_context=ssl_context)


@contextmanager
def map_transport_errors(
    upstream: str, read_timeout: float | None, *, streaming: bool = False
) -> Iterator[None]:
    """Turn a transport's exceptions into the proxy's: 504 for a timeout, 502 for the rest,
    400 for a request that cannot be written. ``streaming``: the response had begun."""
    try:
        yield
    except httpx.PoolTimeout as exc:
        error: UpstreamError = UpstreamTimeout(
            f"no free connection to Ollama at {upstream} in time "
            "(raise OSP_UPSTREAM_MAX_CONNECTIONS, or bound the load with OSP_MAX_CONCURRENT)"
        )
        error.unsent = True
        raise error from exc
    except httpx.ConnectTimeout as exc:
        error = UpstreamTimeout(f"cannot connect to Ollama at {upstream}: timed out")
        error.unsent = True
        raise error from exc
    except httpx.TimeoutException as exc:
        if streaming:
            message = f"Ollama sent nothing for {read_timeout:g}s; the stream was closed"
        else:
            message = (
                f"Ollama at {upstream} did not answer within {read_timeout:g}s "
                f"({type(exc).__name__})"
            )
        raise UpstreamTimeout(message) from exc
    except httpx.LocalProtocolError as exc:
        raise RequestError(f"the request cannot be forwarded: {exc}") from exc
    except httpx.HTTPError as exc:
        reason = str(exc) or type(exc).__name__
        if streaming:
            message = f"Ollama closed the stream early: {reason}"
        elif isinstance(exc, httpx.RemoteProtocolError):
            message = f"bad answer from Ollama at {upstream}: {reason}"
        else:
            message = f"cannot reach Ollama at {upstream}: {reason}"
        error = UpstreamError(message)
        error.unsent = not streaming and isinstance(exc, httpx.ConnectError)
        raise error from exc


__all__ = [
    "MAX_HEAD_BYTES",
    "HTTP11Transport",
    "create_transport",
    "map_transport_errors",
    "upstream_limits",
]
