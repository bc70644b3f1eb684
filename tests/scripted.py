"""A raw scripted upstream: a tiny asyncio TCP server that answers with chosen bytes.

Each request it reads (a head, then a body by ``Content-Length`` or chunked) is answered by
the next step of the script: bytes to write, pauses, a close. It records what it received
and on which connection, so a test can tell whether the client reused a connection.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

#: One step of an answer: bytes to write, a pause (float seconds), or "close" / "eof".
Step = bytes | float | str
Answer = Sequence[Step]


@dataclass
class Received:
    connection: int
    head: bytes
    body: bytes


@dataclass
class ScriptedUpstream:
    answers: list[Answer | Callable[[Received], Answer]]
    #: Read the request body before answering (False: answer as soon as the head arrives).
    read_body: bool = True
    received: list[Received] = field(default_factory=list)
    connections: int = 0
    #: Bytes that arrived on a connection after the script ended, per connection.
    leftovers: dict[int, bytes] = field(default_factory=dict)
    url: str = ""
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self.tasks.add(task)
        self.connections += 1
        connection = self.connections
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                body = b""
                if self.read_body:
                    body = await _read_body(reader, head)
                request = Received(connection, head, body)
                self.received.append(request)
                if not self.answers:
                    writer.close()
                    return
                answer = self.answers.pop(0)
                steps = answer(request) if callable(answer) else answer
                for step in steps:
                    if isinstance(step, bytes):
                        writer.write(step)
                        await writer.drain()
                    elif isinstance(step, float | int):
                        await asyncio.sleep(step)
                    elif step == "eof":
                        writer.write_eof()
                    elif step == "close":
                        writer.close()
                        return
        except (ConnectionError, asyncio.CancelledError):
            return
        finally:
            with contextlib.suppress(Exception):
                writer.close()


async def _read_body(reader: asyncio.StreamReader, head: bytes) -> bytes:
    lower = head.lower()
    if b"transfer-encoding: chunked" in lower:
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip().split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                return b"".join(parts)
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
    for line in lower.split(b"\r\n"):
        if line.startswith(b"content-length:"):
            return await reader.readexactly(int(line.split(b":")[1]))
    return b""


@contextlib.asynccontextmanager
async def scripted(
    *answers: Answer | Callable[[Received], Answer], read_body: bool = True
) -> AsyncIterator[ScriptedUpstream]:
    upstream = ScriptedUpstream(list(answers), read_body=read_body)
    server = await asyncio.start_server(upstream._serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    upstream.url = f"http://127.0.0.1:{port}"
    try:
        yield upstream
    finally:
        server.close()
        for task in upstream.tasks:
            task.cancel()
        await asyncio.gather(*upstream.tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 1)


def ok(body: bytes, *, status: bytes = b"200 OK", headers: bytes = b"") -> bytes:
    """A well-formed response with a Content-Length."""
    return (
        b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\n" + headers
        + b"content-length: %d\r\n\r\n" % len(body) + body
    )  # fmt: skip


def chunked(*pieces: bytes, headers: bytes = b"") -> bytes:
    """A well-formed chunked response."""
    body = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces if p)
    return (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\n" + headers
        + b"transfer-encoding: chunked\r\n\r\n" + body + b"0\r\n\r\n"
    )  # fmt: skip
