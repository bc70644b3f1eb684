"""Where a model request becomes an exchange, and who owns its response pipeline.

:func:`run_exchange` is the one place that puts an :class:`~.exchange.Exchange` in the
scope, replays its body (serialised once, when the app below first reads it) and wraps
``send`` in the :class:`~._pipeline.ResponseWriter` that encodes the answer for the client.
Every owner of an exchange calls it: :class:`NativeEntry` for Ollama's own routes, the
dialect layers (``OpenAICompat``, ...) for theirs, and an agent used on its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ._http import json_request_headers, read_body, replay_receive
from ._json import dumps, now_rfc3339
from ._ndjson import DEFAULT_MAX_LINE_BYTES
from ._pipeline import ResponseWriter
from .access_log import get_context
from .encoding import Chunk, Encoder, NativeEncoder, merge_chunks
from .errors import RequestError
from .exchange import SCOPE_KEY, Exchange, Kind
from .routing import ROUTE_KEY, route_of
from .schemas import (
    count_containers,
    parse_json_body,
    parse_request,
    too_many_messages,
    too_many_objects,
)
from .types import ASGIApp, Message, Receive, Scope, Send

#: Native endpoints whose bodies are parsed into an exchange (each names a model).
PARSED_KINDS: dict[str, Kind] = {
    "chat": "chat",
    "generate": "generate",
    "embed": "embed",
    "embeddings": "embeddings",
    "show": "show",
}

DEFAULT_MAX_BODY = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class BodyLimits:
    """What every entry of a model request bounds: the body's bytes, its messages, its JSON
    objects and arrays, and the longest line the answer may carry."""

    max_body_bytes: int = DEFAULT_MAX_BODY
    max_messages: int | None = None
    max_json_objects: int | None = None
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES

    def __post_init__(self) -> None:
        if self.max_body_bytes <= 0 or self.max_line_bytes <= 0:
            raise ValueError("limits must be positive")

    async def read(self, scope: Scope, receive: Receive) -> bytes:
        """Read the whole body, refusing (413) more bytes than ``max_body_bytes`` and more
        JSON objects and arrays than ``max_json_objects``.

        The objects are counted on each piece as it arrives, so counting never holds the
        event loop for more than one read, and a flood is refused before the rest of it is
        read.
        """
        limit = self.max_json_objects
        if limit is None:
            return await read_body(scope, receive, self.max_body_bytes)
        counted = 0

        async def counting() -> Message:
            nonlocal counted
            message = await receive()
            counted += count_containers(message.get("body", b""))
            if counted > limit:
                raise too_many_objects(limit)
            return message

        return await read_body(scope, counting, self.max_body_bytes)

    async def read_object(self, scope: Scope, receive: Receive) -> dict[str, Any]:
        """Read and parse a dialect's JSON object body once, or raise a 400 (413) that says
        what is wrong."""
        raw = await self.read(scope, receive)
        if not raw.strip():
            raise RequestError("the request body is empty; send a JSON object")
        body = parse_json_body(raw)
        if not isinstance(body, dict):
            raise RequestError("the request body must be a JSON object")
        return body

    def check_messages(self, items: object) -> None:
        """413 for a list of messages (or input items) longer than ``max_messages``."""
        limit = self.max_messages
        if limit is not None and isinstance(items, list) and len(items) > limit:
            raise too_many_messages(len(items), limit)


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
    ``/api/chat``); the dialect of the route stays the client's.
    """
    context = get_context(scope)
    if context is not None:  # the access log names the model
        context.exchange = exchange
    inner = dict(scope)
    inner[SCOPE_KEY] = exchange
    if path is not None:
        inner[ROUTE_KEY] = route_of(scope).rewritten(path)
        inner["path"] = scope.get("root_path", "") + path
        inner["raw_path"] = inner["path"].encode()
        inner["method"] = "POST"
        inner["query_string"] = b""
    inner["headers"] = json_request_headers(scope["headers"])
    # The body is serialised once, when the app below first reads it: by then every layer
    # above it has rewritten the request.
    body_receive = replay_receive(exchange.body, receive)
    await app(inner, body_receive, ResponseWriter(send, exchange, encoder, max_line_bytes))


class NativeEntry:
    """Parse the body of a native model request (chat, generate, embed, embeddings, show)
    once into an exchange, and own its response pipeline; other requests pass through.

    ``NativeEntry(app, *, max_body_bytes=64 MiB, max_messages=None, max_json_objects=None,
    max_line_bytes=16 MiB)``.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int = DEFAULT_MAX_BODY,
        max_messages: int | None = None,
        max_json_objects: int | None = None,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    ) -> None:
        self.app = app
        self.limits = BodyLimits(max_body_bytes, max_messages, max_json_objects, max_line_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or SCOPE_KEY in scope:
            await self.app(scope, receive, send)
            return
        kind = PARSED_KINDS.get(route_of(scope).kind)
        if kind is None:
            await self.app(scope, receive, send)
            return
        limits = self.limits
        body = await limits.read(scope, receive)
        request = parse_request(kind, body, limits.max_messages)
        exchange = Exchange(kind, request, raw=body)
        await run_exchange(
            self.app,
            scope,
            receive,
            send,
            exchange,
            NativeEncoder(),
            max_line_bytes=limits.max_line_bytes,
        )


def native_answer(exchange: Exchange, text: str, *, thinking: str | None = None) -> list[Chunk]:
    """The native chunks of an answer made by the proxy itself (a ``Reply``): one content
    chunk and a final one, as Ollama would stream them."""
    content = text_chunk(exchange, text, thinking=thinking)
    final = text_chunk(exchange, "")
    final.update(done=True, done_reason="stop", total_duration=0, eval_count=0, prompt_eval_count=0)
    return [content, final]


def text_chunk(exchange: Exchange, text: str, *, thinking: str | None = None) -> Chunk:
    """A new native content chunk for this exchange (chat or generate)."""
    model = exchange.model or ""
    if exchange.kind == "generate":
        chunk: Chunk = {"model": model, "created_at": now_rfc3339(), "response": text}
        if thinking:
            chunk["thinking"] = thinking
    else:
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if thinking:
            message["thinking"] = thinking
        chunk = {"model": model, "created_at": now_rfc3339(), "message": message}
    chunk["done"] = False
    return chunk


async def send_native(send: Send, chunks: list[Chunk], *, stream: bool) -> None:
    """Answer as Ollama would: NDJSON lines when streaming, else one merged JSON object.

    For a layer that answers in Ollama's place (an agent's ``Reply``): the pipeline above
    encodes it for the client like any answer from Ollama.
    """
    if stream:
        body = b"".join(dumps(chunk) + b"\n" for chunk in chunks)
        content_type = b"application/x-ndjson"
    else:
        body = dumps(merge_chunks(chunks))
        content_type = b"application/json; charset=utf-8"
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


__all__ = [
    "PARSED_KINDS",
    "BodyLimits",
    "NativeEntry",
    "native_answer",
    "run_exchange",
    "send_native",
    "text_chunk",
]
