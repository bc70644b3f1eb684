"""``ErrorBoundary``: the one place where an exception becomes a response.

Like Starlette's ``ServerErrorMiddleware``, it wraps ``send`` to know whether the response
has started. Before it has, a :class:`~ollama_smart_proxy.errors.ProxyError` becomes a whole
error response in the client's dialect (chosen by the route, once) and anything else a 500
that names the request id, never a traceback. After it has, the stream is ended in the
dialect's own way (Ollama's final ``{"error"}`` line, an SSE error event). Every error is
logged here, once, with the request id.
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import Any

from ._ticker import Ticker
from .access_log import get_context
from .errors import (
    ClientDisconnected,
    ClientTooSlow,
    Dialect,
    ProxyError,
    RequestError,
    ShuttingDown,
    render_error,
    render_stream_error,
)
from .routing import route_of
from .shutdown import Drain
from .types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger("ollama_smart_proxy")


class _Sending:
    """One response's sends, as the watch sees them: a count, and whether one is waiting."""

    __slots__ = ("idle", "seen", "sends", "task", "waiting")

    def __init__(self, task: asyncio.Task[Any]) -> None:
        self.task = task
        self.sends = 0
        self.waiting = False
        self.seen = 0
        self.idle = 0


class Stalls:
    """A send that makes no progress for ``timeout`` seconds (a client that stopped
    reading) has its request cancelled, which ends the response and frees everything it
    held (its admission place, Ollama's stream).

    A response registers once; a send only flips a flag and counts. A timer looks every
    ``timeout / 4`` seconds (at most one) at the responses in flight: one whose send has been
    waiting, with no send done, for the whole timeout is ended.
    """

    def __init__(self, timeout: float) -> None:
        if timeout <= 0:
            raise ValueError("write_timeout must be positive")
        self.timeout = timeout
        self.period = min(1.0, timeout / 4)
        self.ticks = max(1, math.ceil(timeout / self.period))
        self.active: set[_Sending] = set()
        self.ended: set[asyncio.Task[Any]] = set()
        self._ticker = Ticker(self.period, self._check)

    def watch(self, task: asyncio.Task[Any]) -> _Sending:
        sending = _Sending(task)
        self.active.add(sending)
        self._ticker.start(asyncio.get_running_loop())
        return sending

    def _check(self, now: float) -> bool:
        for sending in list(self.active):
            if sending.waiting and sending.sends == sending.seen:
                sending.idle += 1
                if sending.idle >= self.ticks:
                    self.active.discard(sending)
                    self.ended.add(sending.task)
                    sending.task.cancel(STALLED)
            else:
                sending.seen = sending.sends
                sending.idle = 0
        return bool(self.active)


#: The message a task is cancelled with when its client stopped reading.
STALLED = "ollama-smart-proxy: the client stopped reading"


class ErrorBoundary:
    """``ErrorBoundary(app, dialect=None, drain=None, write_timeout=None)``: ``dialect``
    fixes the dialect of every error (for a layer used alone); by default the route decides
    it. With a ``drain``, a request still running when the shutdown grace is over ends like a
    failed one. With ``write_timeout``, a response whose client has not taken a chunk for
    that many seconds is ended (see :class:`Stalls`)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        dialect: Dialect | None = None,
        drain: Drain | None = None,
        write_timeout: float | None = None,
    ) -> None:
        self.app = app
        self.dialect = dialect
        self.drain = drain
        self.stalls = Stalls(write_timeout) if write_timeout is not None else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = route_of(scope)
        dialect = self.dialect or route.dialect
        started = False
        framed = False
        ended = False

        stalls = self.stalls
        task = asyncio.current_task() if self.drain is not None or stalls is not None else None

        last = b"\n"  # the last bytes sent: an error frame must start on a line of its own
        sending = stalls.watch(task) if stalls is not None and task is not None else None

        async def tracking_send(message: Message) -> None:
            nonlocal started, framed, ended, last
            if message["type"] == "http.response.body":
                body = message.get("body")
                if body:
                    last = body
                if not message.get("more_body"):
                    ended = True
            elif message["type"] == "http.response.start":
                started = True
                framed = any(key == b"content-length" for key, _ in message.get("headers", ()))
            if sending is None:
                await send(message)
                return
            sending.waiting = True
            await send(message)
            sending.waiting = False
            sending.sends += 1

        if task is not None and self.drain is not None:
            self.drain.tasks.add(task)
        try:
            if route.family == "invalid":
                raise RequestError(route.problem)
            await self.app(scope, receive, tracking_send)
        except ClientDisconnected:
            return  # gone before its request was read: nobody to answer
        except (Exception, asyncio.CancelledError) as exc:
            if isinstance(exc, asyncio.CancelledError):
                if stalls is not None and task is not None and task in stalls.ended:
                    stalls.ended.discard(task)
                    task.uncancel()
                    self._stalled(scope, route.path)
                    return  # nobody reads: the server closes the connection
                if not (self.drain is not None and self.drain.expired and task is not None):
                    raise
                task.uncancel()
                exc = ShuttingDown("the proxy is shutting down: this stream was ended")
            error = exc if isinstance(exc, ProxyError) else None
            context = get_context(scope)
            request_id = context.request_id if context is not None else "-"
            if error is None:
                logger.exception(
                    "unhandled error on %s %s (request %s)",
                    scope["method"],
                    route.path,
                    request_id,
                    extra={"request_id": request_id},
                )
                error = ProxyError(f"internal proxy error (request id {request_id})")
            elif error.status_code >= 500 or started:
                logger.warning(
                    "%s %s: %s (HTTP %d)",
                    scope["method"],
                    route.path,
                    error.message,
                    error.status_code,
                    extra={"request_id": request_id},
                )
            if context is not None:
                context.error = error
            if ended:
                return
            if not started:
                status, headers, body = render_error(
                    dialect, error, request_id if context is not None else None
                )
                await send({"type": "http.response.start", "status": status, "headers": headers})
                await send({"type": "http.response.body", "body": body})
            elif framed:
                # A body with a length cannot take an error frame: the server closes it.
                raise error from exc
            else:
                tail = render_stream_error(dialect, error)
                if not last.endswith(b"\n"):  # cut mid-line: the error on a line of its own
                    tail = b"\n" + tail
                await send({"type": "http.response.body", "body": tail, "more_body": False})
        finally:
            if task is not None:
                if self.drain is not None:
                    self.drain.tasks.discard(task)
                if stalls is not None:
                    stalls.ended.discard(task)
                if sending is not None and stalls is not None:
                    stalls.active.discard(sending)

    def _stalled(self, scope: Scope, path: str) -> None:
        assert self.stalls is not None
        error = ClientTooSlow(
            f"the client took no data for {self.stalls.timeout:g}s (OSP_WRITE_TIMEOUT): "
            "its response was ended"
        )
        context = get_context(scope)
        if context is not None:
            context.error = error
        logger.warning(
            "%s %s: %s",
            scope["method"],
            path,
            error.message,
            extra={"request_id": context.request_id if context is not None else "-"},
        )


__all__ = ["STALLED", "ErrorBoundary", "Stalls"]
