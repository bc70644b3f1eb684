"""``ModelEntry``: where a model request becomes an exchange, in any dialect.

One entry layer serves every wire format; what differs between them is data, a
:class:`Dialect` per format: the route family it serves, and for each of its routes the
methods allowed and either a translation (the body into one native exchange and the encoder
that writes the answer back) or an answer of the proxy's own (``/v1/models``,
``count_tokens``). The entry reads the body within its :class:`BodyLimits` (checked here,
in one place, for every dialect), asks
the dialect, and hands the exchange to :func:`~._pipeline.run_exchange`. Errors are
rendered in the dialect's shape by the error boundary (:mod:`~.errors`), from the route.

``NativeEntry``, ``OpenAICompat``, ``ResponsesCompat`` and ``AnthropicCompat`` are this
layer with one dialect each; ``SmartProxy`` builds it with all four. A new dialect is one
module that makes its :class:`Dialect`, and one row in ``SmartProxy``'s list.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypedDict, Unpack

from pydantic import ValidationError

from ._http import DEFAULT_MAX_BODY, read_body, send_body
from ._json import json_type
from ._ndjson import DEFAULT_MAX_LINE_BYTES
from ._pipeline import run_exchange
from .encoding import Encoder, NativeEncoder
from .errors import ProxyError, RequestError, RequestTooLarge
from .exchange import SCOPE_KEY, Exchange
from .kinds import PARSED_KINDS
from .routing import Family, route_of
from .schemas import (
    REQUEST_TYPES,
    ModelRequest,
    check_ollama_reads_what_we_read,
    describe_validation_error,
    parse_json_body,
)
from .types import ASGIApp, Message, Receive, Scope, Send

#: The fewest bytes a message takes in a JSON array: ``{"role":""},``.
_MIN_MESSAGE_BYTES = 12


def too_many_messages(count: int, limit: int, param: str = "messages") -> RequestTooLarge:
    return RequestTooLarge(
        f"the request has {count} {param}, more than the limit of {limit} "
        "(raise OSP_MAX_MESSAGES to allow it)",
        param=param,
    )


def too_many_objects(limit: int) -> RequestTooLarge:
    return RequestTooLarge(
        f"the request body holds more than {limit} JSON objects and arrays "
        "(raise OSP_MAX_JSON_OBJECTS to allow it)"
    )


def count_containers(data: bytes) -> int:
    """An upper bound of the JSON objects and arrays in ``data`` (a brace or bracket inside
    a string counts too), at C speed: what ``max_json_objects`` is checked against before
    any parser spends seconds on millions of tiny objects."""
    return data.count(b"{") + data.count(b"[")


class LimitOptions(TypedDict, total=False):
    """The keyword options every entry layer takes (``**limits``)."""

    max_body_bytes: int
    max_messages: int | None
    max_json_objects: int | None
    max_line_bytes: int


@dataclass(frozen=True, slots=True)
class BodyLimits:
    """The body's bytes, its messages, its JSON objects and arrays, and the longest line
    the answer may carry."""

    max_body_bytes: int = DEFAULT_MAX_BODY
    max_messages: int | None = None
    max_json_objects: int | None = None
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES

    def __post_init__(self) -> None:
        if self.max_body_bytes <= 0 or self.max_line_bytes <= 0:
            raise ValueError("limits must be positive")
        for name in ("max_messages", "max_json_objects"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive (or None: no limit)")

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

    def parse_object(self, raw: bytes) -> dict[str, Any]:
        """A dialect's JSON object body, parsed once, or a 400 that says what is wrong."""
        if not raw.strip():
            raise RequestError("the request body is empty; send a JSON object")
        body = parse_json_body(raw)
        if not isinstance(body, dict):
            raise RequestError("the request body must be a JSON object")
        return body

    def check_messages(self, items: object, param: str = "messages") -> None:
        """413 for a list of messages (or input items) longer than ``max_messages``."""
        limit = self.max_messages
        if limit is not None and isinstance(items, list) and len(items) > limit:
            raise too_many_messages(len(items), limit, param)

    def parse_native(self, kind: str, raw: bytes) -> ModelRequest:
        """A native request body (``kind``: chat, generate, embed, embeddings, show), parsed
        and validated once; a 400 (413) that names what is wrong."""
        model = REQUEST_TYPES[kind]
        limit = self.max_messages
        if raw[:1] == b"{" and (limit is None or len(raw) < _MIN_MESSAGE_BYTES * limit):
            # A body too small to break a limit: pydantic parses and validates in one pass.
            try:
                return model.model_validate_json(raw)
            except ValidationError as exc:
                raise RequestError(describe_validation_error(exc)) from None
        if not raw.strip():
            raise RequestError("missing request body")
        value = parse_json_body(raw)
        if value is None:  # Ollama reads `null` as an empty object
            return model()
        if not isinstance(value, dict):
            raise RequestError(f"request body must be a JSON object, not {json_type(value)}")
        self.check_messages(value.get("messages"))
        try:
            return model.model_validate(value)
        except ValidationError as exc:
            raise RequestError(describe_validation_error(exc)) from None


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
        check_ollama_reads_what_we_read(request)  # the client's own bytes go upstream
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
    "BodyLimits",
    "Dialect",
    "Endpoint",
    "LimitOptions",
    "ModelEntry",
    "NativeEntry",
    "Serve",
    "Translate",
    "Translation",
    "count_containers",
    "too_many_messages",
    "too_many_objects",
]
