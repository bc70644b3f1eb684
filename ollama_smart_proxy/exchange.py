"""The exchange: one request's parsed body and response plan, shared by every layer.

The layer that receives a model request first (the native entry, a dialect layer such as
``OpenAICompat``, or an agent used on its own) parses the body once into an
:class:`Exchange`, stores it in the ASGI scope under :data:`SCOPE_KEY` and owns the response
pipeline (:func:`ollama_smart_proxy.entry.run_exchange`). Layers below rewrite
``exchange.request`` and register chunk transforms; nobody re-reads or re-parses the body.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

from .commands import SlashCall
from .encoding import Chunk
from .errors import Dialect
from .schemas import ModelRequest, dump_request
from .types import Scope

SCOPE_KEY = "ollama_smart_proxy"

#: The native endpoints a request may be parsed for.
Kind = Literal["chat", "generate", "embed", "embeddings", "show"]


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
    """One request's parsed body, dialect, slash commands and response transforms.

    ``raw`` holds the body as the client sent it while nothing has changed the request:
    then those very bytes go upstream. A layer that changes ``request`` calls
    :meth:`changed` (agent hooks and the command parser do it for you).
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
    #: answers.
    asked_model: str | None = None

    def __post_init__(self) -> None:
        if self.asked_model is None:
            self.asked_model = self.model

    @property
    def model(self) -> str | None:
        """The model the request names now (``name`` for ``/api/show``'s old spelling)."""
        request = self.request
        return request.model or getattr(request, "name", None)

    def changed(self) -> None:
        """Say that ``request`` was changed: it is serialised again instead of the raw body."""
        self.raw = None

    def body(self) -> bytes:
        """The request as it goes upstream: the client's own bytes when nothing changed it,
        else the request serialised once."""
        return self.raw if self.raw is not None else dump_request(self.request)


def get_exchange(scope: Scope) -> Exchange | None:
    """The exchange of this request, if a layer created one."""
    exchange = scope.get(SCOPE_KEY)
    return exchange if isinstance(exchange, Exchange) else None


__all__ = ["SCOPE_KEY", "ChunkTransform", "Exchange", "Kind", "get_exchange"]
