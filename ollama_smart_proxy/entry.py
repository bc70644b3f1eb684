"""``ModelEntry``: where a model request becomes an exchange, in any dialect.

One entry layer serves every wire format; what differs between them is data, a
:class:`Dialect` per format: the route family it serves, and for each of its routes the
methods allowed and either a translation (the body into one native exchange and the encoder
that writes the answer back) or an answer of the proxy's own (``/v1/models``,
``count_tokens``). The entry reads the body within its :class:`~._limits.BodyLimits`, asks
the dialect, and hands the exchange to :func:`~._pipeline.run_exchange`. Errors are
rendered in the dialect's shape by the error boundary (:mod:`~.errors`), from the route.

``NativeEntry``, ``OpenAICompat``, ``ResponsesCompat`` and ``AnthropicCompat`` are this
layer with one dialect each; ``SmartProxy`` builds it with all four. A new dialect is one
module that makes its :class:`Dialect`, and one row in ``SmartProxy``'s list.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Unpack

from ._http import send_body
from ._limits import BodyLimits, LimitOptions
from ._pipeline import run_exchange
from .encoding import Encoder, NativeEncoder
from .errors import ProxyError
from .exchange import SCOPE_KEY, Exchange
from .kinds import PARSED_KINDS
from .routing import Family, route_of
from .types import ASGIApp, Receive, Scope, Send


class Translation(NamedTuple):
    """A client's request as one native exchange: the exchange, the encoder of its answer,
    and the native path it runs on (``None``: the path it came on)."""

    exchange: Exchange
    encoder: Encoder
    path: str | None = None


#: A route's body (read within the limits) translated into one native exchange.
Translate = Callable[[bytes, BodyLimits], Translation]
#: A route the proxy answers itself: ``(scope, body, limits, the app below) -> JSON body``.
Serve = Callable[[Scope, bytes, BodyLimits, ASGIApp], Awaitable[bytes]]


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One route of a dialect: the methods it allows, and what the entry does with it."""

    methods: tuple[str, ...]
    translate: Translate | None = None
    serve: Serve | None = None

    def __post_init__(self) -> None:
        if (self.translate is None) == (self.serve is None):
            raise ValueError("an endpoint either translates or serves")


@dataclass(frozen=True, slots=True)
class Dialect:
    """A wire format the entry speaks: its ``name`` (the shape of its errors), the route
    ``family`` it serves, its ``endpoints`` by route kind, and whether a method an endpoint
    does not allow is refused with a 405 (``refuse_methods``) or passed on to Ollama."""

    name: str
    family: Family
    endpoints: Mapping[str, Endpoint] = field(default_factory=dict)
    refuse_methods: bool = True


class ModelEntry:
    """Parse a model request once into an exchange, in the client's dialect, and own its
    response pipeline; requests no dialect serves pass through to ``app``.

    ``ModelEntry(app, *, dialects, max_body_bytes=64 MiB, max_messages=None,
    max_json_objects=None, max_line_bytes=16 MiB)``.
    """

    def __init__(
        self, app: ASGIApp, *, dialects: Sequence[Dialect], **limits: Unpack[LimitOptions]
    ) -> None:
        families = [dialect.family for dialect in dialects]
        if len(set(families)) != len(families):
            raise ValueError(f"two dialects serve one route family: {families}")
        self.app = app
        self.dialects = {dialect.family: dialect for dialect in dialects}
        self.limits = BodyLimits(**limits)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or SCOPE_KEY in scope:
            await self.app(scope, receive, send)
            return
        route = route_of(scope)
        dialect = self.dialects.get(route.family)
        endpoint = dialect.endpoints.get(route.kind) if dialect is not None else None
        if dialect is None or endpoint is None:
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        if method not in endpoint.methods:
            if not dialect.refuse_methods:
                await self.app(scope, receive, send)
                return
            raise ProxyError(
                f"{method} is not allowed on {route.path}; use {' or '.join(endpoint.methods)}",
                status_code=405,
                headers=[(b"allow", ", ".join(endpoint.methods).encode())],
            )
        limits = self.limits
        raw = await limits.read(scope, receive) if method == "POST" else b""
        if endpoint.serve is not None:
            await send_body(send, 200, await endpoint.serve(scope, raw, limits, self.app))
            return
        assert endpoint.translate is not None  # one of the two, checked when it was made
        exchange, encoder, path = endpoint.translate(raw, limits)
        await run_exchange(
            self.app,
            scope,
            receive,
            send,
            exchange,
            encoder,
            path=path,
            max_line_bytes=limits.max_line_bytes,
        )


def _native(kind: str) -> Translate:
    exchange_kind = PARSED_KINDS[kind]

    def translate(raw: bytes, limits: BodyLimits) -> Translation:
        request = limits.parse_native(kind, raw)
        return Translation(Exchange(exchange_kind, request, raw=raw), NativeEncoder())

    return translate


#: Ollama's own API: the routes whose bodies name a model are parsed (every other native
#: route, and other methods, pass through to Ollama as they are).
NATIVE = Dialect(
    "ollama",
    "native",
    {kind: Endpoint(("POST",), translate=_native(kind)) for kind in PARSED_KINDS},
    refuse_methods=False,
)


class NativeEntry(ModelEntry):
    """The entry for Ollama's own routes (chat, generate, embed, embeddings, show):
    ``NativeEntry(app, *, max_body_bytes=64 MiB, max_messages=None, max_json_objects=None,
    max_line_bytes=16 MiB)``."""

    def __init__(self, app: ASGIApp, **limits: Unpack[LimitOptions]) -> None:
        super().__init__(app, dialects=[NATIVE], **limits)


__all__ = [
    "NATIVE",
    "Dialect",
    "Endpoint",
    "ModelEntry",
    "NativeEntry",
    "Serve",
    "Translate",
    "Translation",
]
