"""The proxy's exceptions, and the one place where an error is written in a client's dialect.

Exception tree::

    SmartProxyError (ProxyError)    500  anything the proxy refuses or cannot do
    ├── BadRequest (RequestError)   400  body empty, not JSON, or fails validation; bad path
    │   ├── FieldError              400  one field of a translated request (``param``)
    │   ├── RequestTimeout          408  the body did not arrive within body_timeout
    │   └── RequestTooLarge         413  body over a limit (bytes, messages, objects)
    ├── AuthenticationError         401  no API key, or a wrong one
    ├── PermissionDenied            403  the key may not use this route or model
    ├── ModelNotFound               404  the model is not installed (and may not be pulled)
    ├── LoopDetected                508  the proxy is its own upstream
    ├── Overloaded                  503  the admission queue is full, or the wait too long
    ├── ShuttingDown                503  a stream still going when the shutdown grace ends
    ├── ClientTooSlow               ...  the client took no data for write_timeout (logged)
    └── UpstreamError               502  Ollama unreachable, closed early, or answered junk
        ├── UpstreamTimeout         504  Ollama did not answer in time
        ├── UpstreamStatusError     ...  Ollama answered with an error status (kept)
        └── LineTooLong             502  a line of Ollama's answer is over max_line_bytes

    ClientDisconnected                   the client left before its request was read: not
                                         an error to answer (nobody is there)

``SmartProxyError`` and ``BadRequest`` are the names to use; ``ProxyError`` and
``RequestError`` are the same classes under their first names (httpx has exceptions of
those names, for other things).

Layers raise these; :class:`~ollama_smart_proxy.boundary.ErrorBoundary` turns them into a
response in the client's dialect with :func:`render_error`, or, once the response has
started, ends the stream with :func:`render_stream_error`. Nothing else writes errors.
"""

from __future__ import annotations

from typing import Any, Literal

from ._json import dumps

#: The API dialects a client may speak: Ollama's own, OpenAI's Chat Completions (and
#: completions, embeddings, models), OpenAI's Responses, Anthropic's Messages.
Dialect = Literal["ollama", "openai", "responses", "anthropic"]

_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    408: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}

_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}


class SmartProxyError(Exception):
    """Base class: an error with an HTTP status, rendered in the client's dialect.

    ``param`` names the request field it is about; ``code`` is a machine-readable code
    (OpenAI's ``code``); ``headers`` are added to the error response (``Retry-After``).
    """

    status_code: int = 500
    #: The OpenAI error ``type``, where it is not the one the status implies.
    openai_type: str | None = None

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        param: str | None = None,
        code: str | None = None,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if status_code is not None:
            self.status_code = status_code
        self.param = param
        self.code = code
        self.headers = headers or []


#: The first name of :class:`SmartProxyError`.
ProxyError = SmartProxyError


class BadRequest(SmartProxyError):
    """The request is malformed: body empty, not JSON, fails validation, or a bad path."""

    status_code = 400


#: The first name of :class:`BadRequest`.
RequestError = BadRequest


class FieldError(BadRequest):
    """A 400 about one request field, named in ``param``."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message, param=param, code=code)


class RequestTimeout(BadRequest):
    """The client did not send its whole body within ``body_timeout``."""

    status_code = 408


class RequestTooLarge(BadRequest):
    """The request is over a limit: ``max_body_bytes``, ``max_messages``."""

    status_code = 413


class AuthenticationError(ProxyError):
    """No API key, or one the proxy does not know."""

    status_code = 401
    openai_type = "invalid_request_error"  # as OpenAI's own API answers a bad key

    def __init__(self, message: str) -> None:
        super().__init__(
            message, code="invalid_api_key", headers=[(b"www-authenticate", b"Bearer")]
        )


class PermissionDenied(ProxyError):
    """The key is known but may not use this route or model."""

    status_code = 403


class ModelNotFound(ProxyError):
    """The model is not installed, and auto-pull may not (or could not) fetch it."""

    status_code = 404

    def __init__(self, message: str, *, model: str | None = None) -> None:
        super().__init__(message, code="model_not_found")
        self.model = model


class LoopDetected(ProxyError):
    """The request came back to the proxy that sent it: the upstream is the proxy itself."""

    status_code = 508


class ShuttingDown(ProxyError):
    """The proxy is shutting down: a stream still going at the end of the grace period."""

    status_code = 503


class Overloaded(ProxyError):
    """Too many requests wait for Ollama: the queue is full, or the wait was too long."""

    status_code = 503

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message, headers=[(b"retry-after", str(retry_after).encode())])
        self.retry_after = retry_after


class RateLimited(ProxyError):
    """A key reached one of its limits (``Retry-After`` says when to try again)."""

    status_code = 429

    def __init__(
        self,
        message: str,
        *,
        retry_after: int,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        super().__init__(
            message,
            code="rate_limit_exceeded",
            headers=[(b"retry-after", str(retry_after).encode()), *(headers or [])],
        )
        self.retry_after = retry_after


class ClientTooSlow(ProxyError):
    """The client took no data for ``write_timeout`` seconds: its response was ended (there
    is nobody reading to tell; the log and the metrics say it)."""

    status_code = 408


class UpstreamError(ProxyError):
    """Ollama is unreachable, closed the connection early, or sent something invalid."""

    status_code = 502
    #: Whether the request surely never reached Ollama (no connection could be made): it
    #: may be sent elsewhere. Set by the one place transport exceptions are mapped.
    unsent: bool = False


class UpstreamTimeout(UpstreamError):
    """Ollama did not answer (or send the next bytes) within the configured timeout."""

    status_code = 504


class UpstreamStatusError(UpstreamError):
    """Ollama answered with an error status; its status and message are kept."""

    def __init__(self, message: str, *, status_code: int) -> None:
        code = "model_not_found" if status_code == 404 and "not found" in message else None
        super().__init__(message, status_code=status_code, code=code)


class LineTooLong(UpstreamError):
    """A line in an upstream stream is longer than the configured bound."""


class ClientDisconnected(Exception):
    """The client went away before its request was read: there is nobody to answer."""


def openai_error_type(status_code: int) -> str:
    """The OpenAI error ``type`` for an HTTP status, as Ollama's own /v1 picks it."""
    return _OPENAI_TYPES.get(status_code, "api_error")


def anthropic_error_type(status_code: int) -> str:
    """The Anthropic error ``type`` for an HTTP status."""
    return _ANTHROPIC_TYPES.get(status_code, "api_error")


def error_object(
    dialect: Dialect, exc: ProxyError, request_id: str | None = None
) -> dict[str, Any]:
    """The JSON error body of ``exc`` in ``dialect`` (Anthropic's names the request id)."""
    if dialect in ("openai", "responses"):
        return {
            "error": {
                "message": exc.message,
                "type": exc.openai_type or openai_error_type(exc.status_code),
                "param": exc.param,
                "code": exc.code,
            }
        }
    if dialect == "anthropic":
        body: dict[str, Any] = {
            "type": "error",
            "error": {"type": anthropic_error_type(exc.status_code), "message": exc.message},
        }
        if request_id:
            body["request_id"] = request_id
        return body
    return {"error": exc.message}


def render_error(
    dialect: Dialect, exc: ProxyError, request_id: str | None = None
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """A whole error response: status, headers, body."""
    body = dumps(error_object(dialect, exc, request_id))
    # As Ollama writes them: gin's JSON for native errors, a plain type for its /v1 ones.
    content_type = (
        b"application/json; charset=utf-8" if dialect == "ollama" else b"application/json"
    )
    headers = [
        (b"content-type", content_type),
        (b"content-length", str(len(body)).encode()),
        *exc.headers,
    ]
    return exc.status_code, headers, body


def render_stream_error(dialect: Dialect, exc: ProxyError) -> bytes:
    """The bytes that end a stream that failed after it began, as each dialect's clients
    expect them: Ollama's final ``{"error"}`` line; an SSE event the OpenAI and Anthropic
    SDKs raise on."""
    body = error_object(dialect, exc)
    if dialect == "ollama":
        return dumps(body) + b"\n"
    if dialect == "openai":
        return b"data: " + dumps(body) + b"\n\n"
    if dialect == "responses":
        event = {
            "type": "error",
            "code": body["error"]["type"],
            "message": exc.message,
            "param": exc.param,
            "sequence_number": 0,
            # openai-python raises APIError for an event whose data carries ``error``.
            "error": body["error"],
        }
        return b"event: error\ndata: " + dumps(event) + b"\n\n"
    return b"event: error\ndata: " + dumps(body) + b"\n\n"


__all__ = [
    "AuthenticationError",
    "BadRequest",
    "ClientDisconnected",
    "ClientTooSlow",
    "Dialect",
    "FieldError",
    "LineTooLong",
    "LoopDetected",
    "ModelNotFound",
    "Overloaded",
    "PermissionDenied",
    "ProxyError",
    "RequestError",
    "RequestTimeout",
    "RequestTooLarge",
    "ShuttingDown",
    "SmartProxyError",
    "UpstreamError",
    "UpstreamStatusError",
    "UpstreamTimeout",
    "anthropic_error_type",
    "error_object",
    "openai_error_type",
    "render_error",
    "render_stream_error",
]
