"""``OllamaUpstream``: the terminal ASGI layer that streams requests to one Ollama server.

It speaks plain Ollama in both directions: the request body it reads from ``receive`` goes
upstream (bounded by ``max_body_bytes``, or streamed for model blobs), and the answer comes
back as Ollama sent it, status, headers and bytes, chunk by chunk. It knows nothing of
exchanges, dialects or agents: a failure is raised as a
:class:`~ollama_smart_proxy.errors.ProxyError` for the error boundary.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence

import httpx

from ._http import DEFAULT_MAX_BODY, header, read_body
from ._urls import DEFAULT_UPSTREAM, parse_ollama_host
from .errors import ClientDisconnected, LoopDetected
from .routing import route_of
from .transports import create_transport, map_transport_errors, upstream_limits
from .types import Message, Receive, Scope, Send

logger = logging.getLogger("ollama_smart_proxy.upstream")

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
#: Request headers never forwarded: hop-by-hop ones; ``host`` (a loopback Ollama answers
#: 403 to a public Host); the ones recomputed for the body; and the client's credentials,
#: which are the proxy's business, never Ollama's.
DROP_REQUEST_HEADERS = HOP_BY_HOP | {
    b"host",
    b"content-length",
    b"accept-encoding",
    b"expect",
    b"authorization",
    b"x-api-key",
    b"cookie",
}
#: Upstream response headers never copied to the client: hop-by-hop ones, and the ones
#: the server in front of us writes itself.
DROP_RESPONSE_HEADERS = HOP_BY_HOP | {b"date", b"server"}


def _without(
    headers: Iterable[tuple[bytes, bytes]], drop: frozenset[bytes]
) -> list[tuple[bytes, bytes]]:
    """``headers`` (names lower-cased) without ``drop`` and without any named in their own
    ``Connection`` header (hop-by-hop by declaration)."""
    items = [(key.lower(), value) for key, value in headers]
    named = {
        token.strip().lower()
        for key, value in items
        if key == b"connection"
        for token in value.split(b",")
    }
    if named:
        drop = drop | named
    return [(key, value) for key, value in items if key not in drop]


def forward_headers(headers: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Request headers to send upstream."""
    return _without(headers, DROP_REQUEST_HEADERS)


def response_headers(headers: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Upstream response headers to send to the client."""
    return _without(headers, DROP_RESPONSE_HEADERS)


class OllamaUpstream:
    """Forward a request to Ollama and stream the answer back, chunk by chunk.

    ``OllamaUpstream(url, *, timeout=300, connect_timeout=5, limits=None,
    max_body_bytes=64 MiB, transport=None, headers=())``: ``timeout`` is the longest silence
    accepted from Ollama (before the first byte and between chunks); ``transport`` is any
    httpx transport (by default the proxy's own pool, sized by ``limits``); ``headers`` are
    added to every upstream request (an upstream token). The transport is opened lazily and
    closed by :meth:`aclose`.
    """

    def __init__(
        self,
        url: str = DEFAULT_UPSTREAM,
        *,
        timeout: float = 300.0,
        connect_timeout: float = 5.0,
        limits: httpx.Limits | None = None,
        max_body_bytes: int = DEFAULT_MAX_BODY,
        transport: httpx.AsyncBaseTransport | None = None,
        headers: Sequence[tuple[str, str]] = (),
    ) -> None:
        if timeout <= 0 or connect_timeout <= 0:
            raise ValueError("timeouts must be positive")
        if max_body_bytes <= 0:
            raise ValueError("max_body_bytes must be positive")
        self.url = parse_ollama_host(url)
        self.timeout = timeout
        self.max_body_bytes = max_body_bytes
        self._limits = limits or upstream_limits(1024)
        self._transport = transport
        self._timeouts = {
            "connect": connect_timeout,
            "read": timeout,
            "write": timeout,
            "pool": timeout,
        }
        self._host = httpx.URL(self.url).netloc
        self._extra = [(k.lower().encode(), v.encode()) for k, v in headers]
        # A Via token of this instance: a request that comes back with it is a loop.
        self._via = f"1.1 osp-{secrets.token_hex(6)}".encode()
        self._urls: dict[bytes, httpx.URL] = {}

    @property
    def transport(self) -> httpx.AsyncBaseTransport:
        """The transport to Ollama (created on first use)."""
        if self._transport is None:
            self._transport = create_transport(limits=self._limits)
        return self._transport

    async def aclose(self) -> None:
        """Close the transport and its connections."""
        if self._transport is not None:
            await self._transport.aclose()

    def _url(self, target: bytes) -> httpx.URL:
        url = self._urls.get(target)
        if url is None:  # parsing a URL costs httpx ~30 µs; a proxy sees few distinct ones
            if len(self._urls) > 512:
                self._urls.clear()
            url = self._urls[target] = httpx.URL(self.url + target.decode("latin-1"))
        return url

    def _request(
        self,
        method: str,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        content: bytes | AsyncIterator[bytes],
    ) -> httpx.Request:
        headers.append((b"host", self._host))
        headers.append((b"accept-encoding", b"identity"))
        headers += self._extra
        if isinstance(content, bytes):
            # A ByteStream and our own Content-Length: httpx's content= path costs ~15 µs
            # more a request (it re-encodes and re-checks what we already know).
            headers.append((b"content-length", str(len(content)).encode()))
            stream: httpx.AsyncByteStream | httpx.ByteStream = httpx.ByteStream(content)
            return httpx.Request(
                method,
                self._url(target),
                headers=headers,
                stream=stream,
                extensions={"timeout": self._timeouts},
            )
        return httpx.Request(
            method,
            self._url(target),
            headers=headers,
            content=content,
            extensions={"timeout": self._timeouts},
        )

    async def fetch(self, method: str, path: str, limit: float | None = None) -> tuple[int, bytes]:
        """A small request of the proxy's own (``GET /api/version``): status and body, within
        ``limit`` seconds (else the upstream timeout)."""
        request = self._request(method, path.encode(), [], b"")
        if limit is not None:
            request.extensions["timeout"] = dict.fromkeys(self._timeouts, limit)
        with map_transport_errors(self.url, limit or self.timeout):
            response = await self.transport.handle_async_request(request)
            try:
                body = b"".join([piece async for piece in response.stream])  # type: ignore[union-attr]
            finally:
                await response.aclose()
        return response.status_code, body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # pragma: no cover - the proxy routes only http here
            raise RuntimeError("OllamaUpstream serves only HTTP")
        via = header(scope, b"via")
        if via is not None and self._via in via:
            raise LoopDetected(
                f"this request came back to the proxy that sent it: the upstream "
                f"({self.url}) is the proxy itself. Point OSP_UPSTREAM (or OLLAMA_HOST, which "
                "the proxy also reads) at Ollama, not at the proxy"
            )
        route = route_of(scope)
        uploaded: asyncio.Event | None = None
        if route.kind == "blobs":  # model files are GiBs: streamed, not read whole
            uploaded = asyncio.Event()
            content: bytes | AsyncIterator[bytes] = _upload(receive, uploaded)
        else:
            content = await read_body(scope, receive, self.max_body_bytes)
        headers = forward_headers(scope["headers"])
        headers.append((b"via", via + b", " + self._via if via else self._via))
        request = self._request(
            scope["method"], route.target(scope.get("query_string", b"")), headers, content
        )
        transport = self.transport
        finished = False

        async def forward() -> None:
            nonlocal finished
            with map_transport_errors(self.url, self.timeout):
                response = await transport.handle_async_request(request)
            try:
                await send(
                    {
                        "type": "http.response.start",
                        "status": response.status_code,
                        "headers": response_headers(response.headers.raw),
                    }
                )
                with map_transport_errors(self.url, self.timeout, streaming=True):
                    async for data in response.stream:  # type: ignore[union-attr]
                        await send({"type": "http.response.body", "body": data, "more_body": True})
                finished = True
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            finally:
                await response.aclose()

        left = await run_until_disconnect(receive, forward, lambda: finished, uploaded)
        if left:
            logger.debug("client left %s %s; upstream request closed", scope["method"], route.path)


async def _upload(receive: Receive, done: asyncio.Event) -> AsyncIterator[bytes]:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected
        yield message.get("body", b"")
        if not message.get("more_body", False):
            done.set()
            return


async def run_until_disconnect(
    receive: Receive,
    func: Callable[[], Awaitable[None]],
    finished: Callable[[], bool] = lambda: False,
    body_read: asyncio.Event | None = None,
) -> bool:
    """Run ``func``, cancelling it as soon as the client disconnects.

    Returns ``True`` if the client left. The watcher reads ``receive`` only once the body
    has been read (``body_read``, for a body streamed by ``func`` itself). ``func`` runs in a
    task of its own that a watcher task cancels on ``http.disconnect``: two plain asyncio
    tasks cost ~17 µs a request, an anyio task group ~100 µs (measured; see
    docs/performance.md). Once ``finished()`` is true (the last byte went to the client) a
    disconnect no longer cancels: servers report one as soon as the response is complete,
    and the upstream connection must then be released for reuse, not dropped.
    """
    inner = asyncio.ensure_future(func())
    left = False

    async def watch() -> None:
        nonlocal left
        if body_read is not None:
            await body_read.wait()
        while True:
            message: Message = await receive()
            if message["type"] == "http.disconnect":
                if not inner.done() and not finished():
                    left = True
                    inner.cancel()
                return

    watcher = asyncio.ensure_future(watch())
    try:
        await inner  # if this task is cancelled, so is ``inner``
    except asyncio.CancelledError:
        if left and inner.cancelled():
            return True
        raise
    finally:
        watcher.cancel()
    return left


__all__ = [
    "DROP_REQUEST_HEADERS",
    "DROP_RESPONSE_HEADERS",
    "HOP_BY_HOP",
    "OllamaUpstream",
    "forward_headers",
    "response_headers",
    "run_until_disconnect",
]
