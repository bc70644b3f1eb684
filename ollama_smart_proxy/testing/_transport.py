"""An httpx transport that calls an ASGI app in-process *and streams* its response.

httpx's own ``ASGITransport`` runs the app to completion and buffers the whole body, so
it can show neither streaming nor a client that leaves early. This one runs the app in
a task, hands body chunks over one at a time (backpressure included), and tells the app
``http.disconnect`` when the response is closed early.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx

from ..types import Message

_END = object()


class StreamingASGITransport(httpx.AsyncBaseTransport):
    """``httpx.AsyncClient(transport=StreamingASGITransport(app))``: asyncio only."""

    def __init__(self, app: Any, client: tuple[str, int] = ("127.0.0.1", 12345)) -> None:
        self.app = app
        self.client = client

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = b"".join([chunk async for chunk in request.stream])  # type: ignore[union-attr]
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": request.method,
            "headers": [(k.lower(), v) for k, v in request.headers.raw],
            "scheme": request.url.scheme,
            "path": request.url.path,
            "raw_path": request.url.raw_path.split(b"?")[0],
            "query_string": request.url.query,
            "server": (request.url.host, request.url.port or 80),
            "client": self.client,
            "root_path": "",
        }
        loop = asyncio.get_running_loop()
        started: asyncio.Future[tuple[int, list[tuple[bytes, bytes]]]] = loop.create_future()
        chunks: asyncio.Queue[object] = asyncio.Queue(maxsize=1)
        closed = asyncio.Event()
        body_sent = False

        async def receive() -> Message:
            nonlocal body_sent
            if not body_sent:
                body_sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await closed.wait()
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            if closed.is_set():
                return
            if message["type"] == "http.response.start":
                started.set_result((message["status"], list(message.get("headers", []))))
            elif message["type"] == "http.response.body":
                data = message.get("body", b"")
                if data:
                    await chunks.put(data)
                if not message.get("more_body", False):
                    await chunks.put(_END)

        async def run() -> None:
            try:
                await self.app(scope, receive, send)
            except BaseException as exc:
                if not started.done():
                    started.set_exception(exc)
                else:
                    await chunks.put(exc)
                if not isinstance(exc, Exception):
                    raise
            else:
                if not started.done():
                    started.set_exception(RuntimeError("the app sent no response"))
                await chunks.put(_END)

        task = asyncio.create_task(run())
        try:
            status, headers = await started
        except BaseException:
            await task
            raise
        return httpx.Response(
            status, headers=headers, stream=_Body(chunks, closed, task), request=request
        )


class _Body(httpx.AsyncByteStream):
    def __init__(
        self, chunks: asyncio.Queue[object], closed: asyncio.Event, task: asyncio.Task[None]
    ) -> None:
        self._chunks = chunks
        self._closed = closed
        self._task = task

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            item = await self._chunks.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise httpx.RemoteProtocolError(f"the app failed mid-stream: {item!r}")
            assert isinstance(item, bytes)
            yield item

    async def aclose(self) -> None:
        # Like a client that leaves: the app's sends do nothing from now on and its receive
        # says http.disconnect. Keep the queue empty so a send already waiting returns.
        self._closed.set()
        deadline = asyncio.get_running_loop().time() + 5
        while not self._task.done():
            while not self._chunks.empty():
                self._chunks.get_nowait()
            if asyncio.get_running_loop().time() > deadline:
                self._task.cancel()
                break
            await asyncio.wait({self._task}, timeout=0.005)
        while not self._chunks.empty():
            self._chunks.get_nowait()


class HostsASGITransport(httpx.AsyncBaseTransport):
    """One transport to several in-process apps, by host name: a fleet in one process.

    ``HostsASGITransport({"gpu-a": fake_a, "gpu-b": fake_b})`` serves requests to
    ``http://gpu-a:11434`` with ``fake_a``. :meth:`down` makes a host refuse connections
    (``httpx.ConnectError``, as a server that is gone), :meth:`up` brings it back.
    """

    def __init__(self, apps: dict[str, Any]) -> None:
        self.transports = {host: StreamingASGITransport(app) for host, app in apps.items()}
        self.refusing: set[str] = set()

    def down(self, host: str) -> None:
        self.refusing.add(host)

    def up(self, host: str) -> None:
        self.refusing.discard(host)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        transport = self.transports.get(host)
        if transport is None or host in self.refusing:
            raise httpx.ConnectError(f"[Errno 111] Connection refused ({host})", request=request)
        return await transport.handle_async_request(request)
