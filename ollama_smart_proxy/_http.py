"""Small ASGI helpers every layer shares: headers, bodies in and out."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from .errors import ClientDisconnected, RequestTooLarge
from .types import Message, Receive, Scope, Send

JSON = b"application/json"

#: The default bound of a request body: 64 MiB, as base64 images are large.
DEFAULT_MAX_BODY = 64 * 1024 * 1024

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


__all__ = [
    "DEFAULT_MAX_BODY",
    "JSON",
    "header",
    "json_request_headers",
    "read_body",
    "replay_receive",
    "send_body",
    "too_large_message",
]
