"""``Agent``: the pure-ASGI middleware base class that plugins subclass."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, ValidationError
from starlette._utils import get_route_path

from .._streaming import ResponseWriter
from ..encoders import Chunk, dumps, now_rfc3339
from ..errors import ProxyError, RequestError, dialect_for_path, send_proxy_error
from ..exchange import (
    ClientDisconnected,
    Exchange,
    call_native,
    call_with_exchange,
    get_exchange,
    parse_exchange,
)
from ..schemas import ChatRequest, GenerateRequest, NativeRequest
from ..types import ASGIApp, Receive, Scope, Send
from ._commands import CommandSpec, SlashCall, prepare_request, split_words

DEFAULT_MAX_BODY = 64 * 1024 * 1024
_KINDS = {"/api/chat": "chat", "/api/generate": "generate"}


@dataclass
class Reply:
    """An answer made by the proxy itself, encoded like a model answer in the client's
    dialect (native or OpenAI, streaming or not)."""

    text: str
    thinking: str | None = None


class NoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


def chunk_text(chunk: Chunk) -> str:
    """The answer text of a native chunk, chat (``message.content``) or generate (``response``)."""
    message = chunk.get("message")
    if isinstance(message, dict):
        return str(message.get("content") or "")
    return str(chunk.get("response") or "")


def with_text(chunk: Chunk, text: str) -> Chunk:
    """A copy of ``chunk`` whose answer text is ``text``."""
    chunk = dict(chunk)
    if isinstance(chunk.get("message"), dict):
        chunk["message"] = {**chunk["message"], "content": text}
    else:
        chunk["response"] = text
    return chunk


def text_chunk(exchange: Exchange, text: str, *, thinking: str | None = None) -> Chunk:
    """A new native content chunk for this exchange (chat or generate)."""
    model = exchange.request.model or ""
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


async def send_reply(exchange: Exchange, reply: Reply, send: Send) -> None:
    """Answer with ``reply`` as if the model had said it: one content chunk and a final one,
    through the transforms registered so far and the exchange's encoder."""
    exchange.response_handled = True
    writer = ResponseWriter(exchange, send)
    streaming = getattr(exchange.request, "streaming", False)
    content_type = b"application/x-ndjson" if streaming else b"application/json; charset=utf-8"
    await writer.start(200, [(b"content-type", content_type)])
    final = text_chunk(exchange, "")
    final.update(done=True, done_reason="stop", total_duration=0, eval_count=0, prompt_eval_count=0)
    await writer.chunks([text_chunk(exchange, reply.text, thinking=reply.thinking), final])
    await writer.end()


class Agent:
    """Base class of agents: pure ASGI middleware around any app that speaks Ollama.

    Subclasses set ``name`` (their slash-command word), ``summary``, ``usage``,
    ``priority`` (lower runs first, outermost), ``activation`` (``"slash"``: only when
    the command is used; ``"always"``: every chat/generate request), ``session`` (an
    earlier command-only message is re-applied on later requests), ``arity`` (the words the
    command takes; ``None``: the rest of the first line) and an ``Options`` pydantic model;
    and override the hooks:

    - ``on_request(request, call)``: change the native request in place, or return a
      ``Reply`` to answer without the model;
    - ``on_chunk(chunk)``: change, drop (``None``) or pass each native response chunk;
    - ``on_end(text)``: at the end of the answer, return text to append (or, with
      ``buffer = True``, ``text`` is the whole answer and the return value replaces it).

    Hooks run on a fresh copy of the agent for each request, so ``self.x = ...`` in a hook
    is per-request state. ``self.exchange`` and ``self.call`` are set on that copy.
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    usage: ClassVar[str] = ""
    priority: ClassVar[int] = 100
    activation: ClassVar[Literal["slash", "always"]] = "slash"
    session: ClassVar[bool] = False
    arity: ClassVar[int | None] = 0
    aliases: ClassVar[tuple[str, ...]] = ()
    buffer: ClassVar[bool] = False
    Options: ClassVar[type[BaseModel]] = NoOptions

    exchange: Exchange
    call: SlashCall | None

    def __init__(
        self,
        app: ASGIApp,
        *,
        prefix: str = "/",
        max_body_bytes: int = DEFAULT_MAX_BODY,
        **options: Any,
    ) -> None:
        if not prefix:
            raise ValueError("prefix must not be empty")
        self.app = app
        self.prefix = prefix
        self.max_body_bytes = max_body_bytes
        self._words = self.command_words()
        try:
            self.options: Any = self.Options(**options)
        except ValidationError as exc:
            raise ValueError(
                f"invalid options for agent {self.name or type(self).__name__}: {exc}"
            ) from exc

    # -- what a subclass overrides -------------------------------------------------------

    async def on_request(self, request: NativeRequest, call: SlashCall | None) -> Reply | None:
        if call is not None and not call.prompt and not call.replay:
            return Reply(self.acknowledge(call))
        return None

    async def on_chunk(self, chunk: Chunk) -> Chunk | None:
        return chunk

    async def on_end(self, text: str | None) -> str | None:
        return None

    def acknowledge(self, call: SlashCall) -> str:
        """The reply to a command-only message."""
        if self.session:
            return f"{self.prefix}{self.name} is on for the rest of this conversation."
        return f"Usage: {self.usage or self.prefix + self.name}"

    @classmethod
    def split(cls, text: str) -> tuple[list[str], str]:
        """Split the text after the command word into ``(args, prompt)``."""
        return split_words(cls.arity)(text)

    @classmethod
    def command_words(cls) -> dict[str, CommandSpec]:
        if not cls.name:
            return {}
        spec = CommandSpec(cls.name, cls.split, cls.session)
        return dict.fromkeys((cls.name, *cls.aliases), spec)

    async def call_ollama(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """Call the app below with a native request (``/api/show``...); JSON answer."""
        import json

        raw = dumps(body) if body is not None else b""
        status, data = await call_native(self.app, self._scope, method, path, raw)
        try:
            return status, json.loads(data) if data else None
        except ValueError:
            return status, data.decode("utf-8", "replace")

    # -- ASGI plumbing ---------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        exchange = get_exchange(scope)
        if exchange is None:
            path = get_route_path(scope)
            kind = _KINDS.get(path)
            if kind is None:
                await self.app(scope, receive, send)
                return
            try:
                exchange = await parse_exchange(scope, receive, kind, self.max_body_bytes)  # type: ignore[arg-type]
            except ClientDisconnected:
                return
            except ProxyError as exc:
                await send_proxy_error(send, dialect_for_path(path), exc)
                return
            await call_with_exchange(self._handle, scope, receive, send, exchange, path)
            return
        if exchange.kind not in ("chat", "generate"):
            await self.app(scope, receive, send)
            return
        await self._handle(scope, receive, send)

    async def _handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        exchange = get_exchange(scope)
        if exchange is None:  # pragma: no cover - __call__ always puts one there
            raise RuntimeError("agent called without an exchange")
        prepare_commands(exchange, self.prefix, self._words)
        words = self._words
        current: SlashCall | None = exchange.command
        call = current if current is not None and current.name in words else None
        replays = [c for c in exchange.replays if c.name in words] if exchange.replays else []
        if call is None and not replays and self.activation != "always":
            await self.app(scope, receive, send)
            return
        exchange.changed = True  # the hooks may change the request in place
        handler = copy.copy(self)
        handler.exchange = exchange
        handler._scope = scope
        request = exchange.request
        try:
            for replay in replays:
                handler.call = replay
                await handler.on_request(request, replay)
            handler.call = call
            reply = await handler.on_request(request, call)
        except ProxyError as exc:
            await send_proxy_error(send, exchange.dialect, exc)
            return
        if reply is not None:
            await send_reply(exchange, reply, send)
            return
        if handler._wants_response():
            exchange.transforms.append(_Transform(handler))
        await self.app(scope, receive, send)

    def _wants_response(self) -> bool:
        cls = type(self)
        return cls.buffer or cls.on_chunk is not Agent.on_chunk or cls.on_end is not Agent.on_end

    _scope: Scope


def prepare_commands(exchange: Exchange, prefix: str, words: dict[str, CommandSpec]) -> None:
    """Parse commands once per set of words; the first command found is the current one."""
    known = exchange.parsed_words
    if not words or words.keys() <= known:
        return
    new = {word: spec for word, spec in words.items() if word not in known}
    known.update(new)
    if not isinstance(exchange.request, ChatRequest | GenerateRequest):
        return
    current, replays, touched = prepare_request(exchange.request, prefix, new)
    if touched:
        exchange.changed = True
    if exchange.command is None:
        exchange.command = current
    exchange.replays.extend(replays)


class _Transform:
    """The per-request response side of an agent, as the pipeline calls it."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.held: list[Chunk] = []

    async def on_chunk(self, chunk: Chunk) -> Chunk | None:
        if self.agent.buffer and not chunk.get("done"):
            self.held.append(chunk)
            return None
        return await self.agent.on_chunk(chunk)

    async def on_end(self) -> list[Chunk]:
        exchange = self.agent.exchange
        if not self.agent.buffer:
            extra = await self.agent.on_end(None)
            return [text_chunk(exchange, extra)] if extra else []
        held, self.held = self.held, []
        replacement = await self.agent.on_end("".join(chunk_text(c) for c in held))
        return held if replacement is None else [text_chunk(exchange, replacement)]


__all__ = [
    "Agent",
    "NoOptions",
    "Reply",
    "RequestError",
    "SlashCall",
    "chunk_text",
    "text_chunk",
    "with_text",
]
