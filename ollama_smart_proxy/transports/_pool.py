"""A lean HTTP/1.1 connection pool for httpx, built for one job: streaming from Ollama.

Measured on the proxy's hot path (docs/performance.md): httpcore spends most of a busy proxy's
CPU walking its connection list, and aiohttp's general-purpose client costs about as much per
streamed chunk as everything else in the proxy. This pool does only what a proxy to one
server needs: keep-alive connections per origin, a request written in one ``write``, one
coarse idle timer per connection, and the body handed over in as few wake-ups as possible.

The bytes are parsed by llhttp (``httptools``, Node's parser, as uvicorn uses it), which
refuses what RFC 9112 refuses: conflicting or signed ``Content-Length``, bad chunk sizes,
invalid status lines and header names, bare LF, obs-fold. On top of it the pool keeps one
rule: a connection it has any doubt about is closed, never reused. 1xx responses are
skipped; a byte that arrives after a complete response, or while a connection is idle, or a
response not read to its end, closes the connection; a request is sent again only when it
is idempotent or provably never reached Ollama.

It speaks the httpx transport API (``httpx.Request`` in, ``httpx.Response`` out, httpx's
exceptions), for ``http://`` and ``https://`` (asyncio's TLS) upstreams.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import re
import ssl
from collections.abc import AsyncIterator
from typing import Any

import httptools
import httpx

_HIGH_WATER = 1024 * 1024  # pause reading from Ollama past this much unread body
MAX_HEAD_BYTES = 64 * 1024
_TOKEN = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_BAD_VALUE = re.compile(rb"[\x00\r\n]")
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS"})


class _Closed(Exception):
    """The connection closed (cleanly or not) before the response was complete."""


class _Timeout(Exception):
    pass


class _Poisoned(Exception):
    """Bytes after a complete response: the connection must not be reused."""


class _Connection(asyncio.Protocol):
    """One keep-alive connection; one request at a time."""

    def __init__(self, pool: _Pool) -> None:
        self.pool = pool
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reused = False
        self.active = False
        self.idle_since = 0.0
        self.writable = asyncio.Event()
        self.writable.set()
        self.watchdog: asyncio.TimerHandle | None = None
        self.idle_limit = 0.0
        self.wait_since = 0.0
        self._reset(True)

    def _reset(self, expect_body: bool) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.expect_body = expect_body
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_size = 0
        self.head_done = False
        self.informational = False
        self.until_close = False
        self.keep_alive = True
        self.head_waiter: asyncio.Future[None] | None = None
        self.body: collections.deque[bytes] = collections.deque()
        self.body_size = 0
        self.body_waiter: asyncio.Future[None] | None = None
        self.done = False
        self.error: BaseException | None = None
        self.paused = False
        self.waiting: asyncio.Future[None] | None = None

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.writable.set()  # a writer waiting for room learns the connection is gone
        self._stop_watchdog()
        self.pool.forget(self)
        if self.active and not self.done:
            if self.head_done and self.until_close and exc is None:
                self._finish()  # a body delimited by the end of the connection
            else:
                self._fail(_Closed(str(exc) if exc else "connection closed by Ollama"))

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def eof_received(self) -> bool | None:
        return None  # close the transport; connection_lost does the rest

    def data_received(self, data: bytes) -> None:
        if not self.active or self.done:
            # Bytes nobody asked for (while idle, or after the response): never reuse.
            self.keep_alive = False
            if not self.active:
                self.close()
            return
        self.wait_since = self.loop.time()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            cause = exc.__context__
            if self.done or isinstance(cause, _Poisoned):
                self.keep_alive = False
            elif self.error is None:
                reason = str(cause) if isinstance(cause, httpx.HTTPError) else str(exc)
                self._fail(httpx.RemoteProtocolError(f"invalid HTTP response: {reason}"))

    # -- llhttp callbacks ---------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.done:
            raise _Poisoned

    def on_status(self, status: bytes) -> None:
        self._count(len(status))

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.head_done:
            return  # a trailer: nothing a proxy to Ollama needs
        self._count(len(name) + len(value) + 4)
        self.headers.append((name.lower(), value))

    def _count(self, size: int) -> None:
        self.head_size += size
        if self.head_size > MAX_HEAD_BYTES:
            raise httpx.RemoteProtocolError(
                f"response head is larger than {MAX_HEAD_BYTES // 1024} KiB"
            )

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if status == 101:
            raise httpx.RemoteProtocolError("Ollama switched protocols (HTTP 101)")
        if 100 <= status < 200:
            # 1xx (RFC 9110 §15.2): informational, the real answer follows.
            self.informational = True
            self.headers = []
            self.head_size = 0
            return
        self.status = status
        self.head_done = True
        self.keep_alive = self.parser.should_keep_alive()
        framed = False
        for name, value in self.headers:
            if name == b"content-length" or (
                name == b"transfer-encoding"
                and value.rsplit(b",", 1)[-1].strip().lower() == b"chunked"
            ):
                framed = True
        no_body = not self.expect_body or status in (204, 304)
        self.until_close = not framed and not no_body
        if self.until_close:
            self.keep_alive = False
        if self.head_waiter is not None and not self.head_waiter.done():
            self.head_waiter.set_result(None)
        self.writable.set()  # an upload in progress stops: Ollama answered early
        if no_body and not self.expect_body:
            self._finish()  # HEAD: llhttp would wait for the length it announced

    def on_body(self, data: bytes) -> None:
        if self.done:
            raise _Poisoned  # a body after a HEAD answer
        self.body.append(data)
        self.body_size += len(data)
        if self.body_size > _HIGH_WATER and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self.informational:
            self.informational = False
            return
        if not self.done:
            self._finish()

    # -- state ------------------------------------------------------------------------

    def _finish(self) -> None:
        self.done = True
        self._wake()

    def _fail(self, error: BaseException) -> None:
        self.error = error
        self.done = True
        self.keep_alive = False
        if self.head_waiter is not None and not self.head_waiter.done():
            self.head_waiter.set_result(None)
        self.writable.set()
        self._wake()
        if self.transport is not None:
            self.transport.abort()

    def _wake(self) -> None:
        waiter = self.body_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- used by the transport ----------------------------------------------------------

    def begin(self, method: str) -> None:
        if self.reused:
            self._reset(method != "HEAD")
        else:
            self.expect_body = method != "HEAD"
        self.active = True
        self.wait_since = self.loop.time()

    async def read_head(self, idle: float | None) -> tuple[int, list[tuple[bytes, bytes]]]:
        while not self.head_done:
            if self.error is not None:
                raise self.error
            self.head_waiter = self.loop.create_future()
            await self._wait(self.head_waiter, idle)
        return self.status, self.headers

    async def read_body(self, idle: float | None) -> AsyncIterator[bytes]:
        while True:
            if self.body:
                if len(self.body) == 1:
                    piece = self.body.popleft()
                else:
                    piece = b"".join(self.body)
                    self.body.clear()
                self.body_size = 0
                if self.paused and self.transport is not None:
                    self.paused = False
                    self.transport.resume_reading()
                yield piece
                continue
            if self.error is not None:
                raise self.error
            if self.done:
                return
            self.body_waiter = self.loop.create_future()
            await self._wait(self.body_waiter, idle)

    async def _wait(self, waiter: asyncio.Future[None], idle: float | None) -> None:
        self.wait_since = self.loop.time()
        if idle is not None:
            self.waiting = waiter
            if self.watchdog is None:
                # One timer per connection, not per chunk: when it fires it times the wait
                # out, or sets itself for the current wait's deadline. It never fires while
                # nobody waits for Ollama (a slow client holding the stream is not Ollama's
                # silence), so it cannot spin.
                self.idle_limit = idle
                self.watchdog = self.loop.call_at(self.wait_since + idle, self._check_idle)
        try:
            await waiter
        finally:
            self.waiting = None

    def _check_idle(self) -> None:
        self.watchdog = None
        waiter = self.waiting
        if self.done or waiter is None or waiter.done():
            return
        deadline = self.wait_since + self.idle_limit
        if self.loop.time() >= deadline:
            waiter.set_exception(_Timeout(f"Ollama sent nothing for {self.idle_limit:g}s"))
        else:
            self.watchdog = self.loop.call_at(deadline, self._check_idle)

    def _stop_watchdog(self) -> None:
        if self.watchdog is not None:
            self.watchdog.cancel()
            self.watchdog = None

    def release(self) -> None:
        """Give the connection back to the pool, or close it if it cannot be reused."""
        self._stop_watchdog()
        self.active = False
        reusable = (
            self.done
            and self.error is None
            and self.keep_alive
            and not self.closed
            and not self.body
            and self.transport is not None
            and not self.transport.is_closing()
        )
        if reusable:
            self.reused = True
            self.pool.put_back(self)
        else:
            self.close()

    def close(self) -> None:
        self._stop_watchdog()
        self.keep_alive = False
        self.active = False
        if self.transport is not None and not self.closed:
            # abort, not close: a connection we give up on is done with at once (a TLS one
            # would otherwise wait for the peer's close_notify, outliving the loop).
            self.transport.abort()
        self.pool.forget(self)


class _Pool:
    """Keep-alive connections to one origin, at most ``limit`` open."""

    def __init__(
        self,
        host: str,
        port: int,
        tls: ssl.SSLContext | None,
        limit: int,
        keepalive: float,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.host = host
        self.port = port
        self.tls = tls
        self.limit = limit
        self.keepalive = keepalive
        self.loop = loop
        self.idle: collections.deque[_Connection] = collections.deque()
        self.open: set[_Connection] = set()
        self.waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    async def acquire(
        self, connect_timeout: float | None, pool_timeout: float | None
    ) -> _Connection:
        while True:
            now = self.loop.time()
            while self.idle:
                connection = self.idle.pop()  # most recently used: warmest, least likely stale
                transport = connection.transport
                if (
                    not connection.closed
                    and transport is not None
                    and not transport.is_closing()
                    and now - connection.idle_since < self.keepalive
                ):
                    return connection
                connection.close()
            if len(self.open) < self.limit:
                return await self._connect(connect_timeout)
            waiter = self.loop.create_future()
            self.waiters.append(waiter)
            try:
                await asyncio.wait_for(waiter, pool_timeout)
            except TimeoutError:
                raise httpx.PoolTimeout("no free connection to Ollama in time") from None
            except BaseException:
                if waiter.done() and not waiter.cancelled():
                    self._wake_one()  # we were handed a slot we will not use: pass it on
                raise

    async def _connect(self, connect_timeout: float | None) -> _Connection:
        connection = _Connection(self)
        self.open.add(connection)
        try:
            await asyncio.wait_for(
                self.loop.create_connection(
                    lambda: connection,
                    self.host,
                    self.port,
                    ssl=self.tls,
                    server_hostname=self.host if self.tls is not None else None,
                ),
                connect_timeout,
            )
        except TimeoutError:
            connection.close()
            raise httpx.ConnectTimeout(f"connecting to {self.host}:{self.port} timed out") from None
        except OSError as exc:
            connection.close()
            raise httpx.ConnectError(str(exc) or type(exc).__name__) from exc
        except BaseException:
            connection.close()  # cancelled while connecting: the slot is free again
            raise
        return connection

    def put_back(self, connection: _Connection) -> None:
        connection.idle_since = self.loop.time()
        self.idle.append(connection)
        self._wake_one()

    def forget(self, connection: _Connection) -> None:
        if connection in self.open:
            self.open.discard(connection)
            self._wake_one()
        with contextlib.suppress(ValueError):
            self.idle.remove(connection)

    def _wake_one(self) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def close(self) -> None:
        for connection in list(self.open):
            connection.close()
        self.idle.clear()


class HTTP11Transport(httpx.AsyncBaseTransport):
    """``HTTP11Transport(limits=..., ssl_context=None)``: the pool behind httpx's API."""

    def __init__(
        self, *, limits: httpx.Limits | None = None, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        self.limits = limits or httpx.Limits(max_connections=1024, keepalive_expiry=30.0)
        self._ssl_context = ssl_context
        self._pools: dict[tuple[str, str, int], _Pool] = {}

    def _pool(self, url: httpx.URL) -> _Pool:
        scheme = url.scheme
        if scheme not in ("http", "https"):
            raise httpx.UnsupportedProtocol(f"cannot speak {scheme}:// to Ollama")
        port = url.port or (443 if scheme == "https" else 80)
        key = (scheme, url.host, port)
        pool = self._pools.get(key)
        loop = asyncio.get_running_loop()
        if pool is None or pool.loop is not loop:
            tls = None
            if scheme == "https":
                tls = self._ssl_context or ssl.create_default_context()
            pool = self._pools[key] = _Pool(
                url.host,
                port,
                tls,
                self.limits.max_connections or 1024,
                self.limits.keepalive_expiry or 30.0,
                loop,
            )
        return pool

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeout: dict[str, Any] = request.extensions.get("timeout", {})
        pool = self._pool(request.url)
        try:
            content: bytes | None = request.content
        except httpx.RequestNotRead:
            # A body given whole as a ByteStream is sent whole; any other is streamed.
            stream = request.stream
            content = b"".join(stream) if isinstance(stream, httpx.ByteStream) else None
        head = _head(request, content)
        for attempt in (0, 1):
            connection = await pool.acquire(timeout.get("connect"), timeout.get("pool"))
            connection.begin(request.method)
            transport = connection.transport
            if transport is None or transport.is_closing():  # pragma: no cover - raced a close
                connection.close()
                continue
            try:
                if content is not None:
                    transport.write(head + content)
                else:
                    transport.write(head)
                    await _write_stream(connection, request, timeout.get("write"))
                status, headers = await connection.read_head(timeout.get("read"))
            except _Closed as exc:
                connection.close()
                if attempt == 0 and connection.reused and request.method in _IDEMPOTENT:
                    continue  # a kept-alive connection Ollama had closed: once more, fresh
                raise httpx.RemoteProtocolError(
                    f"Ollama closed the connection without answering ({exc})", request=request
                ) from exc
            except _Timeout as exc:
                connection.close()
                raise httpx.ReadTimeout(str(exc), request=request) from exc
            except BaseException:
                connection.close()
                raise
            return httpx.Response(
                status,
                headers=headers,
                stream=_Body(connection, timeout.get("read"), request),
                request=request,
                extensions={"http_version": b"HTTP/1.1"},
            )
        raise httpx.RemoteProtocolError("no usable connection to Ollama", request=request)

    async def aclose(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()


def _head(request: httpx.Request, content: bytes | None) -> bytes:
    """The request line and headers, validated: no header can smuggle a line break."""
    target = request.url.raw_path
    if _BAD_VALUE.search(target) or b" " in target:
        raise httpx.LocalProtocolError(f"invalid request target {target[:100]!r}")
    lines = [request.method.encode() + b" " + target + b" HTTP/1.1"]
    for name, value in request.headers.raw:
        lower = name.lower()
        if lower in (b"content-length", b"transfer-encoding", b"connection"):
            continue
        if not _TOKEN.match(name) or _BAD_VALUE.search(value):
            raise httpx.LocalProtocolError(f"invalid header {name[:100]!r}")
        lines.append(lower + b": " + value)
    if content is not None:
        lines.append(b"content-length: " + str(len(content)).encode())
    else:
        lines.append(b"transfer-encoding: chunked")
    return b"\r\n".join(lines) + b"\r\n\r\n"


async def _write_stream(
    connection: _Connection, request: httpx.Request, write_timeout: float | None
) -> None:
    """Write a streamed body, chunked, within the write timeout; stop as soon as Ollama
    answers (it may refuse an upload before reading it) or the connection is gone."""
    transport = connection.transport
    assert transport is not None
    stream = request.stream
    assert isinstance(stream, httpx.AsyncByteStream)
    try:
        async for piece in stream:
            if connection.head_done or connection.closed or connection.error is not None:
                return
            if piece:
                transport.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            if not connection.writable.is_set():
                try:
                    await asyncio.wait_for(connection.writable.wait(), write_timeout)
                except TimeoutError:
                    raise httpx.WriteTimeout(
                        f"Ollama read nothing of the upload for {write_timeout:g}s",
                        request=request,
                    ) from None
        if not (connection.head_done or connection.closed):
            transport.write(b"0\r\n\r\n")
    finally:
        await stream.aclose()


class _Body(httpx.AsyncByteStream):
    def __init__(
        self, connection: _Connection, timeout: float | None, request: httpx.Request
    ) -> None:
        self._connection = connection
        self._timeout = timeout
        self._request = request
        self._closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for piece in self._connection.read_body(self._timeout):
                yield piece
        except _Timeout as exc:
            raise httpx.ReadTimeout(str(exc), request=self._request) from exc
        except _Closed as exc:
            raise httpx.RemoteProtocolError(
                f"peer closed connection without sending complete message body ({exc})",
                request=self._request,
            ) from exc

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self._connection.release()


__all__ = ["MAX_HEAD_BYTES", "HTTP11Transport"]
