"""Native Ollama chunks -> an Anthropic ``message``, or its SSE events.

The stream is ``message_start``, a ``ping``, one content block after another
(``thinking``, ``text``, ``tool_use``: each ``content_block_start``, deltas,
``content_block_stop``), ``message_delta`` with the stop reason and usage, ``message_stop``.
Text and thinking deltas are written from byte templates made once per block.
"""

from __future__ import annotations

import secrets
from typing import Any

from .._json import dumps
from ..encoding import Chunk, Encoder, merge_chunks, text_only
from .translate import MessagesOptions

SSE = b"text/event-stream"
JSON = b"application/json"

_DELTA = {
    "text": (b"text_delta", b"text"),
    "thinking": (b"thinking_delta", b"thinking"),
}


def usage(chunk: Chunk) -> dict[str, int]:
    return {
        "input_tokens": int(chunk.get("prompt_eval_count") or 0),
        "output_tokens": int(chunk.get("eval_count") or 0),
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }


def stop_reason(done_reason: Any, tools: bool) -> str:
    """Ollama's ``done_reason`` as Anthropic's ``stop_reason``: ``tool_use`` whenever the
    answer called a tool, even one cut by the token limit (as Ollama's own /v1/messages)."""
    if tools:
        return "tool_use"
    return "max_tokens" if done_reason == "length" else "end_turn"


def tool_use_block(call: dict[str, Any]) -> dict[str, Any]:
    function = call.get("function") or {}
    return {
        "type": "tool_use",
        "id": call.get("id") or "toolu_" + secrets.token_hex(12),
        "name": function.get("name", ""),
        "input": function.get("arguments") or {},
    }


class MessagesEncoder(Encoder):
    """One Anthropic answer, streamed as events or written whole at the end."""

    def __init__(self, options: MessagesOptions) -> None:
        self.model = options.model
        self.streaming = options.stream
        self.input_estimate = options.input_estimate
        self.id = "msg_" + secrets.token_hex(12)
        self._started = False
        self._index = -1
        self._open: str | None = None
        self._delta = b""
        self._tools = False
        self._chunks: list[Chunk] = []  # the whole answer (not streaming)

    def begin(self, content_type: str) -> bytes:
        return SSE if self.streaming else JSON

    @staticmethod
    def _event(kind: str, data: dict[str, Any]) -> bytes:
        return b"event: " + kind.encode() + b"\ndata: " + dumps({"type": kind, **data}) + b"\n\n"

    def _start(self, chunk: Chunk) -> bytes:
        self._started = True
        self.model = str(chunk.get("model") or self.model)
        message: dict[str, Any] = {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {
                **usage(chunk),
                "input_tokens": int(chunk.get("prompt_eval_count") or self.input_estimate),
                "output_tokens": 0,
            },
        }
        return self._event("message_start", {"message": message}) + self._event("ping", {})

    def _stop_block(self) -> bytes:
        if self._open is None:
            return b""
        events = b""
        if self._open == "thinking":
            events += self._event(
                "content_block_delta",
                {"index": self._index, "delta": {"type": "signature_delta", "signature": ""}},
            )
        self._open = None
        return events + self._event("content_block_stop", {"index": self._index})

    def _text(self, kind: str, text: str) -> bytes:
        events = b""
        if self._open != kind:
            events += self._stop_block()
            self._index += 1
            self._open = kind
            block = (
                {"type": "text", "text": ""}
                if kind == "text"
                else {
                    "type": "thinking",
                    "thinking": "",
                    "signature": "",
                }
            )
            events += self._event(
                "content_block_start", {"index": self._index, "content_block": block}
            )
            delta_type, field = _DELTA[kind]
            self._delta = (
                b'event: content_block_delta\ndata: {"type":"content_block_delta","index":'
                + str(self._index).encode()
                + b',"delta":{"type":"' + delta_type + b'","' + field + b'":%s}}\n\n'
            )  # fmt: skip
        return events + self._delta % dumps(text)

    def _tool_events(self, calls: list[dict[str, Any]]) -> bytes:
        events = self._stop_block()
        for call in calls:
            block = tool_use_block(call)
            self._index += 1
            self._tools = True
            start = {**block, "input": {}}
            events += self._event(
                "content_block_start", {"index": self._index, "content_block": start}
            )
            events += self._event(
                "content_block_delta",
                {
                    "index": self._index,
                    "delta": {
                        "type": "input_json_delta",
                        "partial_json": dumps(block["input"]).decode(),
                    },
                },
            )
            events += self._event("content_block_stop", {"index": self._index})
        return events

    def encode(self, chunk: Chunk) -> bytes:
        if not self.streaming:
            self._chunks.append(chunk)
            return b""
        message = chunk.get("message")
        if self._open == "text" and not chunk.get("done"):
            # The common case, from the open block's template: a chunk of text alone.
            text = text_only(message)
            if text is not None:
                return self._delta % dumps(text)
        if not isinstance(message, dict):
            message = {}
        events = b"" if self._started else self._start(chunk)
        if message.get("thinking"):
            events += self._text("thinking", message["thinking"])
        if message.get("content"):
            events += self._text("text", message["content"])
        if message.get("tool_calls"):
            events += self._tool_events(message["tool_calls"])
        if chunk.get("done"):
            events += self._stop_block()
            delta = {
                "stop_reason": stop_reason(chunk.get("done_reason"), self._tools),
                "stop_sequence": None,
            }
            events += self._event("message_delta", {"delta": delta, "usage": usage(chunk)})
            events += self._event("message_stop", {})
        return events

    def end(self) -> bytes:
        if self.streaming:
            return b""
        final = merge_chunks(self._chunks)
        message = final.get("message")
        if not isinstance(message, dict):
            message = {}
        thinking, text = message.get("thinking"), message.get("content")
        calls: list[dict[str, Any]] = message.get("tool_calls") or []
        content: list[dict[str, Any]] = []
        if thinking:
            content.append({"type": "thinking", "thinking": thinking, "signature": ""})
        if text or not calls:
            content.append({"type": "text", "text": text or ""})
        content += [tool_use_block(call) for call in calls]
        return dumps(
            {
                "id": self.id,
                "type": "message",
                "role": "assistant",
                "model": str(final.get("model") or self.model),
                "content": content,
                "stop_reason": stop_reason(final.get("done_reason"), bool(calls)),
                "stop_sequence": None,
                "usage": usage(final),
            }
        )


__all__ = ["MessagesEncoder", "stop_reason", "tool_use_block", "usage"]
