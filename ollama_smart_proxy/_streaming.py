"""The response pipeline: upstream bytes -> lines -> chunks -> transforms -> encoder -> client."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from ._ndjson import DEFAULT_MAX_LINE_BYTES, LineSplitter
from .encoders import Chunk, dumps, loads
from .errors import error_body
from .exchange import Exchange
from .types import Message, Receive, Send

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

#: Upstream response headers never copied to the client: hop-by-hop ones, and the ones
#: the server in front of us writes itself.
DROP_RESPONSE_HEADERS = HOP_BY_HOP | {b"date", b"server"}

#: Largest upstream error body buffered to rewrite it in the client's dialect.
MAX_ERROR_BODY = 1024 * 1024


def response_headers(headers: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    return [(key, value) for key, value in headers if key.lower() not in DROP_RESPONSE_HEADERS]


def error_message(body: bytes) -> str:
    """The message in an Ollama error body, or the body itself."""
    try:
        value = loads(body)
    except ValueError:
        return body.decode("utf-8", "replace").strip() or "upstream error"
    if isinstance(value, dict) and isinstance(value.get("error"), str):
        return str(value["error"])
    return body.decode("utf-8", "replace").strip()


class ResponseWriter:
    """Decode a native response once, run the exchange's transforms, encode once.

    Feed it the upstream's status and headers (``start``), its body bytes as they come
    (``feed``), then ``end``; or native chunks directly (``chunks``) for a proxy-made
    ``Reply``. ``fail`` ends the response in the client's dialect, whatever its state.
    """

    def __init__(
        self, exchange: Exchange, send: Send, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
    ) -> None:
        self.exchange = exchange
        self.encoder = exchange.get_encoder()
        self._send = send
        self._splitter = LineSplitter(max_line_bytes)
        self._transforms = list(reversed(exchange.transforms))
        self._headers: list[tuple[bytes, bytes]] = []
        self._status = 200
        self._error_body: bytearray | None = None
        self.started = False
        self.finished = False

    async def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self._status = status
        content_type = b""
        kept = []
        for key, value in response_headers(headers):
            key = key.lower()
            if key == b"content-type":
                content_type = value
            elif key != b"content-length":
                kept.append((key, value))
        if status >= 400:
            self._error_body = bytearray()
            self._headers = [*kept, (b"content-type", content_type)] if content_type else kept
            return
        media_type = self.encoder.begin(content_type.decode("latin-1"))
        self._headers = [*kept, (b"content-type", media_type)]
        if self.encoder.streaming:
            await self._start()

    async def _start(self, content_length: int | None = None) -> None:
        headers = self._headers
        if content_length is not None:
            headers = [*headers, (b"content-length", str(content_length).encode())]
        self.started = True
        await self._send(
            {"type": "http.response.start", "status": self._status, "headers": headers}
        )

    async def feed(self, data: bytes) -> None:
        if self.finished:
            return
        if self._error_body is not None:
            if len(self._error_body) < MAX_ERROR_BODY:
                self._error_body += data[: MAX_ERROR_BODY - len(self._error_body)]
            return
        lines = self._splitter.feed(data)
        if lines:
            await self._lines(lines)

    async def _lines(self, lines: list[bytes]) -> None:
        chunks: list[Chunk] = []
        for line in lines:
            try:
                chunk = loads(line)
            except ValueError:
                await self._flush(chunks)
                await self.fail(f"upstream sent a line that is not JSON: {line[:200]!r}")
                return
            if not isinstance(chunk, dict):
                await self._flush(chunks)
                await self.fail(f"upstream sent a JSON {type(chunk).__name__}, not an object")
                return
            if "error" in chunk and len(chunk) <= 2 and not chunk.get("done"):
                await self._flush(chunks)
                await self.fail(str(chunk["error"]), status=500)
                return
            chunks.append(chunk)
        await self._flush(chunks)

    async def chunks(self, chunks: list[Chunk]) -> None:
        """Send native chunks made by the proxy itself (a ``Reply``)."""
        await self._flush(chunks)

    async def _flush(self, chunks: list[Chunk]) -> None:
        if not chunks:
            return
        if self._transforms:
            chunks = _split_final(chunks)
            for transform in self._transforms:
                chunks = await _apply(transform, chunks)
        encode = self.encoder.encode
        data = b"".join([encode(chunk) for chunk in chunks])
        if data:
            if not self.started:
                await self._start()
            await self._send({"type": "http.response.body", "body": data, "more_body": True})

    async def end(self) -> None:
        if self.finished:
            return
        if self._error_body is not None:
            await self._end_error(bytes(self._error_body))
            return
        rest = self._splitter.flush()
        if rest:
            await self._lines(rest)
            if self.finished:
                return
        self.finished = True
        tail = self.encoder.end()
        if not self.started:
            await self._start(len(tail))
        await self._send({"type": "http.response.body", "body": tail, "more_body": False})

    async def _end_error(self, body: bytes) -> None:
        self.finished = True
        rewritten = self.encoder.error_response(self._status, body)
        headers = self._headers
        if rewritten is not None:
            status, body, content_type = rewritten
            self._status = status
            headers = [(k, v) for k, v in headers if k != b"content-type"]
            headers.append((b"content-type", content_type))
        self._headers = headers
        await self._start(len(body))
        await self._send({"type": "http.response.body", "body": body, "more_body": False})

    async def fail(self, message: str, status: int = 502) -> None:
        """End the response with an error: a whole error response if nothing was sent yet,
        else the dialect's final error frame."""
        if self.finished:
            return
        if self.started:
            self.finished = True
            await self._send(
                {
                    "type": "http.response.body",
                    "body": self.encoder.error(message),
                    "more_body": False,
                }
            )
            return
        self._error_body = None
        body = dumps(error_body("ollama", message, status))
        self._status = status
        self._headers = [(b"content-type", b"application/json; charset=utf-8")]
        await self._end_error(body)


_ANSWER_KEYS = ("response", "thinking", "tool_calls", "logprobs")


def _split_final(chunks: list[Chunk]) -> list[Chunk]:
    """Give transforms the answer only in non-final chunks: a final chunk that carries text
    (every non-streaming answer does) becomes a content chunk plus an empty final one."""
    out: list[Chunk] = []
    for chunk in chunks:
        message = chunk.get("message")
        has_answer = any(chunk.get(key) for key in _ANSWER_KEYS) or (
            isinstance(message, dict)
            and any(message.get(key) for key in ("content", "thinking", "tool_calls"))
        )
        if not chunk.get("done") or not has_answer:
            out.append(chunk)
            continue
        content = {key: value for key, value in chunk.items() if key in ("model", "created_at")}
        final = {key: value for key, value in chunk.items() if key not in _ANSWER_KEYS}
        if isinstance(message, dict):
            content["message"] = message
            final["message"] = {"role": message.get("role", "assistant"), "content": ""}
        else:
            content.update((key, chunk[key]) for key in _ANSWER_KEYS if key in chunk)
            final["response"] = ""
        content["done"] = False
        out += [content, final]
    return out


async def _apply(transform: Any, chunks: list[Chunk]) -> list[Chunk]:
    out: list[Chunk] = []
    for chunk in chunks:
        if chunk.get("done"):
            out.extend(await transform.on_end())
        result = await transform.on_chunk(chunk)
        if result is not None:
            out.append(result)
    return out


async def run_until_disconnect(
    receive: Receive,
    func: Callable[[], Awaitable[None]],
    finished: Callable[[], bool] = lambda: False,
) -> bool:
    """Run ``func``, cancelling it as soon as the client disconnects.

    Returns ``True`` if the client left. ``receive`` must have no body left to deliver
    (``http.request`` messages are skipped). ``func`` runs in a task of its own that a
    watcher task cancels on ``http.disconnect``: two plain asyncio tasks cost ~17 µs a
    request, an anyio task group ~100 µs (measured; see docs/performance.md). Once
    ``finished()`` is true (the last byte went to the client) a disconnect no longer
    cancels: servers report one as soon as the response is complete, and the upstream
    connection must then be released for reuse, not dropped.
    """
    inner = asyncio.ensure_future(func())
    left = False

    async def watch() -> None:
        nonlocal left
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
