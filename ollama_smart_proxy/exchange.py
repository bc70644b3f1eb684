"""The exchange: one request's parsed body and response plan, shared by every layer.

The first layer that needs a chat or generate body parses it once into an
:class:`Exchange` and stores it in the ASGI scope under :data:`SCOPE_KEY`. Later layers
rewrite ``exchange.request`` and register chunk transforms; the terminal layer serialises
the request once and runs the response through the transforms and the encoder once.

A layer used on its own, in front of an ASGI app that knows nothing of exchanges, gets the
same behaviour from :func:`call_with_exchange`: the inner app reads the (rewritten) body
from ``receive`` and its response is decoded, transformed and encoded on the way out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import anyio

from ._logging import get_context
from .encoders import Chunk, Encoder, NativeEncoder
from .errors import Dialect, RequestTooLarge, UpstreamError
from .schemas import NativeRequest, dump_request, parse_request
from .types import ASGIApp, Message, Receive, Scope, Send

SCOPE_KEY = "ollama_smart_proxy"

Kind = Literal["chat", "generate", "embed", "embeddings", "models", "model", "other"]


class ChunkTransform(Protocol):
    """What an agent registers to see the response, chunk by chunk."""

    async def on_chunk(self, chunk: Chunk) -> Chunk | None:
        """Return the chunk (changed or not), or ``None`` to drop it."""
        ...

    async def on_end(self) -> list[Chunk]:
        """Called when the final (``done``) chunk arrives; returns chunks to add before it."""
        ...


@dataclass(eq=False)
class Exchange:
    """One request's parsed body, dialect, slash command and response plan."""

    kind: Kind
    request: NativeRequest
    dialect: Dialect = "ollama"
    #: The slash command of the latest user message (a ``SlashCall``), if any.
    command: Any = None
    #: Session commands found earlier in the history, to apply again, in order.
    replays: list[Any] = field(default_factory=list)
    #: The command words already parsed for (parsing runs once per word).
    parsed_words: set[str] = field(default_factory=set)
    transforms: list[ChunkTransform] = field(default_factory=list)
    encoder: Encoder | None = None
    state: dict[str, Any] = field(default_factory=dict)
    #: Set by the layer that runs the response pipeline, so no outer layer runs it again.
    response_handled: bool = False
    #: The body as the client sent it, when it was native: sent upstream as it is unless a
    #: layer changed the request. A layer that changes ``request`` outside an agent hook
    #: sets ``changed`` (agents that run and the command parser do it for you).
    raw: bytes | None = field(default=None, repr=False)
    changed: bool = False
    _body: bytes | None = field(default=None, init=False, repr=False)

    @property
    def model(self) -> str | None:
        return self.request.model

    def get_encoder(self) -> Encoder:
        if self.encoder is None:
            self.encoder = NativeEncoder()
        return self.encoder

    def body(self) -> bytes:
        """The request as it goes upstream (call it once every layer is done): the client's
        own bytes when nothing changed, else the request serialised once."""
        if self.raw is not None and not self.changed:
            self._body = self.raw
        else:
            self._body = dump_request(self.request)
        return self._body


def get_exchange(scope: Scope) -> Exchange | None:
    """The exchange of this request, if a layer created one."""
    exchange = scope.get(SCOPE_KEY)
    return exchange if isinstance(exchange, Exchange) else None


def header(scope: Scope, name: bytes) -> bytes | None:
    """The first value of request header ``name`` (lower case)."""
    for key, value in scope["headers"]:
        if key == name:
            return value  # type: ignore[no-any-return]
    return None


async def read_body(scope: Scope, receive: Receive, max_bytes: int) -> bytes:
    """Read the whole request body, refusing more than ``max_bytes`` (413)."""
    length = header(scope, b"content-length")
    if length is not None and length.isdigit() and int(length) > max_bytes:
        raise RequestTooLarge(_too_large(max_bytes))
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > max_bytes:
            raise RequestTooLarge(_too_large(max_bytes))
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _too_large(max_bytes: int) -> str:
    return (
        f"request body is larger than the limit of {max_bytes} bytes "
        "(raise OSP_MAX_BODY_BYTES to allow it)"
    )


class ClientDisconnected(Exception):
    """The client went away before its request body was read."""


async def parse_exchange(
    scope: Scope, receive: Receive, kind: Literal["chat", "generate", "embed"], max_bytes: int
) -> Exchange:
    """Read and parse a native body into a new exchange (raises ``RequestError``)."""
    body = await read_body(scope, receive, max_bytes)
    return Exchange(kind=kind, request=parse_request(kind, body), raw=body)


MAX_NATIVE_ANSWER = 16 * 1024 * 1024
_BODY_HEADERS = (b"content-length", b"content-type", b"transfer-encoding")


def json_body_headers(
    headers: list[tuple[bytes, bytes]], length: int | None = None
) -> list[tuple[bytes, bytes]]:
    """The client's headers for a JSON body of ours (its own body headers replaced)."""
    kept = [(key, value) for key, value in headers if key not in _BODY_HEADERS]
    kept.append((b"content-type", b"application/json"))
    if length is not None:
        kept.append((b"content-length", str(length).encode()))
    return kept


async def call_native(
    app: ASGIApp, scope: Scope, method: str, path: str, body: bytes = b""
) -> tuple[int, bytes]:
    """Call ``app`` with a small native request of our own and collect its answer.

    Used for side requests (``/api/tags``, ``/api/show``) made on behalf of a client
    request; the client's headers are kept, the body and path are ours.
    """
    inner = dict(scope)
    inner.pop(SCOPE_KEY, None)
    inner.update(
        method=method,
        path=scope.get("root_path", "") + path,
        raw_path=path.encode(),
        query_string=b"",
        headers=json_body_headers(scope["headers"], len(body)),
    )
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await anyio.sleep_forever()  # no client behind a side request: never "disconnects"
        raise AssertionError("unreachable")  # pragma: no cover

    status = 500
    chunks: list[bytes] = []
    size = 0

    async def collect(message: Message) -> None:
        nonlocal status, size
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            size += len(message.get("body", b""))
            if size > MAX_NATIVE_ANSWER:
                raise UpstreamError("Ollama's answer to a side request is too large")
            chunks.append(message.get("body", b""))

    await app(inner, receive, collect)
    return status, b"".join(chunks)


async def call_with_exchange(
    app: ASGIApp,
    scope: Scope,
    receive: Receive,
    send: Send,
    exchange: Exchange,
    path: str,
    *,
    inner_encodes: bool = False,
) -> None:
    """Call ``app`` with ``exchange`` in its scope at ``path``.

    Whatever the inner app is, it can read the exchange's body from ``receive``, and its
    native response is decoded, transformed and encoded here unless a layer below (the
    terminal layer) already did it. ``inner_encodes=True`` says the app below always does
    (the proxy's own stack), so ``send`` is passed through unwrapped.
    """
    from ._streaming import ResponseWriter  # circular: _streaming uses Exchange

    context = get_context(scope)
    if context is not None:  # the access log names the model
        context.exchange = exchange
    scope = dict(scope)
    scope[SCOPE_KEY] = exchange
    scope["path"] = scope.get("root_path", "") + path
    scope["raw_path"] = scope["path"].encode()
    scope["method"] = "POST"
    scope["headers"] = json_body_headers(scope["headers"])
    body_sent = False

    async def replay_receive() -> Message:
        nonlocal body_sent
        if not body_sent:
            body_sent = True
            # The terminal layer may have serialised it already (a watcher asks again).
            body = exchange._body if exchange._body is not None else exchange.body()
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    if inner_encodes:
        await app(scope, replay_receive, send)
        return

    writer: ResponseWriter | None = None

    async def transforming_send(message: Message) -> None:
        nonlocal writer
        kind = message["type"]
        if kind == "http.response.start":
            if exchange.response_handled:
                await send(message)
                return
            exchange.response_handled = True
            writer = ResponseWriter(exchange, send)
            await writer.start(message["status"], list(message.get("headers", [])))
        elif writer is None:
            await send(message)
        elif kind == "http.response.body":
            await writer.feed(message.get("body", b""))
            if not message.get("more_body", False):
                await writer.end()

    await app(scope, replay_receive, transforming_send)
