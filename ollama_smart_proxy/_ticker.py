"""``Ticker``: one timer that calls a check every ``period`` seconds while it has work.

The proxy's watches (the body deadline, the stalled-send watch) look at every request in
flight from one timer rather than one timeout object a request (an ``asyncio.timeout`` cost
9 us). The check says whether there is still work; the timer stops when there is none and
starts again on the next :meth:`start`, on whichever loop is running then.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class Ticker:
    """``Ticker(period, check)``: ``check(now) -> bool`` (more to watch) runs every
    ``period`` seconds from the first :meth:`start` until it returns ``False``."""

    def __init__(self, period: float, check: Callable[[float], bool]) -> None:
        self.period = period
        self._check = check
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._timer is None or self._loop is not loop:
            self._loop = loop
            self._timer = loop.call_later(self.period, self._tick)

    def _tick(self) -> None:
        self._timer = None
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        if self._check(loop.time()):
            self._timer = loop.call_later(self.period, self._tick)


__all__ = ["Ticker"]
