"""``OllamaUpstream``: the terminal ASGI layer that streams requests to one Ollama server."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
from starlette._utils import get_route_path

from ._aiohttp import AiohttpTransport
from ._http11 import HTTP11Transport
from ._streaming import HOP_BY_HOP, ResponseWriter, response_headers, run_until_disconnect
from .encoders import error_line
from .errors import (
    ProxyError,
    UpstreamError,
    UpstreamTimeout,
    dialect_for_path,
    send_proxy_error,
)
from .exchange import ClientDisconnected, get_exchange, read_body
from .settings import Settings
from .types import Receive, Scope, Send

logger = logging.getLogger("ollama_smart_proxy.upstream")

#: Request headers never forwarded: hop-by-hop ones, ``host`` (a loopback Ollama answers
#: 403 to a public Host; httpx writes the upstream's own), and the ones httpx recomputes.
DROP_REQUEST_HEADERS = HOP_BY_HOP | {b"host", b"content-length", b"accept-encoding", b"expect"}

#: Paths whose bodies are streamed upstream rather than read whole (model blobs are GiBs).
STREAMED_UPLOADS = ("/api/blobs/",)


def upstream_limits(settings: Settings) -> httpx.Limits:
    """The upstream pool: sized from settings, never httpx's default of 100."""
    return httpx.Limits(
        max_connections=settings.upstream_max_connections,
        max_keepalive_connections=settings.upstream_max_connections,
        keepalive_expiry=30.0,
    )


def upstream_timeout(settings: Settings) -> httpx.Timeout:
    return httpx.Timeout(
        connect=settings.upstream_connect_timeout,
        read=settings.upstream_timeout,
        write=settings.upstream_timeout,
        pool=settings.upstream_timeout,
    )


def create_transport(settings: Settings) -> httpx.AsyncBaseTransport:
    """The transport chosen by ``upstream_transport``: aiohttp's pool (default) or httpcore's."""
    limits = upstream_limits(settings)
    if settings.upstream_transport == "http11" and settings.upstream.startswith("http://"):
        return HTTP11Transport(limits=limits)
    if settings.upstream_transport in ("aiohttp", "http11"):
        return AiohttpTransport(limits=limits)
    return httpx.AsyncHTTPTransport(limits=limits, trust_env=False)


def create_client(
    settings: Settings, transport: httpx.AsyncBaseTransport | None = None
) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` for the upstream, as the proxy makes its own."""
    return httpx.AsyncClient(
        base_url=settings.upstream,
        timeout=upstream_timeout(settings),
        transport=transport or create_transport(settings),
        follow_redirects=False,
        trust_env=False,
    )


def forward_headers(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Request headers to send upstream: no hop-by-hop ones, nor any named in ``Connection``."""
    drop = DROP_REQUEST_HEADERS
    for key, value in headers:
        if key == b"connection":
            drop = drop | {token.strip().lower() for token in value.split(b",")}
    return [(key, value) for key, value in headers if key not in drop]


class OllamaUpstream:
    """Forward a request to Ollama and stream the answer back, chunk by chunk.

    With an exchange in the scope, the exchange's request is serialised once and the
    response runs through its transforms and encoder; otherwise bytes pass both ways
    untouched (the fast path). The client is injectable; by default one is created lazily
    from ``settings`` and closed by :meth:`aclose`.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.settings = settings or Settings()
        self._client = client
        self._owns_client = client is None
        # With its own client the proxy calls the transport directly: httpx's client layer
        # (auth, redirects, cookie jar, hooks) has no business in a proxy and costs per request.
        self._transport: httpx.AsyncBaseTransport | None = None
        self._base = self.settings.upstream
        self._urls: dict[tuple[str, bytes], httpx.URL] = {}
        self._timeout = upstream_timeout(self.settings).as_dict()

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None or (self._client.is_closed and self._owns_client):
            self._transport = create_transport(self.settings)
            self._client = create_client(self.settings, self._transport)
        return self._client

    async def aclose(self) -> None:
        if self._client is not None and self._owns_client:
            await self._client.aclose()
            self._client = None
            self._transport = None

    def _request(
        self, method: str, path: str, query: bytes, headers: list[tuple[bytes, bytes]], content: Any
    ) -> httpx.Request:
        client = self.client
        if self._transport is None:
            return client.build_request(
                method, httpx.URL(path=path, query=query), headers=headers, content=content
            )
        url = self._urls.get((path, query))
        if url is None:  # parsing a URL costs httpx ~30 µs; a proxy sees few distinct ones
            if len(self._urls) > 512:
                self._urls.clear()
            url = httpx.URL(self._base + path + ("?" + query.decode("latin-1") if query else ""))
            self._urls[path, query] = url
        headers.append((b"host", client.base_url.netloc))
        return httpx.Request(
            method, url, headers=headers, content=content, extensions={"timeout": self._timeout}
        )

    async def _send(self, request: httpx.Request) -> httpx.Response:
        if self._transport is None:
            return await self.client.send(request, stream=True)
        return await self._transport.handle_async_request(request)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # pragma: no cover - the proxy routes only http here
            raise RuntimeError("OllamaUpstream serves only HTTP")
        path = get_route_path(scope)
        exchange = get_exchange(scope)
        dialect = exchange.dialect if exchange is not None else dialect_for_path(path)
        try:
            if exchange is not None:
                content: bytes | AsyncIterator[bytes] = exchange.body()
                exchange.response_handled = True
            elif path.startswith(STREAMED_UPLOADS):
                content = _stream_body(receive)
            else:
                content = await read_body(scope, receive, self.settings.max_body_bytes)
        except ClientDisconnected:
            return
        except ProxyError as exc:
            await send_proxy_error(send, dialect, exc)
            return

        headers = forward_headers(scope["headers"])
        headers.append((b"accept-encoding", b"identity"))
        request = self._request(
            scope["method"], path, scope.get("query_string", b""), headers, content
        )
        # The fast path: nothing transforms the response, so its bytes go out untouched.
        fast = exchange is None or (not exchange.transforms and exchange.encoder is None)
        writer = None if fast else ResponseWriter(exchange, send, self.settings.max_line_bytes)  # type: ignore[arg-type]
        state = _State()

        async def forward() -> None:
            try:
                response = await self._send(request)
            except httpx.TimeoutException as exc:
                raise UpstreamTimeout(
                    f"Ollama at {self.settings.upstream} did not answer within "
                    f"{self.settings.upstream_timeout:g}s ({type(exc).__name__})"
                ) from exc
            except httpx.HTTPError as exc:
                raise UpstreamError(
                    f"cannot reach Ollama at {self.settings.upstream}: {exc or type(exc).__name__}"
                ) from exc
            try:
                if writer is None:
                    await _pass_through(response, send, state)
                else:
                    await writer.start(response.status_code, response.headers.raw)
                    async for data in response.stream:  # type: ignore[union-attr]
                        await writer.feed(data)
                    await writer.end()
            finally:
                await response.aclose()

        try:
            if isinstance(content, bytes):
                left = await run_until_disconnect(
                    receive,
                    forward,
                    lambda: state.finished or (writer is not None and writer.finished),
                )
            else:
                left = False
                await forward()
        except ProxyError as exc:
            await self._fail(exc, send, dialect, writer, state)
        except httpx.HTTPError as exc:
            message = f"Ollama closed the stream early: {exc or type(exc).__name__}"
            if isinstance(exc, httpx.TimeoutException):
                message = (
                    f"Ollama sent nothing for {self.settings.upstream_timeout:g}s; "
                    "the stream was closed"
                )
            await self._fail(UpstreamError(message), send, dialect, writer, state)
        else:
            if left:
                logger.debug("client left %s %s; upstream request closed", scope["method"], path)

    async def _fail(
        self,
        exc: ProxyError,
        send: Send,
        dialect: str,
        writer: ResponseWriter | None,
        state: _State,
    ) -> None:
        if writer is not None:
            await writer.fail(exc.message, exc.status_code)
        elif state.started:
            # Native pass-through: end the stream as Ollama does, with an error line.
            if not state.finished:
                body = b"" if state.framed else error_line(exc.message)
                await send({"type": "http.response.body", "body": body, "more_body": False})
        else:
            await send_proxy_error(send, "openai" if dialect == "openai" else "ollama", exc)


class _State:
    __slots__ = ("finished", "framed", "started")

    def __init__(self) -> None:
        self.started = False
        self.finished = False
        #: The body has a Content-Length: an error line cannot be appended to it.
        self.framed = False


async def _pass_through(response: httpx.Response, send: Send, state: _State) -> None:
    """The fast path: status, headers and body bytes go to the client untouched."""
    await send(
        {
            "type": "http.response.start",
            "status": response.status_code,
            "headers": response_headers(response.headers.raw),
        }
    )
    state.started = True
    state.framed = "content-length" in response.headers
    async for data in response.stream:  # type: ignore[union-attr]
        await send({"type": "http.response.body", "body": data, "more_body": True})
    state.finished = True
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _stream_body(receive: Receive) -> AsyncIterator[bytes]:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise UpstreamError("client disconnected during upload")
        yield message.get("body", b"")
        if not message.get("more_body", False):
            return
