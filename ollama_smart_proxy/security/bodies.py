"""``BodyGuard``: bounded time and memory for the request bodies of every client.

A body must arrive whole within ``body_timeout`` seconds (408 past it), and the bodies of all
requests in flight together may hold at most ``max_buffered_bytes`` (503 with ``Retry-After``
past it): thirty clients that each send 60 MiB of a 64 MiB body and stop cannot make the
proxy hold 1.8 GiB for as long as they like. The bytes are counted once, as they come from
the server, whoever reads them; they are given back when the request ends. Model blobs
(``/api/blobs/...``, GiBs) are streamed to Ollama, never held, and not counted.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

from .._ticker import Ticker
from ..errors import Overloaded, RequestTimeout
from ..routing import route_of
from ..types import ASGIApp, Message, Receive, Scope, Send

_STREAMED_KINDS = frozenset({"blobs"})


class BodyBudget:
    """The bytes of request bodies held in memory by one proxy, and their bound."""

    def __init__(self, max_bytes: int) -> None:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        self.max_bytes = max_bytes
        self.held = 0
        self.refused = 0

    def take(self, count: int) -> bool:
        if self.held + count > self.max_bytes:
            self.refused += 1
            return False
        self.held += count
        return True

    def give_back(self, count: int) -> None:
        self.held -= count


#: The message a task is cancelled with when its body is late.
BODY_LATE = "ollama-smart-proxy: the request body is late"


class BodyGuard:
    """``BodyGuard(app, *, body_timeout=60, max_buffered_bytes=512 MiB, budget=None)``:
    ``budget`` is shared when several guards serve one proxy.

    The time is watched by one timer for every body being read (a deadline a request, no
    timeout object: one cost 9 us a request), which cancels a read past its deadline.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        body_timeout: float = 60.0,
        max_buffered_bytes: int = 512 * 1024 * 1024,
        budget: BodyBudget | None = None,
    ) -> None:
        if body_timeout <= 0:
            raise ValueError("body_timeout must be positive")
        self.app = app
        self.body_timeout = body_timeout
        self.budget = budget or BodyBudget(max_buffered_bytes)
        self._reading: dict[asyncio.Task[Any], float] = {}
        self._late: set[asyncio.Task[Any]] = set()
        self._ticker = Ticker(min(1.0, body_timeout / 4), self._check)

    def _watch(self, task: asyncio.Task[Any]) -> None:
        loop = asyncio.get_running_loop()
        self._reading[task] = loop.time() + self.body_timeout
        self._ticker.start(loop)

    def _check(self, now: float) -> bool:
        for task, deadline in list(self._reading.items()):
            if now >= deadline:
                del self._reading[task]
                self._late.add(task)
                task.cancel(BODY_LATE)
        return bool(self._reading)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or route_of(scope).kind in _STREAMED_KINDS:
            await self.app(scope, receive, send)
            return
        budget = self.budget
        held = 0
        done = False
        reader: asyncio.Task[Any] | None = None

        async def guarded() -> Message:
            nonlocal held, done, reader
            if done:
                return await receive()  # the body is in: what follows is a disconnect
            if reader is None:
                reader = asyncio.current_task()
                if reader is not None:
                    self._watch(reader)
            try:
                message = await receive()
            except asyncio.CancelledError:
                if reader is None or reader not in self._late:
                    raise
                self._late.discard(reader)
                reader.uncancel()
                raise RequestTimeout(
                    f"the request body did not arrive within {self.body_timeout:g}s "
                    "(OSP_BODY_TIMEOUT)"
                ) from None
            if message["type"] == "http.request":
                size = len(message.get("body", b""))
                if size and not budget.take(size):
                    mib = math.ceil(budget.max_bytes / 2**20)
                    raise Overloaded(
                        f"the proxy already holds {mib} MiB of request bodies, its limit "
                        "(OSP_MAX_BUFFERED_BYTES): retry shortly",
                        retry_after=1,
                    )
                held += size
                if not message.get("more_body", False):
                    done = True
                    if reader is not None:
                        self._reading.pop(reader, None)
            return message

        try:
            await self.app(scope, guarded, send)
        finally:
            budget.give_back(held)
            if reader is not None:
                self._reading.pop(reader, None)
                self._late.discard(reader)


__all__ = ["BODY_LATE", "BodyBudget", "BodyGuard"]
