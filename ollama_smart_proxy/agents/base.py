"""``Agent``: the pure-ASGI middleware base class that plugins subclass."""

from __future__ import annotations

import copy
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, cast

from pydantic import BaseModel, ConfigDict, ValidationError

from .._http import side_request
from .._json import dumps, loads
from ..access_log import get_context
from ..boundary import ErrorBoundary
from ..commands import CommandSpec, SlashCall, parse_commands, split_words
from ..encoding import Chunk
from ..entry import DEFAULT_MAX_BODY, NativeEntry, native_answer, send_native, text_chunk
from ..exchange import Exchange, get_exchange
from ..routing import route_of
from ..schemas import ChatRequest, GenerateRequest, NativeRequest
from ..types import ASGIApp, Receive, Scope, Send


@dataclass
class Reply:
    """An answer made by the proxy itself, encoded like a model answer in the client's
    dialect (native, OpenAI, Responses or Anthropic; streaming or not)."""

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

    Hooks run on a fresh copy of the agent for each request (its options deep-copied), so
    ``self.x = ...`` in a hook is per-request state. ``self.exchange`` and ``self.call`` are
    set on that copy.
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
    options: Any

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
        self._words = self.command_words()
        try:
            self.options = self.Options(**options)
        except ValidationError as exc:
            raise ValueError(
                f"invalid options for agent {self.name or type(self).__name__}: {exc}"
            ) from None
        # Used alone, with no exchange made above it: the agent makes its own, with the same
        # entry and error boundary as the proxy's.
        self._alone = ErrorBoundary(NativeEntry(self._handle, max_body_bytes=max_body_bytes))

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
    def replay_key(cls, call: SlashCall) -> Hashable | None:
        """What a replayed session command overrides: of the earlier commands with the same
        key only the last is applied again (``None``, the default: each is applied)."""
        return None

    @classmethod
    def command_words(cls) -> dict[str, CommandSpec]:
        if not cls.name:
            return {}
        spec = CommandSpec(cls.name, cls.split, cls.session, cls.replay_key)
        return dict.fromkeys((cls.name, *cls.aliases), spec)

    async def call_ollama(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """Call the app below with a native request (``/api/show``...); JSON answer."""
        raw = dumps(body) if body is not None else b""
        status, data = await side_request(self.app, self._scope, method, path, raw)
        try:
            return status, loads(data) if data else None
        except ValueError:
            return status, data.decode("utf-8", "replace")

    # -- ASGI plumbing ---------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        exchange = get_exchange(scope)
        if exchange is None:
            if scope["method"] == "POST" and route_of(scope).kind in ("chat", "generate"):
                await self._alone(scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return
        await self._handle(scope, receive, send)

    async def _handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        exchange = get_exchange(scope)
        if exchange is None or exchange.kind not in ("chat", "generate"):
            await self.app(scope, receive, send)
            return
        prepare_commands(exchange, self.prefix, self._words)
        words = self._words
        current = exchange.command
        call = current if current is not None and current.name in words else None
        replays = [c for c in exchange.replays if c.name in words] if exchange.replays else []
        if call is None and not replays and self.activation != "always":
            await self.app(scope, receive, send)
            return
        exchange.changed()  # the hooks may change the request in place
        context = get_context(scope)
        if context is not None:
            context.agents.append(self.name or type(self).__name__)
        handler = copy.copy(self)
        handler.options = self.options.model_copy(deep=True)
        handler.exchange = exchange
        handler._scope = scope
        request = cast(ChatRequest | GenerateRequest, exchange.request)  # chat or generate
        for replay in replays:
            handler.call = replay
            await handler.on_request(request, replay)
        handler.call = call
        reply = await handler.on_request(request, call)
        if reply is not None:
            stream = getattr(request, "streaming", False)
            await send_native(
                send, native_answer(exchange, reply.text, thinking=reply.thinking), stream=stream
            )
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
    found = parse_commands(exchange.request, prefix, new)
    if found.changed:
        exchange.changed()
    if exchange.command is None:
        exchange.command = found.current
    exchange.replays.extend(found.replays)


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


__all__ = ["Agent", "NoOptions", "Reply", "chunk_text", "prepare_commands", "with_text"]
