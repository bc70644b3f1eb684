"""``Agent``: the pure-ASGI middleware base class that plugins subclass."""

from __future__ import annotations

import copy
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, cast

from pydantic import BaseModel, ConfigDict, ValidationError

from .._json import loads
from .._side import side_request
from ..commands import CommandSpec, SlashCall, split_words
from ..encoding import Chunk
from ..errors import ProxyError
from ..exchange import Exchange, get_exchange, native_answer, text_chunk
from ..kinds import COMPLETION_KINDS
from ..routing import route_of
from ..schemas import ChatRequest, GenerateRequest, NativeRequest
from ..types import ASGIApp, Receive, Scope, Send

#: What every agent has from the base class: never copied per request.
_BASE_ATTRIBUTES = frozenset({"app", "prefix", "_words", "options"})


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

    Per-request state: hooks run on a fresh copy of the agent for each request. Every
    attribute ``__init__`` set (and the options) is deep-copied into it, so ``self.seen =
    []`` in ``__init__`` starts empty for every request and ``self.x = ...`` in a hook is
    this request's alone. State meant to be shared by every request (a cache) is named in
    the class attribute ``shared`` and is not copied. ``self.exchange`` and ``self.call``
    are set on that copy; ``self.prompt`` is the text the model will see (the latest user
    message, or the generate prompt), to read and to change.

    An agent acts on an exchange made above it (by ``SmartProxy``'s entry, or, used on its
    own, by :func:`ollama_smart_proxy.standalone`).
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
    #: Attributes set in ``__init__`` that every request shares (not copied per request).
    shared: ClassVar[frozenset[str]] = frozenset()
    Options: ClassVar[type[BaseModel]] = NoOptions

    exchange: Exchange
    call: SlashCall | None
    options: Any

    def __init__(
        self,
        app: ASGIApp,
        *,
        prefix: str = "/",
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
        spec = CommandSpec(cls.name, cls.split, cls.session, cls.replay_key, cls.took_effect)
        return dict.fromkeys((cls.name, *cls.aliases), spec)

    @classmethod
    def took_effect(cls, answer: str) -> bool:
        """Whether this session command took effect, judged from the proxy's answer to it
        (a command that failed is not replayed on later turns). By default, it did."""
        return True

    @property
    def prompt(self) -> str:
        """The text the model will see: the latest user message (chat) or the prompt
        (generate), after the command was taken out of it."""
        request = self.exchange.request
        if isinstance(request, GenerateRequest):
            return request.prompt or ""
        if isinstance(request, ChatRequest):
            for message in reversed(request.messages or ()):
                if message.role == "user":
                    return message.content
        return ""

    @prompt.setter
    def prompt(self, text: str) -> None:
        request = self.exchange.request
        if isinstance(request, GenerateRequest):
            request.prompt = text
            return
        if isinstance(request, ChatRequest):
            for message in reversed(request.messages or ()):
                if message.role == "user":
                    message.content = text
                    return
        raise ValueError("this request has no user message to hold a prompt")

    async def call_ollama(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """Call the app below with a native request of the agent's own (``/api/show``...),
        as a side request: its own exchange, the client's key; JSON answer."""
        status, data = await side_request(self.app, self._scope, method, path, body)
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
            if scope["method"] == "POST" and route_of(scope).kind in COMPLETION_KINDS:
                raise ProxyError(
                    f"the agent {type(self).__name__} found no exchange: used on its own, "
                    "wrap it as ollama_smart_proxy.standalone(agent)"
                )
            await self.app(scope, receive, send)
            return
        if not await self.handle(exchange, scope):
            await self.app(scope, receive, send)

    def activated(self, exchange: Exchange) -> bool:
        """Whether this request activates the agent: its command (or a replay of it), or
        ``activation = "always"``."""
        if self.activation == "always":
            return True
        words = self._words
        current = exchange.command
        if current is not None and current.name in words:
            return True
        return any(call.name in words for call in exchange.replays)

    async def handle(self, exchange: Exchange, scope: Scope) -> bool:
        """Run the hooks for one exchange if it activates the agent; ``True`` when the
        agent answered it (a ``Reply``) and nothing is to go further."""
        if exchange.kind not in COMPLETION_KINDS:
            return False
        exchange.parse_commands(self.prefix, self._words)
        if not self.activated(exchange):
            return False
        words = self._words
        current = exchange.command
        call = current if current is not None and current.name in words else None
        replays = [c for c in exchange.replays if c.name in words] if exchange.replays else []
        exchange.agents.append(self.name or type(self).__name__)
        handler = self._fresh()
        handler.exchange = exchange
        handler._scope = scope
        request = cast(ChatRequest | GenerateRequest, exchange.request)  # chat or generate
        # While the client's own bytes would go upstream, they stay unless a hook changed
        # the request: compared with a copy taken before the hooks ran.
        before = request.model_copy(deep=True) if exchange.raw is not None else None
        for replay in replays:
            handler.call = replay
            await handler.on_request(request, replay)
        handler.call = call
        reply = await handler.on_request(request, call)
        if before is not None and exchange.request != before:
            exchange.changed()
        if reply is not None:
            if exchange.answer is None:
                raise ProxyError("an agent's reply has nowhere to go: no entry owns the exchange")
            await exchange.answer(native_answer(exchange, reply.text, thinking=reply.thinking))
            return True
        if handler._wants_response():
            exchange.transforms.append(_Transform(handler))
        return False

    def _fresh(self) -> Agent:
        """This agent's copy for one request: what ``__init__`` set is deep-copied, but the
        plumbing and what ``shared`` names."""
        handler = copy.copy(self)
        keep = _BASE_ATTRIBUTES | self.shared
        for name, value in vars(self).items():
            if name not in keep:
                setattr(handler, name, copy.deepcopy(value))
        handler.options = self.options.model_copy(deep=True)
        return handler

    def _wants_response(self) -> bool:
        cls = type(self)
        return cls.buffer or cls.on_chunk is not Agent.on_chunk or cls.on_end is not Agent.on_end

    _scope: Scope


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


__all__ = ["Agent", "NoOptions", "Reply", "chunk_text", "with_text"]
