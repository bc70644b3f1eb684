"""Access log: one line per request, text or JSON, with an ``X-Request-ID``.

:class:`RequestContext` holds what the log line says of the HTTP request: its id, the
client, the status, the bytes sent, the key's name (written by ``ApiKeys``) and the error
(written by the error boundary). What it says of a model request (the model asked and used,
the agents, the tokens, the timings) it reads from the request's exchange, which owns them.
It lives in the scope under one key, shared by every copy of the scope.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from .routing import route_of
from .types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from .errors import ProxyError
    from .exchange import Exchange

access_logger = logging.getLogger("ollama_smart_proxy.access")

CONTEXT_KEY = "ollama_smart_proxy.context"
_VALID_ID = re.compile(rb"^[A-Za-z0-9._:-]{1,128}$")
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\\\"]")


@dataclass(eq=False)
class RequestContext:
    """One HTTP request's log record (what the model request did is on ``exchange``)."""

    request_id: str
    client: str = "-"
    started: float = field(default_factory=time.perf_counter)
    #: The model request's exchange, linked by the entry that made it.
    exchange: Exchange | None = None
    #: The name of the API key the request was made with (never the key).
    key: str | None = None
    #: The response status once ``http.response.start`` went out (0 before).
    status: int = 0
    bytes: int = 0
    #: Why the request failed, when it did (also after a stream began with status 200).
    error: ProxyError | None = None


def get_context(scope: Scope) -> RequestContext | None:
    context = scope.get(CONTEXT_KEY)
    return context if isinstance(context, RequestContext) else None


def escape(text: str) -> str:
    """``text`` with control characters, quotes and backslashes escaped: what came from a
    client cannot forge a log line."""
    return _UNPRINTABLE.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


#: Told of each request when its answer has ended: (scope, record, time to first body byte).
Observer = Callable[[Scope, RequestContext, float], None]


class AccessLog:
    """Give every request an id (``X-Request-ID`` in, or a new one), return it in the
    response headers with ``Server-Timing``, and log one line when the response ends.

    ``AccessLog(app, observers=())``: each observer (the metrics) is told of every request
    when its answer has ended, from the same record the log line is made of.
    """

    def __init__(self, app: ASGIApp, *, observers: Sequence[Observer] = ()) -> None:
        self.app = app
        self.observers = list(observers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = None
        for key, value in scope["headers"]:
            if key == b"x-request-id":
                incoming = value
                break
        request_id = (
            incoming.decode() if incoming and _VALID_ID.match(incoming) else os.urandom(16).hex()
        )
        client = scope.get("client")
        context = RequestContext(request_id, f"{client[0]}:{client[1]}" if client else "-")
        scope = dict(scope)
        scope[CONTEXT_KEY] = context
        route_of(scope)  # decided once, here, for every layer below
        id_header = (b"x-request-id", request_id.encode())
        first = 0.0

        async def logging_send(message: Message) -> None:
            nonlocal first
            if message["type"] == "http.response.body":
                body = message.get("body", b"")
                if body and not first:
                    first = time.perf_counter()
                context.bytes += len(body)
            elif message["type"] == "http.response.start":
                context.status = message["status"]
                now = time.perf_counter()
                exchange = context.exchange
                timing = (
                    exchange.server_timing(context.started, now)
                    if exchange is not None
                    else f"proxy;dur={(now - context.started) * 1000:.1f}"
                )
                message = dict(message)
                message["headers"] = [
                    *message.get("headers", []),
                    id_header,
                    (b"server-timing", timing.encode()),
                ]
            await send(message)

        try:
            await self.app(scope, receive, logging_send)
        finally:
            for observer in self.observers:
                observer(scope, context, first)
            if access_logger.isEnabledFor(logging.INFO):
                log_request(scope, context, first)


def outcome(status: int, error: ProxyError | None) -> str:
    """What became of a request, for the audit trail: ``ok``, ``refused`` (a key, a policy
    or a limit said no), ``client_error``, or ``error`` (the proxy or Ollama failed)."""
    if error is None and 0 < status < 400:
        return "ok"
    if status in (401, 403, 429):
        return "refused"
    if 400 <= status < 500:
        return "client_error"
    return "error"


def log_request(scope: Scope, context: RequestContext, first_byte: float = 0.0) -> None:
    exchange = context.exchange
    asked = exchange.asked_model if exchange is not None else None
    model = exchange.model if exchange is not None else None
    duration = (time.perf_counter() - context.started) * 1000
    raw = scope.get("raw_path") or scope["path"].encode()
    path = escape(raw.decode("latin-1"))
    status = context.status or "-"
    shown_model = asked or "-"
    if model and asked and model != asked:
        shown_model = f"{asked}->{model}"
    extra = f" key={escape(context.key)}" if context.key else ""
    backend = exchange.backend if exchange is not None else None
    if backend is not None and exchange is not None:
        extra += f" backend={backend}({exchange.backend_reason})"
    error = context.error.message if context.error is not None else None
    if error:
        extra += f' error="{escape(error)}"'
    access_logger.info(
        "%s %s %s %s %s %.1fms %dB%s",
        context.client,
        scope["method"],
        path,
        escape(shown_model),
        status,
        duration,
        context.bytes,
        extra,
        extra={
            "request_id": context.request_id,
            "client": context.client,
            "method": scope["method"],
            "path": raw.decode("latin-1"),
            "model": asked,
            "upstream_model": model,
            "key": context.key,
            "backend": backend,
            "backend_reason": exchange.backend_reason if exchange is not None else None,
            "prompt_tokens": exchange.prompt_tokens if exchange is not None else None,
            "completion_tokens": exchange.completion_tokens if exchange is not None else None,
            "status": context.status or None,
            "outcome": outcome(context.status, context.error),
            "error": error,
            "ttft_ms": round((first_byte - context.started) * 1000, 2) if first_byte else None,
            "duration_ms": round(duration, 2),
            "bytes": context.bytes,
        },
    )


_FIELDS = (
    "request_id",
    "client",
    "method",
    "path",
    "model",
    "upstream_model",
    "key",
    "backend",
    "backend_reason",
    "prompt_tokens",
    "completion_tokens",
    "status",
    "outcome",
    "error",
    "ttft_ms",
    "duration_ms",
    "bytes",
)


class JSONFormatter(logging.Formatter):
    """One JSON object per line, its ``time`` in ISO 8601 (UTC, milliseconds): the access
    log's lines are the audit trail, and uvicorn's own lines take the same form."""

    def format(self, record: logging.LogRecord) -> str:
        moment = datetime.fromtimestamp(record.created, UTC)
        data: dict[str, Any] = {
            "time": moment.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in _FIELDS:
            if hasattr(record, name):
                data[name] = getattr(record, name)
        if record.exc_info:
            data["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        request_id = getattr(record, "request_id", None)
        return f"{line} id={request_id}" if request_id else line


def uvicorn_log_config(log_format: str) -> dict[str, Any] | None:
    """uvicorn's logging in the access log's form (``json``), or uvicorn's own (``None``)."""
    if log_format != "json":
        return None
    handler = {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "ollama_smart_proxy.access_log.JSONFormatter"}},
        "handlers": {"json": handler},
        "loggers": {
            "uvicorn": {"handlers": ["json"], "level": "INFO", "propagate": False},
            "uvicorn.error": {"level": "INFO"},
            "uvicorn.access": {"handlers": ["json"], "level": "INFO", "propagate": False},
        },
    }


def configure_logging(log_format: str = "text", log_level: str = "info") -> None:
    """Install one handler on the ``ollama_smart_proxy`` logger (idempotent)."""
    logger = logging.getLogger("ollama_smart_proxy")
    logger.setLevel(log_level.upper())
    handler = logging.StreamHandler()
    if log_format == "json":
        handler.setFormatter(JSONFormatter())
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for old in list(logger.handlers):
        if getattr(old, "_osp", False):
            logger.removeHandler(old)
    handler._osp = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.propagate = False


__all__ = [
    "AccessLog",
    "JSONFormatter",
    "Observer",
    "RequestContext",
    "TextFormatter",
    "configure_logging",
    "escape",
    "get_context",
    "outcome",
    "uvicorn_log_config",
]
