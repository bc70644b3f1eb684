"""Native Ollama chunks -> OpenAI JSON and SSE (``OLLAMA_API.md`` B.3-B.7)."""

from __future__ import annotations

import base64
import secrets
import struct
import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from .._json import dumps
from ..encoding import Chunk, Encoder, merge_chunks, text_only, thinking_only

SSE_HEADERS_TYPE = b"text/event-stream"  # as Ollama's own /v1
JSON_TYPE = b"application/json"


def completion_id(prefix: str = "chatcmpl-") -> str:
    """A unique id (Ollama's own /v1 uses ``chatcmpl-<0..998>``, which repeats)."""
    return prefix + secrets.token_hex(12)


def unix_time(created_at: Any) -> int:
    """Ollama's RFC 3339 ``created_at`` (nanoseconds allowed) as Unix seconds."""
    if isinstance(created_at, str) and created_at:
        text = created_at.replace("Z", "+00:00")
        if "." in text:  # Python parses at most 6 fractional digits
            head, _, rest = text.partition(".")
            digits = "".join(c for c in rest if c.isdigit())
            text = f"{head}.{digits[:6]}{rest[len(digits) :]}"
        try:
            return int(datetime.fromisoformat(text).timestamp())
        except ValueError:
            pass
    return int(time.time())


def usage(chunk: Chunk) -> dict[str, int]:
    prompt = int(chunk.get("prompt_eval_count") or 0)
    completion = int(chunk.get("eval_count") or 0)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def tool_calls(calls: list[Any]) -> list[dict[str, Any]]:
    """Native tool calls (arguments an object) -> OpenAI ones (arguments a JSON string)."""
    out = []
    for position, call in enumerate(calls):
        function = call.get("function") or {}
        index = function.get("index")
        out.append(
            {
                "id": call.get("id") or "call_" + secrets.token_hex(4),
                "index": index if isinstance(index, int) else position,
                "type": "function",
                "function": {
                    "name": function.get("name", ""),
                    "arguments": dumps(function.get("arguments") or {}).decode(),
                },
            }
        )
    return out


def finish_reason(done_reason: Any, saw_tool_calls: bool) -> str:
    """``tool_calls`` whenever the answer called a tool, even one cut by the token limit
    (as Ollama's own /v1 says: the client is to run the call it received)."""
    reason = done_reason or "stop"
    return "tool_calls" if saw_tool_calls and reason in ("stop", "length") else str(reason)


def sse(data: Any) -> bytes:
    return b"data: " + dumps(data) + b"\n\n"


class _OpenAIEncoder(Encoder):
    def __init__(self, model: str, stream: bool, include_usage: bool = False) -> None:
        self.model = model
        self.streaming = stream
        self.include_usage = include_usage
        self._chunks: list[Chunk] = []

    def begin(self, content_type: str) -> bytes:
        return SSE_HEADERS_TYPE if self.streaming else JSON_TYPE

    def _model(self, chunk: Chunk) -> str:
        # The model the answer names: the one the client asked for (the model loader puts
        # an alias back), or the one a /load switched to.
        return str(chunk.get("model") or self.model)


#: The end of a frame whose choice is not finished.
_OPEN_END = b'},"finish_reason":null}]}\n\n'


class ChatCompletionEncoder(_OpenAIEncoder):
    """``chat.completion`` objects, or ``chat.completion.chunk`` SSE frames when streaming."""

    def __init__(self, model: str, stream: bool, include_usage: bool = False) -> None:
        super().__init__(model, stream, include_usage)
        self.id = completion_id()
        self._created: int | None = None
        self._sent_any = False
        self._saw_tool_calls = False
        self._done = False
        #: The bytes of a frame before its delta, made once the model and time are known.
        self._head = b""

    def _frame(
        self, delta: dict[str, Any], reason: str | None = None, logprobs: Any = None
    ) -> bytes:
        extra = {"logprobs": {"content": logprobs}} if logprobs else {}
        return sse(
            {
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self._created,
                "model": self.model,
                "system_fingerprint": "fp_ollama",
                "choices": [{"index": 0, "delta": delta, "finish_reason": reason, **extra}],
            }
        )

    def encode(self, chunk: Chunk) -> bytes:
        if not self.streaming:
            self._chunks.append(chunk)
            return b""
        message = chunk.get("message") or {}
        if self._head and not chunk.get("done") and "logprobs" not in chunk:
            # The common case, from a template: a chunk of text or of thinking alone.
            text = text_only(message)
            if text is not None:
                return self._head + b'{"content":' + dumps(text) + _OPEN_END
            thinking = thinking_only(message)
            if thinking is not None:
                return self._head + b'{"reasoning":' + dumps(thinking) + _OPEN_END
        if self._created is None:
            self._created = unix_time(chunk.get("created_at"))
            self.model = self._model(chunk)
            self._head = (
                b'data: {"id":"' + self.id.encode()
                + b'","object":"chat.completion.chunk","created":' + str(self._created).encode()
                + b',"model":' + dumps(self.model)
                + b',"system_fingerprint":"fp_ollama","choices":[{"index":0,"delta":'
            )  # fmt: skip
        content = message.get("content") or ""
        thinking = message.get("thinking") or ""
        calls = message.get("tool_calls") or []
        logprobs = chunk.get("logprobs")
        done = bool(chunk.get("done"))
        out = []
        trailer = done and self._sent_any and not (content or thinking or calls or logprobs)
        if not trailer:
            if thinking and (content or calls):
                first: dict[str, Any] = {"reasoning": thinking}
                if not self._sent_any:
                    first = {"role": "assistant", **first}
                out.append(self._frame(first, logprobs=logprobs))
                logprobs = None
                self._sent_any = True
                thinking = ""
            delta: dict[str, Any] = {} if self._sent_any else {"role": "assistant"}
            if not (thinking and not content and not calls):
                delta["content"] = content
            if thinking:
                delta["reasoning"] = thinking
            if calls:
                delta["tool_calls"] = tool_calls(calls)
                self._saw_tool_calls = True
            out.append(self._frame(delta, logprobs=logprobs))
            self._sent_any = True
        if done:
            self._done = True
            out.append(
                self._frame({}, finish_reason(chunk.get("done_reason"), self._saw_tool_calls))
            )
            if self.include_usage:
                out.append(
                    sse(
                        {
                            "id": self.id,
                            "object": "chat.completion.chunk",
                            "created": self._created,
                            "model": self.model,
                            "system_fingerprint": "fp_ollama",
                            "choices": [],
                            "usage": usage(chunk),
                        }
                    )
                )
        return b"".join(out)

    def end(self) -> bytes:
        if self.streaming:
            return b"data: [DONE]\n\n" if self._done else b""
        final = merge_chunks(self._chunks)
        message = final.get("message") or {}
        out_message: dict[str, Any] = {"role": "assistant", "content": message.get("content", "")}
        if message.get("thinking"):
            out_message["reasoning"] = message["thinking"]
        calls = message.get("tool_calls") or []
        if calls:
            out_message["tool_calls"] = tool_calls(calls)
        choice: dict[str, Any] = {
            "index": 0,
            "message": out_message,
            "finish_reason": finish_reason(final.get("done_reason"), bool(calls))
            if final.get("done")
            else None,
        }
        if final.get("logprobs"):
            choice["logprobs"] = {"content": final["logprobs"]}
        return dumps(
            {
                "id": self.id,
                "object": "chat.completion",
                "created": unix_time(final.get("created_at")),
                "model": self._model(final),
                "system_fingerprint": "fp_ollama",
                "choices": [choice],
                "usage": usage(final),
            }
        )


class CompletionEncoder(_OpenAIEncoder):
    """``text_completion`` objects, or SSE frames when streaming."""

    def __init__(self, model: str, stream: bool, include_usage: bool = False) -> None:
        super().__init__(model, stream, include_usage)
        self.id = completion_id("cmpl-")
        self._done = False

    def _object(self, chunk: Chunk, text: str, reason: str | None) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "text_completion",
            "created": unix_time(chunk.get("created_at")),
            "model": self._model(chunk),
            "system_fingerprint": "fp_ollama",
            "choices": [{"text": text, "index": 0, "finish_reason": reason, "logprobs": None}],
        }

    def encode(self, chunk: Chunk) -> bytes:
        if not self.streaming:
            self._chunks.append(chunk)
            return b""
        done = bool(chunk.get("done"))
        reason = str(chunk.get("done_reason") or "stop") if done else None
        frames = [sse(self._object(chunk, chunk.get("response") or "", reason))]
        if done:
            self._done = True
            if self.include_usage:
                frame = self._object(chunk, "", None)
                frame["choices"] = []
                frame["usage"] = usage(chunk)
                frames.append(sse(frame))
        return b"".join(frames)

    def end(self) -> bytes:
        if self.streaming:
            return b"data: [DONE]\n\n" if self._done else b""
        final = merge_chunks(self._chunks)
        reason = str(final.get("done_reason") or "stop") if final.get("done") else None
        body = self._object(final, final.get("response") or "", reason)
        body["usage"] = usage(final)
        return dumps(body)


class EmbeddingEncoder(_OpenAIEncoder):
    """``/api/embed``'s answer -> an OpenAI embedding list (float or base64)."""

    def __init__(self, model: str, encoding_format: str) -> None:
        super().__init__(model, stream=False)
        self.encoding_format = encoding_format

    def encode(self, chunk: Chunk) -> bytes:
        self._chunks.append(chunk)
        return b""

    def end(self) -> bytes:
        final = self._chunks[-1] if self._chunks else {}
        vectors = final.get("embeddings") or []
        data = []
        for index, vector in enumerate(vectors):
            value: Any = vector
            if self.encoding_format == "base64":
                value = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
            data.append({"object": "embedding", "embedding": value, "index": index})
        tokens = int(final.get("prompt_eval_count") or 0)
        return dumps(
            {
                "object": "list",
                "data": data,
                "model": self._model(final),
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )


def model_object(name: str, modified_at: Any) -> dict[str, Any]:
    """One entry of ``/v1/models``: ``owned_by`` is the namespace, ``library`` by default."""
    path = name.split(":", 1)[0].split("/")
    owner = path[-2] if len(path) >= 2 else "library"
    return {"id": name, "object": "model", "created": unix_time(modified_at), "owned_by": owner}


def alias_object(alias: str) -> dict[str, Any]:
    """The ``/v1/models`` entry of an alias of the proxy's."""
    return {**model_object(alias, None), "owned_by": "ollama-smart-proxy"}


def models_list(tags: dict[str, Any], aliases: Mapping[str, str] | None = None) -> dict[str, Any]:
    data = []
    for entry in tags.get("models") or []:
        if not isinstance(entry, dict):
            continue
        name = entry.get("model") or entry.get("name") or ""
        model = model_object(str(name), entry.get("modified_at"))
        if isinstance(entry.get("backends"), list):  # a fleet's: where the model is
            model["backends"] = entry["backends"]
        data.append(model)
    data += [alias_object(alias) for alias in aliases or {}]
    return {"object": "list", "data": data}


__all__ = [
    "ChatCompletionEncoder",
    "CompletionEncoder",
    "EmbeddingEncoder",
    "alias_object",
    "finish_reason",
    "model_object",
    "models_list",
    "sse",
    "tool_calls",
    "usage",
]
