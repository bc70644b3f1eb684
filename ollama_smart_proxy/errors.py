"""The proxy's exceptions, and how an error is written in each API dialect.

Exception tree::

    ProxyError                  500  anything the proxy refuses or cannot do
    ├── RequestError            400  body empty, not JSON, or fails validation
    │   └── RequestTooLarge     413  body over ``max_body_bytes``
    ├── ModelNotFound           404  the model is not installed
    └── UpstreamError           502  Ollama unreachable, or closed before answering
        └── UpstreamTimeout     504  Ollama did not answer in time

A layer raises one of these before the response has started; ``SmartProxy`` (or a
standalone ``Agent``) turns it into a response in the client's dialect. After the
response has started, the streaming code ends the stream in the protocol's own way.
"""

from __future__ import annotations

from typing import Any, Literal

from ._responses import send_body
from .encoders import dumps
from .types import Send

Dialect = Literal["ollama", "openai"]

_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


class ProxyError(Exception):
    """Base class: an error with an HTTP status, rendered in the client's dialect."""

    status_code: int = 500

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if status_code is not None:
            self.status_code = status_code
        self.param = param
        self.code = code


class RequestError(ProxyError):
    """The request body is empty, not JSON, or fails validation."""

    status_code = 400


class RequestTooLarge(RequestError):
    """The request body is larger than ``max_body_bytes``."""

    status_code = 413


class ModelNotFound(ProxyError):
    """The model named by the request is not installed."""

    status_code = 404

    def __init__(self, message: str, *, model: str | None = None) -> None:
        super().__init__(message, code="model_not_found")
        self.model = model


class UpstreamError(ProxyError):
    """Ollama is unreachable or closed the connection before answering."""

    status_code = 502


class UpstreamTimeout(UpstreamError):
    """Ollama did not answer within the configured timeout."""

    status_code = 504


def openai_error_type(status_code: int) -> str:
    """The OpenAI error ``type`` for an HTTP status, as Ollama's own /v1 picks it."""
    return _OPENAI_TYPES.get(status_code, "api_error")


def error_body(
    dialect: Dialect,
    message: str,
    status_code: int,
    *,
    param: str | None = None,
    code: str | None = None,
) -> dict[str, Any]:
    """The JSON error object in a dialect: ``{"error": "..."}`` or OpenAI's nested one."""
    if dialect == "openai":
        return {
            "error": {
                "message": message,
                "type": openai_error_type(status_code),
                "param": param,
                "code": code,
            }
        }
    return {"error": message}


async def send_error(
    send: Send,
    dialect: Dialect,
    message: str,
    status_code: int,
    *,
    param: str | None = None,
    code: str | None = None,
) -> None:
    """Send a complete JSON error response."""
    body = dumps(error_body(dialect, message, status_code, param=param, code=code))
    await send_body(send, status_code, body, b"application/json; charset=utf-8")


async def send_proxy_error(send: Send, dialect: Dialect, exc: ProxyError) -> None:
    """Send ``exc`` as a complete JSON error response in ``dialect``."""
    await send_error(
        send,
        dialect,
        exc.message,
        exc.status_code,
        param=exc.param,
        code=exc.code if dialect == "openai" else None,
    )


def dialect_for_path(path: str) -> Dialect:
    """The dialect a client speaks, judged from the path alone."""
    return "openai" if path.startswith("/v1/") or path == "/v1" else "ollama"
