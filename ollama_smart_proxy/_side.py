"""Side requests: a small native request of the proxy's own, to the app below.

``/api/show`` for ``/v1/models/{id}`` and ``/show``, an agent's ``call_ollama``, the
loader's ``/api/tags``, pulls and preloads. A side request to a model route has an exchange
of its own (made from the object, with no JSON round trip), so the layers below treat it as
any model request (aliases, a key's models); it never touches the client's exchange or log
record.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import anyio
from pydantic import ValidationError

from ._http import json_request_headers, replay_receive
from ._json import dumps
from ._keys import KEY_SCOPE_KEY
from ._pipeline import run_exchange
from .encoding import NativeEncoder
from .errors import RequestError, UpstreamError
from .exchange import SCOPE_KEY, Exchange
from .kinds import PARSED_KINDS
from .routing import ROUTE_KEY, resolve_path
from .schemas import REQUEST_TYPES, describe_validation_error
from .types import ASGIApp, Message, Scope

#: Largest answer collected from a side request (``/api/tags``, ``/api/show``).
MAX_SIDE_ANSWER = 16 * 1024 * 1024

#: Receives the body of a side request's answer, piece by piece.
Sink = Callable[[bytes], Awaitable[None]]

_BASE_SCOPE: Scope = {
    "type": "http",
    "asgi": {"version": "3.0", "spec_version": "2.3"},
    "http_version": "1.1",
    "scheme": "http",
    "root_path": "",
    "headers": [],
    "client": None,
    "server": None,
}


async def never_disconnects() -> Message:
    """A ``receive`` for a request of the proxy's own: nobody is there to leave."""
    await anyio.sleep_forever()
    raise AssertionError("unreachable")  # pragma: no cover


async def side_request(
    app: ASGIApp,
    scope: Scope | None,
    method: str,
    path: str,
    body: Mapping[str, Any] | None = None,
    *,
    sink: Sink | None = None,
) -> tuple[int, bytes]:
    """Call ``app`` with a small native request of our own and collect its answer.

    For requests made on behalf of a client request (``/api/tags`` for ``/v1/models``,
    ``/api/show`` for ``/show``), ``scope`` is the client's: its headers and its key are
    kept, the path, method and body are ours, and nobody can disconnect it. With no scope
    the request is the proxy's own (a pull, a preload). ``sink`` receives the body as it
    comes instead of collecting it.
    """
    base = scope if scope is not None else _BASE_SCOPE
    route = resolve_path(path.encode())
    inner = {key: value for key, value in base.items() if not key.startswith("ollama_smart_proxy")}
    inner.update(method=method, path=base.get("root_path", "") + path, raw_path=route.raw_path)
    inner["query_string"] = b""
    if KEY_SCOPE_KEY in base:  # the client's key goes with it: its models are checked
        inner[KEY_SCOPE_KEY] = base[KEY_SCOPE_KEY]
    inner[ROUTE_KEY] = route
    status = 500
    chunks: list[bytes] = []
    size = 0

    async def collect(message: Message) -> None:
        nonlocal status, size
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            data = message.get("body", b"")
            if sink is not None and status < 400:
                await sink(data)
                return
            size += len(data)
            if size > MAX_SIDE_ANSWER:
                raise UpstreamError("Ollama's answer to a side request is too large")
            chunks.append(data)

    kind = PARSED_KINDS.get(route.kind) if method == "POST" else None
    if kind is not None:
        try:
            request = REQUEST_TYPES[kind].model_validate(dict(body or {}))
        except ValidationError as exc:
            message = describe_validation_error(exc)
            raise RequestError(f"a side request to {path} is invalid: {message}") from None
        inner["headers"] = json_request_headers(base["headers"])
        exchange = Exchange(kind, request)
        await run_exchange(app, inner, never_disconnects, collect, exchange, NativeEncoder())
        parent = base.get(SCOPE_KEY)
        if isinstance(parent, Exchange):  # made for a client's request: charged to it
            parent.side_prompt_tokens += exchange.prompt_tokens
            parent.side_completion_tokens += exchange.completion_tokens
    else:
        raw = dumps(body) if body is not None else b""
        inner["headers"] = json_request_headers(base["headers"], len(raw))
        await app(inner, replay_receive(raw, never_disconnects), collect)
    return status, b"".join(chunks)


__all__ = ["MAX_SIDE_ANSWER", "Sink", "never_disconnects", "side_request"]
