"""The exchange: one model request's parsed body, response plan and record.

The entry that receives a model request (:class:`~ollama_smart_proxy.entry.ModelEntry`, in
any dialect) parses the body once into an :class:`Exchange`, stores it in the ASGI scope
under :data:`SCOPE_KEY` and owns its response pipeline. Layers below rewrite
``exchange.request`` and register chunk transforms; nobody re-reads or re-parses the body.

The exchange is also the request's record: the model asked and used, the key it was made
with, the agents that ran, the tokens Ollama counted, when it went to Ollama and when Ollama
answered, and the backend that served it. Each fact has one writer (named on the field);
the access log and the metrics only read them. A side request (an agent's ``call_ollama``,
``/show``, the loader's pulls) has an exchange of its own and never touches the client's.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from ._json import now_rfc3339
from .commands import CommandSpec, SlashCall, parse_commands
from .encoding import Chunk
from .errors import Dialect
from .kinds import COMPLETION_KINDS, ExchangeKind
from .schemas import ChatRequest, GenerateRequest, ModelRequest, ShowRequest, dump_request
from .types import Scope

if TYPE_CHECKING:
    from ._keys import ApiKey

SCOPE_KEY = "ollama_smart_proxy"

#: The native endpoints a request may be parsed for (the exchange kinds).
Kind = ExchangeKind

#: How an answer made by the proxy itself reaches the client: native chunks, as objects.
Answer = Callable[[list[Chunk]], Awaitable[None]]


class ChunkTransform(Protocol):
    """What a layer registers to see the response, chunk by chunk."""

    async def on_chunk(self, chunk: Chunk) -> Chunk | None:
        """Return the chunk (changed or not), or ``None`` to drop it."""
        ...

    async def on_end(self) -> list[Chunk]:
        """Called when the final (``done``) chunk arrives; returns chunks to add before it."""
        ...


@dataclass(eq=False)
class Exchange:
    """One model request: its parsed body, dialect, slash commands, response transforms,
    and its record.

    ``raw`` holds the body as the client sent it while nothing has changed the request:
    then those very bytes go upstream. A layer that changes ``request`` calls
    :meth:`changed` (agent hooks and the command parser do it for you, only when they did
    change it).
    """

    kind: Kind
    request: ModelRequest
    dialect: Dialect = "ollama"
    #: The slash command of the latest user message, if any.
    command: SlashCall | None = None
    #: Session commands found earlier in the history, to apply again, in order.
    replays: list[SlashCall] = field(default_factory=list)
    #: The command words already parsed for (parsing runs once per word).
    parsed_words: set[str] = field(default_factory=set)
    transforms: list[ChunkTransform] = field(default_factory=list)
    raw: bytes | None = field(default=None, repr=False)
    #: The model the client asked for, as it named it (before aliases), for logs and
    #: answers. Written when the exchange is made; the loader fills in the default model.
    asked_model: str | None = None

    # -- the record: one writer each ------------------------------------------------------
    #: The key the request was made with (written by the entry, from ``ApiKeys``' scope).
    key: ApiKey | None = None
    #: The agents whose hooks ran, outermost first (written by the agents' base class).
    agents: list[str] = field(default_factory=list)
    #: Tokens in and out, decoded once from Ollama's final chunk (by the response pipeline).
    prompt_tokens: int = 0
    completion_tokens: int = 0
    #: Seconds Ollama spent loading the model for it (``load_duration``; the pipeline).
    load_seconds: float = 0.0
    #: Tokens of the side requests made for it (an agent's ``call_ollama``), charged to the
    #: same key (written by ``side_request``).
    side_prompt_tokens: int = 0
    side_completion_tokens: int = 0
    #: When the body went to Ollama, and when Ollama's answer began (``perf_counter``;
    #: written by the response pipeline; 0 until then).
    forwarded: float = 0.0
    answered: float = 0.0
    #: The name of the backend that served it, why it was chosen (``affinity``, ``loaded``,
    #: ``cold``, ``failover``...) and the milliseconds choosing took, queueing included
    #: (written by the fleet, the layer that chose it).
    backend: str | None = None
    backend_reason: str | None = None
    routing_ms: float = 0.0
    #: Where an answer made by the proxy itself goes (set by the owner of the pipeline).
    answer: Answer | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.asked_model is None:
            self.asked_model = self.model

    @property
    def model(self) -> str | None:
        """The model the request names now (``name`` for ``/api/show``'s old spelling)."""
        request = self.request
        if request.model:
            return request.model
        # The deprecated spelling, on /api/show only: elsewhere a "name" is an unknown field.
        name = request.name if isinstance(request, ShowRequest) else None
        return name or None

    def parse_commands(self, prefix: str, words: dict[str, CommandSpec]) -> None:
        """Parse the slash commands of ``words`` once (the stack's, then an agent's own):
        the first command found is the current one, session commands are replays."""
        known = self.parsed_words
        if not words or words.keys() <= known or self.kind not in COMPLETION_KINDS:
            return
        new = {word: spec for word, spec in words.items() if word not in known}
        known.update(new)
        if not isinstance(self.request, ChatRequest | GenerateRequest):
            return
        found = parse_commands(self.request, prefix, new)
        if found.changed:
            self.changed()
        if self.command is None:
            self.command = found.current
        self.replays.extend(found.replays)

    def changed(self) -> None:
        """Say that ``request`` was changed: it is serialised again instead of the raw body."""
        self.raw = None

    def body(self) -> bytes:
        """The request as it goes upstream: the client's own bytes when nothing changed it,
        else the request serialised once. Marks the time it was forwarded."""
        self.forwarded = time.perf_counter()
        return self.raw if self.raw is not None else dump_request(self.request)

    def server_timing(self, started: float, now: float) -> str:
        """``Server-Timing``: the time spent in the proxy before the request went to Ollama
        (parsing, agents, queueing, pulls), and Ollama's time to answer."""
        if not self.forwarded:
            timing = f"proxy;dur={(now - started) * 1000:.1f}"
        else:
            proxy = (self.forwarded - started) * 1000
            upstream = ((self.answered or now) - self.forwarded) * 1000
            timing = f"proxy;dur={proxy:.1f}, upstream;dur={upstream:.1f}"
        if self.backend is not None:
            timing += (
                f', route;dur={self.routing_ms:.2f};desc="{self.backend} {self.backend_reason}"'
            )
        return timing


def get_exchange(scope: Scope) -> Exchange | None:
    """The exchange of this request, if a layer created one."""
    exchange = scope.get(SCOPE_KEY)
    return exchange if isinstance(exchange, Exchange) else None


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


def native_answer(exchange: Exchange, text: str, *, thinking: str | None = None) -> list[Chunk]:
    """The native chunks of an answer made by the proxy itself (a ``Reply``): one content
    chunk and a final one, as Ollama would stream them."""
    content = text_chunk(exchange, text, thinking=thinking)
    final = text_chunk(exchange, "")
    final.update(done=True, done_reason="stop", total_duration=0, eval_count=0, prompt_eval_count=0)
    return [content, final]


__all__ = [
    "SCOPE_KEY",
    "Answer",
    "ChunkTransform",
    "Exchange",
    "Kind",
    "get_exchange",
    "native_answer",
    "text_chunk",
]
