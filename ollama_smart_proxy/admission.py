"""``Admission``: at most ``max_concurrent`` generations at Ollama, a bounded FIFO queue behind.

Generations (chat, generate, embed, embeddings, in every dialect) wait their turn; every other
route (tags, version, ps, show, pulls, health, metrics) passes at once. A request that finds
the queue full, or waits longer than ``queue_timeout``, gets 503 with ``Retry-After`` in its
dialect; a client that leaves while queued is removed at once and never reaches Ollama.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
import time
from collections.abc import Callable
from typing import Any

from .errors import ClientDisconnected, Overloaded
from .routing import GENERATION_KINDS, route_of
from .types import ASGIApp, Message, Receive, Scope, Send


class Admission:
    """``Admission(app, *, max_concurrent, max_queue=256, queue_timeout=30.0)``."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_concurrent: int,
        max_queue: int = 256,
        queue_timeout: float = 30.0,
    ) -> None:
        if max_concurrent < 1 or max_queue < 0 or queue_timeout <= 0:
            raise ValueError("max_concurrent must be >= 1, max_queue >= 0, queue_timeout > 0")
        self.app = app
        self.max_concurrent = max_concurrent
        self.max_queue = max_queue
        self.queue_timeout = queue_timeout
        self.in_flight = 0
        self._queue: collections.deque[asyncio.Future[None]] = collections.deque()
        #: Smoothed seconds a generation holds its place (for Retry-After).
        self._hold = 5.0
        self.admitted = 0
        self.refused = 0
        self._waits: collections.deque[float] = collections.deque(maxlen=256)
        #: Called with the seconds each admitted request waited (metrics).
        self.on_wait: Callable[[float], None] | None = None
        #: Called with (in flight, queued) when either changes (metrics).
        self.on_change: Callable[[int, int], None] | None = None

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change(self.in_flight, self.queued)

    @property
    def queued(self) -> int:
        return sum(1 for waiter in self._queue if not waiter.done())

    def describe(self) -> dict[str, Any]:
        waits = sorted(self._waits)
        return {
            "max_concurrent": self.max_concurrent,
            "in_flight": self.in_flight,
            "queued": self.queued,
            "max_queue": self.max_queue,
            "admitted": self.admitted,
            "refused": self.refused,
            "wait_p50_s": round(waits[len(waits) // 2], 3) if waits else 0.0,
            "wait_max_s": round(waits[-1], 3) if waits else 0.0,
        }

    def retry_after(self) -> int:
        """Whole seconds until a place is likely free."""
        rounds = (self.queued + 1) / self.max_concurrent
        return max(1, min(120, math.ceil(self._hold * rounds)))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or route_of(scope).kind not in GENERATION_KINDS:
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        receive = await self._enter(receive)
        waited = time.monotonic() - started
        self._waits.append(waited)
        if self.on_wait is not None:
            self.on_wait(waited)
        try:
            await self.app(scope, receive, send)
        finally:
            held = time.monotonic() - started - waited
            self._hold = 0.8 * self._hold + 0.2 * held
            self._leave()

    async def _enter(self, receive: Receive) -> Receive:
        """Take a place, waiting in the queue if need be; the ``receive`` to use after."""
        if self.in_flight < self.max_concurrent and not self.queued:
            self.in_flight += 1
            self.admitted += 1
            self._changed()
            return receive
        if self.queued >= self.max_queue:
            self.refused += 1
            raise Overloaded(
                f"Ollama is busy: {self.in_flight} generations running and {self.queued} "
                f"waiting, the most this proxy queues (OSP_MAX_QUEUE)",
                retry_after=self.retry_after(),
            )
        waiter = asyncio.get_running_loop().create_future()
        self._queue.append(waiter)
        self._changed()
        # While queued, watch the client: one that leaves is taken out of the queue at once.
        held: list[Message] = []
        watcher = asyncio.ensure_future(_watch(receive, held))
        try:
            done, _ = await asyncio.wait(
                {waiter, watcher}, timeout=self.queue_timeout, return_when=asyncio.FIRST_COMPLETED
            )
        except BaseException:
            self._give_up(waiter)
            watcher.cancel()
            raise
        if waiter not in done:
            self._give_up(waiter)
            watcher.cancel()
            if watcher in done:
                raise ClientDisconnected
            self.refused += 1
            raise Overloaded(
                f"Ollama is busy: no place within {self.queue_timeout:g}s "
                "(OSP_QUEUE_TIMEOUT, OSP_MAX_CONCURRENT)",
                retry_after=self.retry_after(),
            )
        watcher.cancel()
        self.admitted += 1
        self._changed()
        return _replaying(held, receive)

    def _give_up(self, waiter: asyncio.Future[None]) -> None:
        if waiter.done() and not waiter.cancelled():
            self._leave()  # handed a place at the last moment: pass it on
        else:
            waiter.cancel()
        with contextlib.suppress(ValueError):
            self._queue.remove(waiter)
        self._changed()

    def _leave(self) -> None:
        while self._queue:
            waiter = self._queue.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the place goes to the next in line
                return
        self.in_flight -= 1
        self._changed()


async def _watch(receive: Receive, held: list[Message]) -> None:
    """Return when the client disconnects; keep any other message for the app."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        held.append(message)


def _replaying(held: list[Message], receive: Receive) -> Receive:
    if not held:
        return receive

    async def replay() -> Message:
        if held:
            return held.pop(0)
        return await receive()

    return replay


__all__ = ["Admission"]
