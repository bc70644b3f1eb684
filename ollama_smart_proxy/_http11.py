"""A lean HTTP/1.1 client transport for httpx, built for one job: streaming from Ollama.

Measured on the proxy's hot path (docs/performance.md): httpcore 1.0 spends most of a busy
proxy's CPU walking its connection list, and aiohttp's general-purpose client (cookie jars,
timers rescheduled on every chunk, a StreamReader per response) costs about as much per
streamed chunk as everything else in the proxy put together. This transport does only what
a proxy to one plain-HTTP server needs: a keep-alive pool per origin, a request written in
one ``write``, the response head parsed once, the body de-chunked in ``data_received`` and
handed over in as few wake-ups as possible, one coarse idle timer per connection.

It speaks the httpx transport API (``httpx.Request`` in, ``httpx.Response`` out, httpx's
exceptions), so the proxy keeps httpx's API and anyone can swap transports.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import AsyncIterator

import httpx

_HIGH_WATER = 1024 * 1024  # pause reading from Ollama past this much unread body


class _Closed(Exception):
    """The connection closed (cleanly or not) before the response was complete."""


class _Connection(asyncio.Protocol):
    """One keep-alive connection; one request at a time."""

    def __init__(self, pool: _Pool) -> None:
        self.pool = pool
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reused = False
        self.idle_since = 0.0
        self.writable = asyncio.Event()
        self.writable.set()
        self._reset()

    def _reset(self) -> None:
        self.buffer = bytearray()
        self.head: tuple[int, list[tuple[bytes, bytes]]] | None = None
        self.head_waiter: asyncio.Future[None] | None = None
        self.body: collections.deque[bytes] = collections.deque()
        self.body_size = 0
        self.body_waiter: asyncio.Future[None] | None = None
        self.framing = ""  # "length", "chunked", "close" or "none"
        self.remaining = 0
        self.chunk_state = 0  # 0: size line, 1: data, 2: CRLF after data, 3: trailer
        self.done = False
        self.error: BaseException | None = None
        self.expect_body = True
        self.keep_alive = True
        self.paused = False
        self.last_activity = self.loop.time()
        self.watchdog: asyncio.TimerHandle | None = None
        self.idle_limit = 0.0

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._stop_watchdog()
        self.pool.forget(self)
        if not self.done:
            if self.framing == "close" and self.head is not None and exc is None:
                self._finish()
            else:
                self._fail(_Closed(str(exc) if exc else "connection closed by Ollama"))

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def eof_received(self) -> bool | None:
        return None  # close the transport; connection_lost does the rest

    def data_received(self, data: bytes) -> None:
        self.last_activity = self.loop.time()
        if self.head is None:
            self.buffer += data
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > 65536:
                    self._fail(httpx.RemoteProtocolError("response head is too large"))
                return
            self._parse_head(bytes(self.buffer[:end]))
            data = bytes(self.buffer[end + 4 :])
            self.buffer = bytearray()
            if self.head_waiter is not None and not self.head_waiter.done():
                self.head_waiter.set_result(None)
            if self.done or not data:
                return
        if self.framing == "chunked":
            self._dechunk(data)
        elif self.framing == "length":
            piece = data[: self.remaining]
            self.remaining -= len(piece)
            self._push(piece)
            if self.remaining == 0:
                self._finish()
        elif self.framing == "close":
            self._push(data)

    def _parse_head(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        try:
            status = int(lines[0].split(b" ", 2)[1])
        except (IndexError, ValueError):
            self._fail(httpx.RemoteProtocolError(f"malformed status line: {lines[0][:100]!r}"))
            return
        headers: list[tuple[bytes, bytes]] = []
        length: int | None = None
        chunked = False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip()
            value = value.strip()
            headers.append((name, value))
            lower = name.lower()
            if lower == b"content-length":
                length = int(value)
            elif lower == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif lower == b"connection" and value.lower() == b"close":
                self.keep_alive = False
        self.head = (status, headers)
        if not self.expect_body or status in (204, 304) or 100 <= status < 200:
            self.framing = "none"
            self._finish()
        elif chunked:
            self.framing = "chunked"
        elif length is not None:
            self.framing = "length"
            self.remaining = length
            if length == 0:
                self._finish()
        else:
            self.framing = "close"
            self.keep_alive = False

    def _dechunk(self, data: bytes) -> None:
        pieces: list[bytes] = []
        view = self.buffer + data if self.buffer else data
        self.buffer = bytearray()
        pos = 0
        size = len(view)
        while pos < size:
            state = self.chunk_state
            if state == 1:
                take = min(self.remaining, size - pos)
                pieces.append(bytes(view[pos : pos + take]))
                pos += take
                self.remaining -= take
                if self.remaining == 0:
                    self.chunk_state = 2
            elif state == 0 or state == 2 or state == 3:
                end = view.find(b"\r\n", pos)
                if end < 0:
                    self.buffer = bytearray(view[pos:])
                    break
                line = view[pos:end]
                pos = end + 2
                if state == 2:
                    self.chunk_state = 0
                elif state == 3:
                    if not line:  # the empty line after the last chunk (and trailers)
                        self._push_many(pieces)
                        self._finish()
                        return
                else:
                    try:
                        chunk_size = int(bytes(line).split(b";", 1)[0], 16)
                    except ValueError:
                        self._fail(httpx.RemoteProtocolError("malformed chunk size"))
                        return
                    if chunk_size == 0:
                        self.chunk_state = 3
                    else:
                        self.remaining = chunk_size
                        self.chunk_state = 1
        self._push_many(pieces)

    def _push_many(self, pieces: list[bytes]) -> None:
        if len(pieces) == 1:
            self._push(pieces[0])
        elif pieces:
            self._push(b"".join(pieces))

    def _push(self, piece: bytes) -> None:
        if not piece:
            return
        self.body.append(piece)
        self.body_size += len(piece)
        if self.body_size > _HIGH_WATER and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def _finish(self) -> None:
        self.done = True
        self._wake()

    def _fail(self, error: BaseException) -> None:
        self.error = error
        self.done = True
        self.keep_alive = False
        if self.head_waiter is not None and not self.head_waiter.done():
            self.head_waiter.set_result(None)
        self._wake()
        if self.transport is not None:
            self.transport.close()

    def _wake(self) -> None:
        waiter = self.body_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- used by the transport ----------------------------------------------------------

    async def read_head(self, idle: float | None) -> tuple[int, list[tuple[bytes, bytes]]]:
        while self.head is None:
            if self.error is not None:
                raise self.error
            self.head_waiter = self.loop.create_future()
            await self._wait(self.head_waiter, idle)
        return self.head

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
        if idle is not None and self.watchdog is None:
            # One timer per request, not per chunk: when it fires it looks at the last byte
            # seen and either times the wait out or sets itself again.
            self.idle_limit = idle
            self.watchdog = self.loop.call_at(self.last_activity + idle, self._check_idle)
        await waiter

    def _check_idle(self) -> None:
        self.watchdog = None
        waiter = self.body_waiter if self.head is not None else self.head_waiter
        if self.done or waiter is None or waiter.done():
            if not self.done:  # a chunk is being handled: look again later
                self.watchdog = self.loop.call_at(
                    self.last_activity + self.idle_limit, self._check_idle
                )
            return
        if self.loop.time() - self.last_activity >= self.idle_limit:
            waiter.set_exception(_Timeout(f"Ollama sent nothing for {self.idle_limit:g}s"))
        else:
            self.watchdog = self.loop.call_at(
                self.last_activity + self.idle_limit, self._check_idle
            )

    def _stop_watchdog(self) -> None:
        if self.watchdog is not None:
            self.watchdog.cancel()
            self.watchdog = None

    def release(self) -> None:
        """Give the connection back to the pool, or close it if it cannot be reused."""
        self._stop_watchdog()
        reusable = self.done and self.error is None and self.keep_alive and not self.closed
        if reusable and not self.body:
            self._reset()
            self.reused = True
            self.pool.put_back(self)
        else:
            self.close()

    def close(self) -> None:
        self._stop_watchdog()
        self.keep_alive = False
        if self.transport is not None and not self.closed:
            self.transport.close()
        self.pool.forget(self)


class _Timeout(Exception):
    pass


class _Pool:
    """Keep-alive connections to one origin, at most ``limit`` open."""

    def __init__(
        self, host: str, port: int, limit: int, keepalive: float, loop: asyncio.AbstractEventLoop
    ) -> None:
        self.host = host
        self.port = port
        self.limit = limit
        self.keepalive = keepalive
        self.loop = loop
        self.idle: collections.deque[_Connection] = collections.deque()
        self.open: set[_Connection] = set()
        self.waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    async def acquire(
        self, connect_timeout: float | None, pool_timeout: float | None
    ) -> _Connection:
        now = time.monotonic()
        while self.idle:
            connection = self.idle.pop()  # most recently used: warmest, least likely stale
            if not connection.closed and now - connection.idle_since < self.keepalive:
                return connection
            connection.close()
        while len(self.open) >= self.limit:
            waiter = self.loop.create_future()
            self.waiters.append(waiter)
            try:
                await asyncio.wait_for(waiter, pool_timeout)
            except TimeoutError:
                raise httpx.PoolTimeout("no free connection to Ollama in time") from None
            if self.idle:
                return await self.acquire(connect_timeout, pool_timeout)
        connection = _Connection(self)
        self.open.add(connection)
        try:
            await asyncio.wait_for(
                self.loop.create_connection(lambda: connection, self.host, self.port),
                connect_timeout,
            )
        except TimeoutError:
            self.forget(connection)
            raise httpx.ConnectTimeout(f"connecting to {self.host}:{self.port} timed out") from None
        except OSError as exc:
            self.forget(connection)
            raise httpx.ConnectError(str(exc) or type(exc).__name__) from exc
        return connection

    def put_back(self, connection: _Connection) -> None:
        connection.idle_since = time.monotonic()
        self.idle.append(connection)
        self._wake_one()

    def forget(self, connection: _Connection) -> None:
        if connection in self.open:
            self.open.discard(connection)
            self._wake_one()

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
    """``httpx.AsyncClient(transport=HTTP11Transport(limits=...))``, plain HTTP only."""

    def __init__(self, *, limits: httpx.Limits | None = None) -> None:
        self.limits = limits or httpx.Limits(max_connections=1024, keepalive_expiry=30.0)
        self._pools: dict[tuple[str, int], _Pool] = {}

    def _pool(self, url: httpx.URL) -> _Pool:
        if url.scheme != "http":
            raise httpx.UnsupportedProtocol(
                f"this transport speaks plain http only, not {url.scheme}:// "
                "(set OSP_UPSTREAM_TRANSPORT=aiohttp or httpx for TLS)"
            )
        key = (url.host, url.port or 80)
        pool = self._pools.get(key)
        if pool is None or pool.loop is not asyncio.get_running_loop():
            pool = self._pools[key] = _Pool(
                url.host,
                url.port or 80,
                self.limits.max_connections or 1024,
                self.limits.keepalive_expiry or 30.0,
                asyncio.get_running_loop(),
            )
        return pool

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeout = request.extensions.get("timeout", {})
        pool = self._pool(request.url)
        try:
            content: bytes | None = request.content
        except httpx.RequestNotRead:
            content = None
        head = self._head(request, content)
        for attempt in (0, 1):
            connection = await pool.acquire(timeout.get("connect"), timeout.get("pool"))
            connection.expect_body = request.method != "HEAD"
            transport = connection.transport
            assert transport is not None
            connection.last_activity = connection.loop.time()
            try:
                if content is not None:
                    transport.write(head + content)
                else:
                    transport.write(head)
                    await self._write_stream(connection, request)
                status, headers = await connection.read_head(timeout.get("read"))
            except _Closed as exc:
                connection.close()
                if attempt == 0 and connection.reused and content is not None:
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
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def _head(request: httpx.Request, content: bytes | None) -> bytes:
        url = request.url
        target = url.raw_path
        lines = [request.method.encode() + b" " + target + b" HTTP/1.1"]
        for name, value in request.headers.raw:
            lower = name.lower()
            if lower in (b"content-length", b"transfer-encoding", b"connection"):
                continue
            lines.append(name + b": " + value)
        if content is not None:
            lines.append(b"content-length: " + str(len(content)).encode())
        else:
            lines.append(b"transfer-encoding: chunked")
        return b"\r\n".join(lines) + b"\r\n\r\n"

    @staticmethod
    async def _write_stream(connection: _Connection, request: httpx.Request) -> None:
        transport = connection.transport
        assert transport is not None
        async for piece in request.stream:  # type: ignore[union-attr]
            if piece:
                transport.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                await connection.writable.wait()  # flow control for big uploads
        transport.write(b"0\r\n\r\n")

    async def aclose(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()


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
