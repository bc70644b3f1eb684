"""The response pipeline: plain Ollama in, the client's wire format out.

:func:`run_exchange` is the one place that puts an :class:`~.exchange.Exchange` in the
scope, replays its body (serialised once, when the app below first reads it) and wraps
``send`` in the :class:`ResponseWriter` that encodes the answer for the client.

:class:`ResponseWriter` is the ``send`` that the layers below an exchange's owner write to,
in plain Ollama (the terminal layer); an answer made by the proxy itself (an agent's
``Reply``) reaches it as chunk objects (``exchange.answer``). When nothing transforms the
answer and the client speaks Ollama, messages pass through untouched (the fast path).
Otherwise the body is split into lines, each decoded once, run through the transforms
(innermost first), and encoded once. Either way the final chunk is decoded once, for the
exchange's token counts. An error that Ollama reports (an error status, or an ``{"error"}``
line) is raised as an exception for the error boundary to render.
"""

from __future__ import annotations

import re
import time

from ._http import JSON, json_request_headers, replay_receive
from ._json import loads
from ._keys import request_key
from ._ndjson import DEFAULT_MAX_LINE_BYTES, LineSplitter
from .access_log import get_context
from .encoding import Chunk, Encoder
from .errors import UpstreamError, UpstreamStatusError
from .exchange import SCOPE_KEY, ChunkTransform, Exchange
from .kinds import COMPLETION_KINDS, RUN_KINDS
from .routing import ROUTE_KEY, route_of
from .types import ASGIApp, Message, Receive, Scope, Send

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
        #: The last two pieces of a passed-through answer, for its token counts.
        self._tail: tuple[bytes, bytes] | None = None
        #: Whether Ollama's final (``done``) chunk came.
        self._final = False

    async def __call__(self, message: Message) -> None:
        if self._passthrough:
            if self._tail is not None and message["type"] == "http.response.body":
                self._track(message.get("body", b""), message.get("more_body", False))
            await self._send(message)
        elif message["type"] == "http.response.body":
            await self._body(message.get("body", b""), message.get("more_body", False))
        elif message["type"] == "http.response.start":
            await self._start(message)
        else:
            await self._send(message)

    async def answer(self, chunks: list[Chunk]) -> None:
        """Answer with native ``chunks`` made by the proxy itself, as if Ollama had sent them
        (streamed when the request streams), through the transforms and the encoder."""
        streaming = getattr(self._exchange.request, "stream", None) is not False
        content_type = b"application/x-ndjson" if streaming else JSON
        start = {"type": "http.response.start", "status": 200}
        await self._start({**start, "headers": [(b"content-type", content_type)]}, decode=True)
        self._final = any(chunk.get("done") for chunk in chunks)
        await self._emit(chunks)
        await self._body(b"", False)

    async def _start(self, message: Message, *, decode: bool = False) -> None:
        status: int = message["status"]
        encoder = self._encoder
        transforms = self._exchange.transforms
        self._exchange.answered = time.perf_counter()
        if encoder.native and not decode and (status >= 400 or not transforms):
            self._passthrough = True
            if status < 400 and self._exchange.kind in RUN_KINDS:
                self._tail = (b"", b"")
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
            chunk = self._decode_line(data[:-1])
            if chunk is None:
                return
            try:
                encoded = self._encoder.encode(chunk)
            except _SHAPE_ERRORS as exc:
                raise _bad_chunk(exc) from exc
            if encoded:
                await self._send({"type": "http.response.body", "body": encoded, "more_body": True})
            return
        lines = splitter.feed(data) if data else []
        if not more:
            lines += splitter.flush()
        if lines:
            await self._emit(self._decode(lines))
        if not more:
            if not self._final and self._exchange.kind in COMPLETION_KINDS:
                raise UpstreamError(
                    "Ollama's stream ended before its final chunk: the answer may be cut short"
                )
            tail = self._encoder.end()
            if not self._started:
                await self._start_response(len(tail))
            await self._send({"type": "http.response.body", "body": tail, "more_body": False})

    def _decode(self, lines: list[bytes]) -> list[Chunk]:
        chunks = [self._decode_line(line) for line in lines]
        return [chunk for chunk in chunks if chunk is not None]

    def _decode_line(self, line: bytes) -> Chunk | None:
        """One line of Ollama's answer as a chunk (``None`` for lines after the final one,
        which no client is to see: the answer has ended)."""
        if self._final:
            return None
        try:
            chunk = loads(line)
        except ValueError:
            raise UpstreamError(f"Ollama sent a line that is not JSON: {line[:200]!r}") from None
        if not isinstance(chunk, dict):
            raise UpstreamError(f"Ollama sent a JSON {type(chunk).__name__}, not an object")
        if "error" in chunk and len(chunk) <= 2 and not chunk.get("done"):
            raise UpstreamStatusError(str(chunk["error"]), status_code=500)
        if chunk.get("done"):
            self._final = True
            self._count(chunk)
        return chunk

    def _count(self, chunk: Chunk) -> None:
        """Record Ollama's token counts (its final chunk carries them) on the exchange."""
        prompt, output = chunk.get("prompt_eval_count"), chunk.get("eval_count")
        exchange = self._exchange
        exchange.prompt_tokens = prompt if type(prompt) is int and prompt >= 0 else 0
        exchange.completion_tokens = output if type(output) is int and output >= 0 else 0
        load = chunk.get("load_duration")
        exchange.load_seconds = load / 1e9 if type(load) is int and load > 0 else 0.0

    def _track(self, data: bytes, more: bool) -> None:
        """Keep the last two pieces of a passed-through answer (references, no copies);
        decode its last line once at the end."""
        tail = self._tail
        if tail is None:
            return
        if data:
            tail = self._tail = (tail[1], data)
        if more:
            return
        window = tail[0] + tail[1]
        self._tail = None
        end = len(window.rstrip(b"\n"))
        start = window.rfind(b"\n", 0, end) + 1
        if start == 0 and len(window) >= self._max_line_bytes:
            return
        try:
            chunk = loads(window[start:end])
        except ValueError:
            chunk = _counts_at_end(window)  # a final line longer than two pieces
        if isinstance(chunk, dict):
            self._count(chunk)

    async def _emit(self, chunks: list[Chunk]) -> None:
        if self._transforms:
            chunks = _split_final(chunks)
            for transform in self._transforms:
                chunks = await _apply(transform, chunks)
        encode = self._encoder.encode
        try:
            data = b"".join([encode(chunk) for chunk in chunks])
        except _SHAPE_ERRORS as exc:
            raise _bad_chunk(exc) from exc
        if data:
            if not self._started:
                await self._start_response()
            await self._send({"type": "http.response.body", "body": data, "more_body": True})


_COUNTS = re.compile(rb'"(prompt_eval_count|eval_count|load_duration)":\s*(\d{1,15})')


def _counts_at_end(window: bytes) -> Chunk | None:
    """The token counts at the end of a final line too long to keep whole (a long answer
    that does not stream): Ollama writes them last."""
    found = {key.decode(): int(value) for key, value in _COUNTS.findall(window[-1024:])}
    return found or None


#: What an encoder raises on a chunk whose fields have unexpected types (Ollama's fault).
_SHAPE_ERRORS = (TypeError, AttributeError, KeyError, ValueError, IndexError)


def _bad_chunk(exc: Exception) -> UpstreamError:
    return UpstreamError(
        f"Ollama sent a chunk the proxy cannot translate ({type(exc).__name__}: {exc})"
    )


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


async def run_exchange(
    app: ASGIApp,
    scope: Scope,
    receive: Receive,
    send: Send,
    exchange: Exchange,
    encoder: Encoder,
    *,
    path: str | None = None,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
) -> None:
    """Call ``app`` with ``exchange`` in its scope and ``encoder`` writing the answer.

    ``path`` moves the request to a native route (a translated request goes to
    ``/api/chat``); the dialect of the route stays the client's. The exchange learns the
    key the request was made with, and where the proxy's own answers go.
    """
    inner = dict(scope)
    inner[SCOPE_KEY] = exchange
    if path is not None:
        inner[ROUTE_KEY] = route_of(scope).rewritten(path)
        inner["path"] = scope.get("root_path", "") + path
        inner["raw_path"] = inner["path"].encode()
        inner["method"] = "POST"
        inner["query_string"] = b""
    inner["headers"] = json_request_headers(scope["headers"])
    exchange.key = request_key(scope)
    context = get_context(scope)
    if context is not None:  # the access log reads the request's record from the exchange
        context.exchange = exchange
    writer = ResponseWriter(send, exchange, encoder, max_line_bytes)
    exchange.answer = writer.answer
    # The body is serialised once, when the app below first reads it: by then every layer
    # above it has rewritten the request.
    await app(inner, replay_receive(exchange.body, receive), writer)


async def _apply(transform: ChunkTransform, chunks: list[Chunk]) -> list[Chunk]:
    out: list[Chunk] = []
    for chunk in chunks:
        if chunk.get("done"):
            out.extend(await transform.on_end())
        result = await transform.on_chunk(chunk)
        if result is not None:
            out.append(result)
    return out


__all__ = ["ResponseWriter", "error_message", "run_exchange"]
