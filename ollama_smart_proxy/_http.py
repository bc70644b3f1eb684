"""Small ASGI helpers every layer shares: headers, bodies in and out, side requests."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable

import anyio

from .errors import ClientDisconnected, RequestTooLarge, UpstreamError
from .routing import ROUTE_KEY, resolve_path
from .types import ASGIApp, Message, Receive, Scope, Send

JSON = b"application/json"
JSON_UTF8 = b"application/json; charset=utf-8"

#: Largest answer collected from a side request (``/api/tags``, ``/api/show``).
MAX_SIDE_ANSWER = 16 * 1024 * 1024

_BODY_HEADERS = (b"content-length", b"content-type", b"transfer-encoding")


def header(scope: Scope, name: bytes) -> bytes | None:
    """The first value of request header ``name`` (lower case)."""
    for key, value in scope["headers"]:
        if key == name:
            return value  # type: ignore[no-any-return]
    return None


def too_large_message(max_bytes: int) -> str:
    return (
        f"request body is larger than the limit of {max_bytes} bytes "
        "(raise OSP_MAX_BODY_BYTES to allow it)"
    )


async def read_body(scope: Scope, receive: Receive, max_bytes: int) -> bytes:
    """Read the whole request body, refusing more than ``max_bytes`` (413) from its
    ``Content-Length`` or while counting. Raises ``ClientDisconnected`` if the client left."""
    length = header(scope, b"content-length")
    if length is not None and length.isdigit() and int(length) > max_bytes:
        raise RequestTooLarge(too_large_message(max_bytes))
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > max_bytes:
            raise RequestTooLarge(too_large_message(max_bytes))
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def replay_receive(body: bytes | Callable[[], bytes], then: Receive) -> Receive:
    """A ``receive`` that gives ``body`` (or what the callable returns, when first asked)
    as the whole request, then hands over to ``then`` (disconnects)."""
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            data = body if isinstance(body, bytes) else body()
            return {"type": "http.request", "body": data, "more_body": False}
        return await then()

    return receive


async def _never_disconnects() -> Message:
    await anyio.sleep_forever()
    raise AssertionError("unreachable")  # pragma: no cover


def json_request_headers(
    headers: Iterable[tuple[bytes, bytes]], length: int | None = None
) -> list[tuple[bytes, bytes]]:
    """The client's headers for a JSON request body of ours (its own body headers replaced)."""
    kept = [(key, value) for key, value in headers if key not in _BODY_HEADERS]
    kept.append((b"content-type", JSON))
    if length is not None:
        kept.append((b"content-length", str(length).encode()))
    return kept


async def send_body(
    send: Send,
    status: int,
    body: bytes,
    content_type: bytes = JSON,
    headers: Iterable[tuple[bytes, bytes]] = (),
) -> None:
    """Send ``body`` as the whole response, with its ``content-length``."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


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


async def side_request(
    app: ASGIApp,
    scope: Scope | None,
    method: str,
    path: str,
    body: bytes = b"",
    *,
    sink: Sink | None = None,
) -> tuple[int, bytes]:
    """Call ``app`` with a small native request of our own and collect its answer.

    For requests made on behalf of a client request (``/api/tags`` for ``/v1/models``,
    ``/api/show`` for ``/show``), ``scope`` is the client's: its headers are kept (its key
    too), the path, method and body are ours, and nobody can disconnect it. With no scope
    the request is the proxy's own (a pull, a preload). ``sink`` receives the body as it
    comes instead of collecting it.
    """
    base = scope if scope is not None else _BASE_SCOPE
    inner = {key: value for key, value in base.items() if not key.startswith("ollama_smart_proxy")}
    inner.update(
        method=method,
        path=base.get("root_path", "") + path,
        raw_path=path.encode(),
        query_string=b"",
        headers=json_request_headers(base["headers"], len(body)),
    )
    for key in ("ollama_smart_proxy.context", "ollama_smart_proxy.key"):
        if key in base:  # the request's log record and key stay the client's
            inner[key] = base[key]
    inner[ROUTE_KEY] = resolve_path(path.encode())
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

    await app(inner, replay_receive(body, _never_disconnects), collect)
    return status, b"".join(chunks)


__all__ = [
    "JSON",
    "JSON_UTF8",
    "header",
    "json_request_headers",
    "read_body",
    "replay_receive",
    "send_body",
    "side_request",
    "too_large_message",
]
