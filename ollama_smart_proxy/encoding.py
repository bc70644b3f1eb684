"""Encoders turn native chunks (decoded Ollama NDJSON objects) into the client's wire format.

The response pipeline (:class:`~ollama_smart_proxy._pipeline.ResponseWriter`) decodes each
upstream line once, runs the exchange's transforms, and hands the result to one encoder.
:class:`NativeEncoder` writes Ollama's NDJSON (or one JSON object); each dialect brings its
own (``openai.render``, ...). Agents never write wire formats, and encoders never write
errors: a failure is an exception that the error boundary renders.
"""

from __future__ import annotations

from typing import Any

from ._json import dumps

Chunk = dict[str, Any]

_TEXT_KEYS = frozenset({"role", "content"})
_THINKING_KEYS = frozenset({"role", "content", "thinking"})


def text_only(message: Any) -> Any:
    """The text of a chat chunk's ``message`` that holds text and nothing else (the common
    chunk, which encoders write from a template), else ``None``."""
    if isinstance(message, dict) and message.keys() <= _TEXT_KEYS:
        return message.get("content") or None
    return None


def thinking_only(message: Any) -> Any:
    """The thinking of a chat chunk's ``message`` that holds thinking and nothing else (an
    empty ``content`` aside), else ``None``."""
    keys_ok = isinstance(message, dict) and message.keys() <= _THINKING_KEYS
    if keys_ok and not message.get("content"):
        return message.get("thinking") or None
    return None


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
    or once at ``end``. ``native`` encoders write Ollama's own format, so the pipeline may
    pass the upstream's bytes through untouched when nothing transforms them.
    """

    streaming: bool = True
    native: bool = False

    def begin(self, content_type: str) -> bytes:
        raise NotImplementedError

    def encode(self, chunk: Chunk) -> bytes:
        """Bytes for one native chunk (``b""`` while accumulating)."""
        raise NotImplementedError

    def end(self) -> bytes:
        """Bytes after the last chunk: a trailer, or the whole body when not streaming."""
        return b""


class NativeEncoder(Encoder):
    """Ollama's own format: NDJSON lines when streaming, else one JSON object."""

    native = True

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


__all__ = ["Chunk", "Encoder", "NativeEncoder", "merge_chunks", "text_only", "thinking_only"]
