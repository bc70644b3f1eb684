"""The response pipeline: plain Ollama in, the client's wire format out.

:class:`ResponseWriter` is the ``send`` that the layers below an exchange's owner write to,
in plain Ollama (the terminal layer, an agent's ``Reply``). When nothing transforms the
answer and the client speaks Ollama, messages pass through untouched (the fast path).
Otherwise the body is split into lines, each decoded once, run through the transforms
(innermost first), and encoded once. An error that Ollama reports (an error status, or an
``{"error"}`` line) is raised as an exception for the error boundary to render.
"""

from __future__ import annotations

from ._json import loads
from ._ndjson import DEFAULT_MAX_LINE_BYTES, LineSplitter
from .encoding import Chunk, Encoder
from .errors import UpstreamError, UpstreamStatusError
from .exchange import ChunkTransform, Exchange
from .types import Message, Send

#: Largest upstream error body buffered to rewrite it in the client's dialect.
MAX_ERROR_BODY = 1024 * 1024

_ANSWER_KEYS = ("response", "thinking", "tool_calls", "logprobs")


def error_message(body: bytes, status: int) -> str:
    """The message in an Ollama error body, or the body itself."""
    try:
        value = loads(body)
    except ValueError:
        value = None
    if isinstance(value, dict) and isinstance(value.get("error"), str):
        return str(value["error"])
    text = body.decode("utf-8", "replace").strip()
    return text or f"Ollama answered with HTTP {status}"


class ResponseWriter:
    """Decode a native response once, run the exchange's transforms, encode once."""

    def __init__(
        self,
        send: Send,
        exchange: Exchange,
        encoder: Encoder,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    ) -> None:
        self._send = send
        self._exchange = exchange
        self._encoder = encoder
        self._max_line_bytes = max_line_bytes
        self._passthrough = False
        self._error: bytearray | None = None
        self._splitter: LineSplitter | None = None
        self._transforms: list[ChunkTransform] = []
        self._status = 200
        self._headers: list[tuple[bytes, bytes]] = []
        self._started = False

    async def __call__(self, message: Message) -> None:
        if self._passthrough:
            await self._send(message)
        elif message["type"] == "http.response.body":
            await self._body(message.get("body", b""), message.get("more_body", False))
        elif message["type"] == "http.response.start":
            await self._start(message)
        else:
            await self._send(message)

    async def _start(self, message: Message) -> None:
        status: int = message["status"]
        encoder = self._encoder
        transforms = self._exchange.transforms
        if encoder.native and (status >= 400 or not transforms):
            self._passthrough = True
            await self._send(message)
            return
        self._status = status
        content_type = b""
        kept = []
        for key, value in message.get("headers", []):
            if key == b"content-type":
                content_type = value
            elif key != b"content-length":
                kept.append((key, value))
        if status >= 400:
            self._error = bytearray()
            return
        self._transforms = list(reversed(transforms))
        self._splitter = LineSplitter(self._max_line_bytes)
        media_type = encoder.begin(content_type.decode("latin-1"))
        self._headers = [*kept, (b"content-type", media_type)]
        if encoder.streaming:
            await self._start_response()

    async def _start_response(self, content_length: int | None = None) -> None:
        headers = self._headers
        if content_length is not None:
            headers = [*headers, (b"content-length", str(content_length).encode())]
        self._started = True
        await self._send(
            {"type": "http.response.start", "status": self._status, "headers": headers}
        )

    async def _body(self, data: bytes, more: bool) -> None:
        if self._error is not None:
            if len(self._error) < MAX_ERROR_BODY:
                self._error += data[: MAX_ERROR_BODY - len(self._error)]
            if not more:
                body = bytes(self._error)
                raise UpstreamStatusError(
                    error_message(body, self._status), status_code=self._status
                )
            return
        splitter = self._splitter
        if splitter is None:
            raise UpstreamError("Ollama sent a body before its status")
        if (
            more
            and self._started
            and not self._transforms
            and not splitter.pending
            and data.find(b"\n") == len(data) - 1 > 0
        ):
            # The common case, kept short: one whole line, nothing to transform.
            encoded = self._encoder.encode(self._decode_line(data[:-1]))
            if encoded:
                await self._send({"type": "http.response.body", "body": encoded, "more_body": True})
            return
        lines = splitter.feed(data) if data else []
        if not more:
            lines += splitter.flush()
        if lines:
            await self._emit(self._decode(lines))
        if not more:
            tail = self._encoder.end()
            if not self._started:
                await self._start_response(len(tail))
            await self._send({"type": "http.response.body", "body": tail, "more_body": False})

    @classmethod
    def _decode(cls, lines: list[bytes]) -> list[Chunk]:
        return [cls._decode_line(line) for line in lines]

    @staticmethod
    def _decode_line(line: bytes) -> Chunk:
        try:
            chunk = loads(line)
        except ValueError:
            raise UpstreamError(f"Ollama sent a line that is not JSON: {line[:200]!r}") from None
        if not isinstance(chunk, dict):
            raise UpstreamError(f"Ollama sent a JSON {type(chunk).__name__}, not an object")
        if "error" in chunk and len(chunk) <= 2 and not chunk.get("done"):
            raise UpstreamStatusError(str(chunk["error"]), status_code=500)
        return chunk

    async def _emit(self, chunks: list[Chunk]) -> None:
        if self._transforms:
            chunks = _split_final(chunks)
            for transform in self._transforms:
                chunks = await _apply(transform, chunks)
        encode = self._encoder.encode
        data = b"".join([encode(chunk) for chunk in chunks])
        if data:
            if not self._started:
                await self._start_response()
            await self._send({"type": "http.response.body", "body": data, "more_body": True})


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


async def _apply(transform: ChunkTransform, chunks: list[Chunk]) -> list[Chunk]:
    out: list[Chunk] = []
    for chunk in chunks:
        if chunk.get("done"):
            out.extend(await transform.on_end())
        result = await transform.on_chunk(chunk)
        if result is not None:
            out.append(result)
    return out


__all__ = ["ResponseWriter", "error_message"]
