"""Graceful shutdown: streams in flight may finish within a grace period, then end cleanly.

On SIGTERM the server stops accepting and waits for the requests in flight. :class:`Drain`
gives them ``grace`` seconds; then it cancels the ones still running, and the error boundary
ends each in its client's dialect (Ollama's final ``{"error"}`` line, an SSE error event),
between two whole chunks: never a half-written line.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

logger = logging.getLogger("ollama_smart_proxy")

#: The message a task is cancelled with when the grace is over.
GRACE_OVER = "ollama-smart-proxy: shutdown grace is over"


class Drain:
    """The requests in flight, and the deadline they must end by once shutdown begins."""

    def __init__(self, grace: float) -> None:
        if grace < 0:
            raise ValueError("grace must not be negative")
        self.grace = grace
        self.tasks: set[asyncio.Task[Any]] = set()
        self.draining = False
        self.expired = False
        self._loop: asyncio.AbstractEventLoop | None = None

    def begin(self) -> None:
        """Shutdown began: in ``grace`` seconds, end what is still running (idempotent)."""
        if self.draining:
            return
        self.draining = True
        loop = asyncio.get_running_loop()
        logger.info(
            "shutting down: %d request(s) in flight get %gs to finish", len(self.tasks), self.grace
        )
        loop.call_later(self.grace, self._expire)

    def _expire(self) -> None:
        self.expired = True
        if self.tasks:
            logger.warning("shutdown grace is over: ending %d stream(s)", len(self.tasks))
        for task in list(self.tasks):
            task.cancel(GRACE_OVER)

    def install_signal_handlers(self) -> None:
        """Begin draining on SIGTERM and SIGINT, then let the server's own handler run.

        For the launcher (uvicorn installs its handlers before the app starts); call it from
        the running loop, in the main thread. Elsewhere, call :meth:`begin` yourself.
        """
        if threading.current_thread() is not threading.main_thread():
            return
        self._loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous = signal.getsignal(sig)
            signal.signal(sig, self._chain(previous))

    def _chain(self, previous: Any) -> Callable[[int, FrameType | None], None]:
        def handler(sig: int, frame: FrameType | None) -> None:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.call_soon_threadsafe(self.begin)
            if callable(previous):
                previous(sig, frame)

        return handler


__all__ = ["GRACE_OVER", "Drain"]
