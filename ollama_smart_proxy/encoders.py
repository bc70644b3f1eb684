"""Encoders turn native chunks (decoded Ollama NDJSON objects) into the client's wire format.

The terminal layer decodes each upstream line once, runs the exchange's transforms, and
hands the result to one encoder. ``NativeEncoder`` writes Ollama's NDJSON (or one JSON
object); the OpenAI layer brings its own encoders for SSE and ``chat.completion``.
Agents never write wire formats.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

Chunk = dict[str, Any]


def now_rfc3339() -> str:
    """The current time as Ollama writes ``created_at``."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


try:  # orjson (in the ``server`` extra) is 3-5x faster on the per-chunk path
    import orjson
except ImportError:  # pragma: no cover - exercised where orjson is not installed
    orjson = None  # type: ignore[assignment]


def _std_dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def dumps(value: Any) -> bytes:
    """Compact JSON, UTF-8, no ASCII escaping: the proxy's one serialiser."""
    if orjson is not None:
        try:
            return orjson.dumps(value)
        except TypeError:  # integers past 64 bits, exotic keys: the standard library copes
            pass
    return _std_dumps(value)


#: The proxy's one parser (raises ``ValueError`` on bad JSON, as ``json.loads`` does).
loads = orjson.loads if orjson is not None else json.loads


def merge_chunks(chunks: list[Chunk]) -> Chunk:
    """Fold a native stream into the single object Ollama sends for ``stream: false``.

    Content, thinking and the generate ``response`` are concatenated; tool calls and
    logprobs are collected; every other field comes from the last chunk.
    """
    if not chunks:
        return {}
    if len(chunks) == 1:
        return chunks[0]
    merged: Chunk = dict(chunks[-1])
    texts: dict[str, list[str]] = {"content": [], "thinking": []}
    tool_calls: list[Any] = []
    logprobs: list[Any] = []
    response: list[str] = []
    has_message = False
    for chunk in chunks:
        message = chunk.get("message")
        if isinstance(message, dict):
            has_message = True
            for key in texts:
                if message.get(key):
                    texts[key].append(message[key])
            tool_calls.extend(message.get("tool_calls") or ())
        if chunk.get("response"):
            response.append(chunk["response"])
        if chunk.get("thinking") and not isinstance(message, dict):
            texts["thinking"].append(chunk["thinking"])
        logprobs.extend(chunk.get("logprobs") or ())
    if has_message:
        message = dict(merged.get("message") or {"role": "assistant"})
        message["content"] = "".join(texts["content"])
        if texts["thinking"]:
            message["thinking"] = "".join(texts["thinking"])
        if tool_calls:
            message["tool_calls"] = tool_calls
        merged["message"] = message
    elif "response" in merged or response:
        merged["response"] = "".join(response)
        if texts["thinking"]:
            merged["thinking"] = "".join(texts["thinking"])
    if logprobs:
        merged["logprobs"] = logprobs
    return merged


class Encoder:
    """Base encoder. One instance serves one response.

    ``begin`` is called once with the upstream's content type (of a successful answer) and
    returns the content type to send; ``streaming`` then says whether bytes go out per chunk
    or once at ``end``. Error answers go to ``error_response`` instead.
    """

    streaming: bool = True

    def begin(self, content_type: str) -> bytes:
        raise NotImplementedError

    def encode(self, chunk: Chunk) -> bytes:
        """Bytes for one native chunk (``b""`` while accumulating)."""
        raise NotImplementedError

    def end(self) -> bytes:
        """Bytes after the last chunk: a trailer, or the whole body when not streaming."""
        return b""

    def error(self, message: str) -> bytes:
        """Bytes that end a stream that failed after it began."""
        raise NotImplementedError

    def error_response(self, status: int, body: bytes) -> tuple[int, bytes, bytes] | None:
        """Rewrite an upstream error response; ``None`` passes it through untouched."""
        return None


class NativeEncoder(Encoder):
    """Ollama's own format: NDJSON lines when streaming, else one JSON object."""

    def __init__(self) -> None:
        self._chunks: list[Chunk] = []

    def begin(self, content_type: str) -> bytes:
        self.streaming = content_type.startswith("application/x-ndjson")
        return content_type.encode() if content_type else b"application/json; charset=utf-8"

    def encode(self, chunk: Chunk) -> bytes:
        if self.streaming:
            return dumps(chunk) + b"\n"
        self._chunks.append(chunk)
        return b""

    def end(self) -> bytes:
        if self.streaming:
            return b""
        return dumps(merge_chunks(self._chunks))

    def error(self, message: str) -> bytes:
        return error_line(message)


def error_line(message: str) -> bytes:
    """The NDJSON line with which Ollama ends a stream that failed after it began."""
    return dumps({"error": message}) + b"\n"
