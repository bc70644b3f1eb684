"""Access log: one line per request, text or JSON, with an ``X-Request-ID``."""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from .types import ASGIApp, Message, Receive, Scope, Send

access_logger = logging.getLogger("ollama_smart_proxy.access")

CONTEXT_KEY = "ollama_smart_proxy.context"
_VALID_ID = re.compile(rb"^[A-Za-z0-9._:-]{1,128}$")


@dataclass(eq=False)
class RequestContext:
    """Per-request facts shared by every layer (layers copy the scope, not this)."""

    request_id: str
    started: float = field(default_factory=time.perf_counter)
    exchange: Any = None
    model: str | None = None
    #: The response status once ``http.response.start`` went out (0 before).
    status: int = 0
    bytes: int = 0


def get_context(scope: Scope) -> RequestContext | None:
    context = scope.get(CONTEXT_KEY)
    return context if isinstance(context, RequestContext) else None


class AccessLogMiddleware:
    """Give every request an id (``X-Request-ID`` in, or a new one), return it in the
    response headers, and log one line when the response ends."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

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
            incoming.decode() if incoming and _VALID_ID.match(incoming) else uuid.uuid4().hex
        )
        context = RequestContext(request_id)
        scope = dict(scope)
        scope[CONTEXT_KEY] = context
        id_header = (b"x-request-id", request_id.encode())

        async def logging_send(message: Message) -> None:
            if message["type"] == "http.response.body":
                context.bytes += len(message.get("body", b""))
            elif message["type"] == "http.response.start":
                context.status = message["status"]
                message = dict(message)
                message["headers"] = [*message.get("headers", []), id_header]
            await send(message)

        try:
            await self.app(scope, receive, logging_send)
        finally:
            if access_logger.isEnabledFor(logging.INFO):
                log_request(scope, context)


def log_request(scope: Scope, context: RequestContext) -> None:
    exchange = context.exchange
    model = context.model or (exchange.model if exchange is not None else None)
    duration = (time.perf_counter() - context.started) * 1000
    access_logger.info(
        "%s %s %s %s %.1fms %dB",
        scope["method"],
        scope["path"],
        model or "-",
        context.status or "-",
        duration,
        context.bytes,
        extra={
            "request_id": context.request_id,
            "method": scope["method"],
            "path": scope["path"],
            "model": model,
            "status": context.status or None,
            "duration_ms": round(duration, 2),
            "bytes": context.bytes,
        },
    )


_FIELDS = ("request_id", "method", "path", "model", "status", "duration_ms", "bytes")


class JSONFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": self.formatTime(record),
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
