"""Native Ollama chunks -> an OpenAI Responses object, or its typed SSE events.

The stream opens output items as the answer goes: a ``reasoning`` item for thinking, a
``message`` item for text, one ``function_call`` item per tool call (Ollama sends them
whole), and ends with ``response.completed``, or ``response.incomplete`` after a length stop
(as OpenAI's API does).
Deltas are written from byte templates made once per item: no dict is built per chunk.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

from .._json import dumps
from ..encoding import Chunk, Encoder, merge_chunks, text_only
from .translate import ResponsesOptions

SSE = b"text/event-stream"
JSON = b"application/json"


def _id(prefix: str) -> str:
    return prefix + secrets.token_hex(12)


def usage(chunk: Chunk) -> dict[str, Any]:
    prompt = int(chunk.get("prompt_eval_count") or 0)
    output = int(chunk.get("eval_count") or 0)
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": output,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + output,
    }


def function_call_item(call: dict[str, Any], status: str = "completed") -> dict[str, Any]:
    function = call.get("function") or {}
    return {
        "id": _id("fc_"),
        "type": "function_call",
        "status": status,
        "call_id": call.get("id") or _id("call_"),
        "name": function.get("name", ""),
        "arguments": dumps(function.get("arguments") or {}).decode(),
    }


def message_item(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
    }


def reasoning_item(item_id: str, text: str) -> dict[str, Any]:
    return {"id": item_id, "type": "reasoning", "summary": [{"type": "summary_text", "text": text}]}


class ResponsesEncoder(Encoder):
    """One Responses answer, streamed as events or written whole at the end."""

    def __init__(self, options: ResponsesOptions) -> None:
        self.options = options
        self.model = options.model
        self.streaming = options.stream
        self.id = _id("resp_")
        self.created = int(time.time())
        self._seq = 0
        self._output: list[dict[str, Any]] = []  # finished items
        # the item open now (streaming): its kind, id, index, text so far, delta template
        self._open: str | None = None
        self._open_id = ""
        self._open_index = 0
        self._open_text: list[str] = []
        self._delta = b""
        self._final: Chunk | None = None
        self._chunks: list[Chunk] = []  # the whole answer (not streaming)

    def begin(self, content_type: str) -> bytes:
        return SSE if self.streaming else JSON

    # -- the response object ------------------------------------------------------------

    def _response(self, status: str, final: Chunk | None = None) -> dict[str, Any]:
        options = self.options
        incomplete = None
        if final is not None and final.get("done_reason") == "length":
            status, incomplete = "incomplete", {"reason": "max_output_tokens"}
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created,
            "status": status,
            "completed_at": int(time.time()) if status == "completed" else None,
            "background": False,
            "error": None,
            "incomplete_details": incomplete,
            "instructions": options.instructions,
            "max_output_tokens": options.max_output_tokens,
            "model": self.model,
            "output": list(self._output),
            "parallel_tool_calls": options.parallel_tool_calls,
            "previous_response_id": None,
            "reasoning": options.reasoning or {"effort": None, "summary": None},
            "store": False,
            "temperature": options.temperature,
            "text": options.text or {"format": {"type": "text"}},
            "tool_choice": options.tool_choice,
            "tools": options.tools,
            "top_p": options.top_p,
            "truncation": "disabled",
            "usage": usage(final) if final is not None else None,
            "metadata": options.metadata or {},
        }

    # -- events -------------------------------------------------------------------------

    def _event(self, kind: str, data: dict[str, Any]) -> bytes:
        self._seq += 1
        data = {"type": kind, "sequence_number": self._seq, **data}
        return b"event: " + kind.encode() + b"\ndata: " + dumps(data) + b"\n\n"

    def _delta_event(self, text: str) -> bytes:
        self._seq += 1
        return self._delta % (self._seq, dumps(text))

    def _open_item(self, kind: str, item: dict[str, Any]) -> list[bytes]:
        self._open = kind
        self._open_id = item["id"]
        self._open_index = len(self._output)
        self._open_text = []
        index = self._open_index
        events = [self._event("response.output_item.added", {"output_index": index, "item": item})]
        ids = f'"item_id":"{self._open_id}","output_index":{index}'.encode()
        if kind == "message":
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            events.append(
                self._event(
                    "response.content_part.added",
                    {
                        "item_id": self._open_id,
                        "output_index": index,
                        "content_index": 0,
                        "part": part,
                    },
                )
            )
            name = b"response.output_text.delta"
            tail = b',"content_index":0,"delta":%s,"logprobs":[]}\n\n'
        else:
            events.append(
                self._event(
                    "response.reasoning_summary_part.added",
                    {
                        "item_id": self._open_id,
                        "output_index": index,
                        "summary_index": 0,
                        "part": {"type": "summary_text", "text": ""},
                    },
                )
            )
            name = b"response.reasoning_summary_text.delta"
            tail = b',"summary_index":0,"delta":%s}\n\n'
        self._delta = (
            b"event: " + name + b'\ndata: {"type":"' + name + b'","sequence_number":%d,'
            + ids.replace(b"%", b"%%") + tail
        )  # fmt: skip
        return events

    def _close_item(self) -> list[bytes]:
        kind, item_id, index = self._open, self._open_id, self._open_index
        if kind is None:
            return []
        text = "".join(self._open_text)
        self._open = None
        if kind == "message":
            part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
            item = message_item(item_id, text)
            events = [
                self._event(
                    "response.output_text.done",
                    {
                        "item_id": item_id,
                        "output_index": index,
                        "content_index": 0,
                        "text": text,
                        "logprobs": [],
                    },
                ),
                self._event(
                    "response.content_part.done",
                    {"item_id": item_id, "output_index": index, "content_index": 0, "part": part},
                ),
            ]
        else:
            item = reasoning_item(item_id, text)
            events = [
                self._event(
                    "response.reasoning_summary_text.done",
                    {"item_id": item_id, "output_index": index, "summary_index": 0, "text": text},
                ),
                self._event(
                    "response.reasoning_summary_part.done",
                    {
                        "item_id": item_id,
                        "output_index": index,
                        "summary_index": 0,
                        "part": {"type": "summary_text", "text": text},
                    },
                ),
            ]
        self._output.append(item)
        events.append(
            self._event("response.output_item.done", {"output_index": index, "item": item})
        )
        return events

    def _text(self, kind: str, text: str) -> list[bytes]:
        events: list[bytes] = []
        if self._open != kind:
            events += self._close_item()
            prefix = "msg_" if kind == "message" else "rs_"
            item = (
                {**message_item(_id(prefix), "", "in_progress"), "content": []}
                if kind == "message"
                else {"id": _id(prefix), "type": "reasoning", "summary": []}
            )
            events += self._open_item(kind, item)
        self._open_text.append(text)
        events.append(self._delta_event(text))
        return events

    def _calls_events(self, calls: list[dict[str, Any]]) -> list[bytes]:
        events = self._close_item()
        for call in calls:
            item = function_call_item(call)
            index = len(self._output)
            added = {**item, "arguments": "", "status": "in_progress"}
            events.append(
                self._event("response.output_item.added", {"output_index": index, "item": added})
            )
            ids = {"item_id": item["id"], "output_index": index}
            events.append(
                self._event(
                    "response.function_call_arguments.delta", {**ids, "delta": item["arguments"]}
                )
            )
            events.append(
                self._event(
                    "response.function_call_arguments.done",
                    {**ids, "arguments": item["arguments"], "name": item["name"]},
                )
            )
            self._output.append(item)
            events.append(
                self._event("response.output_item.done", {"output_index": index, "item": item})
            )
        return events

    # -- the encoder --------------------------------------------------------------------

    def encode(self, chunk: Chunk) -> bytes:
        if not self.streaming:
            self._chunks.append(chunk)
            return b""
        if self._open == "message" and not chunk.get("done"):
            # The common case, from the open item's template: a chunk of text alone.
            text = text_only(chunk.get("message"))
            if text is not None:
                self._open_text.append(text)
                return self._delta_event(text)
        events: list[bytes] = []
        if not self._seq:
            self.model = str(chunk.get("model") or self.model)
            created = self._response("in_progress")
            events.append(self._event("response.created", {"response": created}))
            events.append(self._event("response.in_progress", {"response": created}))
        message = chunk.get("message")
        if isinstance(message, dict):
            thinking = message.get("thinking")
            content = message.get("content")
            calls = message.get("tool_calls")
        else:
            thinking, content, calls = chunk.get("thinking"), chunk.get("response"), None
        if thinking:
            events += self._text("reasoning", thinking)
        if content:
            events += self._text("message", content)
        if calls:
            events += self._calls_events(calls)
        if chunk.get("done"):
            events += self._close_item()
            self._final = chunk
            response = self._response("completed", chunk)
            # As OpenAI ends a stream cut by max_output_tokens: response.incomplete.
            kind = (
                "response.incomplete"
                if response["status"] == "incomplete"
                else "response.completed"
            )
            events.append(self._event(kind, {"response": response}))
        return b"".join(events)

    def end(self) -> bytes:
        if self.streaming:
            return b""
        final = merge_chunks(self._chunks)
        self.model = str(final.get("model") or self.model)
        message = final.get("message")
        if not isinstance(message, dict):
            message = {}
        thinking, text = message.get("thinking"), message.get("content")
        calls: list[dict[str, Any]] = message.get("tool_calls") or []
        if thinking:
            self._output.append(reasoning_item(_id("rs_"), thinking))
        if text or not calls:
            self._output.append(message_item(_id("msg_"), text or ""))
        self._output += [function_call_item(call) for call in calls]
        return dumps(self._response("completed", final))


__all__ = ["ResponsesEncoder", "function_call_item", "message_item", "usage"]
