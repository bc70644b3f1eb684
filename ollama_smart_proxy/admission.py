"""``Admission``: at most ``max_concurrent`` generations at Ollama, a bounded queue behind.

Generations (chat, generate, embed, embeddings, in every dialect) wait their turn; every other
route (tags, version, ps, show, pulls, health, metrics) passes at once. A request that finds
the queue full, or waits longer than ``queue_timeout``, gets 503 with ``Retry-After`` in its
dialect; a client that leaves while queued is removed at once and never reaches Ollama.

The queue is first in, first out, except with ``affinity``: a place that frees goes first to
a queued request for a model that is running or just ran (Ollama has it loaded), so requests
that alternate between models do not make Ollama unload and load a model for each of them.
A request is passed over that way for at most ``affinity`` seconds.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import math
import secrets
import time
from typing import TYPE_CHECKING, Any, Protocol

from .errors import ClientDisconnected, Overloaded
from .exchange import SCOPE_KEY, Exchange
from .kinds import GENERATION_KINDS
from .names import canonical
from .routing import route_of
from .types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from .shared import RedisState

#: How far into the queue a freed place looks for a request for a loaded model.
LOOKAHEAD = 64
#: Seconds between two tries for a shared place when no replica says one freed.
SHARED_POLL = 0.2


class _Waiter:
    __slots__ = ("future", "model", "since")

    def __init__(self, future: asyncio.Future[None], model: str | None, since: float) -> None:
        self.future = future
        self.model = model
        self.since = since


class AdmissionObserver(Protocol):
    """What watches the admission queue (the metrics), given to it when it is built."""

    def waited(self, seconds: float) -> None:
        """An admitted request waited ``seconds`` for its place."""

    def queue_changed(self, in_flight: int, queued: int) -> None:
        """The generations in flight or the requests queued changed."""

    def preferred(self) -> None:
        """A request went ahead of an earlier one, for the model that runs."""


class Admission:
    """``Admission(app, *, max_concurrent, max_queue=256, queue_timeout=30.0, affinity=0.0,
    observer=None, shared=None)``.

    With ``shared`` (a :class:`~ollama_smart_proxy.shared.RedisState`), ``max_concurrent``
    holds across every replica that shares it: a request that has its place here also takes
    a lease in the shared pool, in the order the requests of every replica came (a fair
    queue in Redis). While Redis is away, the shared state's ``failure`` decides: this
    replica's share of the limit (``local``), the whole limit here (``open``), or 503
    (``closed``).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_concurrent: int,
        max_queue: int = 256,
        queue_timeout: float = 30.0,
        affinity: float = 0.0,
        observer: AdmissionObserver | None = None,
        shared: RedisState | None = None,
    ) -> None:
        if max_concurrent < 1 or max_queue < 0 or queue_timeout <= 0 or affinity < 0:
            raise ValueError(
                "max_concurrent must be >= 1, max_queue >= 0, queue_timeout > 0, affinity >= 0"
            )
        self.app = app
        self.max_concurrent = max_concurrent
        self.max_queue = max_queue
        self.queue_timeout = queue_timeout
        self.affinity = affinity
        self.in_flight = 0
        self._queue: collections.deque[_Waiter] = collections.deque()
        #: The models of the generations in flight, and of the one that finished last.
        self._running: collections.Counter[str] = collections.Counter()
        self._last: str | None = None
        #: Places given out of turn to a request for a loaded model.
        self.preferred = 0
        #: Smoothed seconds a generation holds its place (for Retry-After).
        self._hold = 5.0
        self.admitted = 0
        self.refused = 0
        self._waits: collections.deque[float] = collections.deque(maxlen=256)
        self.observer = observer
        self.shared = shared

    def _changed(self) -> None:
        if self.observer is not None:
            self.observer.queue_changed(self.in_flight, self.queued)

    @property
    def queued(self) -> int:
        return sum(1 for waiter in self._queue if not waiter.future.done())

    def describe(self) -> dict[str, Any]:
        waits = sorted(self._waits)
        return {
            "max_concurrent": self.max_concurrent,
            "in_flight": self.in_flight,
            "queued": self.queued,
            "max_queue": self.max_queue,
            "admitted": self.admitted,
            "refused": self.refused,
            "affinity_s": self.affinity,
            "preferred": self.preferred,
            "wait_p50_s": round(waits[len(waits) // 2], 3) if waits else 0.0,
            "wait_max_s": round(waits[-1], 3) if waits else 0.0,
        }

    def retry_after(self) -> int:
        """Whole seconds until a place is likely free."""
        rounds = (self.queued + 1) / self._limit()
        return max(1, min(120, math.ceil(self._hold * rounds)))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or route_of(scope).kind not in GENERATION_KINDS:
            await self.app(scope, receive, send)
            return
        exchange: Exchange | None = scope.get(SCOPE_KEY)
        name = exchange.model if exchange is not None else None
        model = canonical(name) if name else None
        started = time.monotonic()
        receive = await self._enter(receive, model, started)
        placed = True
        lease = None
        waited = 0.0
        try:
            if self.shared is not None:
                lease, receive = await self._enter_shared(self.shared, receive, started)
                if lease is None and self.in_flight > self._limit():
                    # Redis went away while this request held a place above this replica's
                    # share: it queues again, under the share.
                    placed = False
                    self._leave(model, ran=False)
                    receive = await self._enter(receive, model, started)
                    placed = True
            waited = time.monotonic() - started
            self._waits.append(waited)
            if self.observer is not None:
                self.observer.waited(waited)
            await self.app(scope, receive, send)
        finally:
            held = time.monotonic() - started - waited
            self._hold = 0.8 * self._hold + 0.2 * held
            if placed:
                self._leave(model)
            if lease is not None and self.shared is not None:
                self.shared.release_soon(lease, ["admission"], "admission")

    def _limit(self) -> int:
        """The most generations this replica runs at once now: the limit, or, while the
        shared state is away (``failure = "local"``), its share of it."""
        shared = self.shared
        if shared is not None and not shared.available and shared.failure == "local":
            return shared.share(self.max_concurrent)
        return self.max_concurrent

    async def _enter_shared(
        self, shared: RedisState, receive: Receive, started: float
    ) -> tuple[str | None, Receive]:
        """A lease in the shared pool, in the order every replica's requests came; the
        lease (``None``: Redis is away and ``failure`` lets the request go) and the
        ``receive`` to use after."""
        from .shared import SharedUnavailable

        shared.start()  # also when no lifespan started it (mounted)
        lease = secrets.token_hex(8)
        deadline = started + self.queue_timeout
        held: list[Message] = []
        watcher = asyncio.ensure_future(_watch(receive, held))
        queued = False
        try:
            while True:
                try:
                    granted = await shared.acquire(
                        [("admission", self.max_concurrent)], lease, "admission"
                    )
                except SharedUnavailable:
                    if shared.failure == "closed":
                        self.refused += 1
                        raise Overloaded(
                            "the proxy's shared state (Redis) is unavailable and "
                            "OSP_REDIS_FAILURE is closed: no generation is admitted",
                            retry_after=5,
                        ) from None
                    return None, _replaying(held, receive)  # local share, or open
                if granted:
                    queued = False
                    return lease, _replaying(held, receive)
                queued = True
                now = time.monotonic()
                if now >= deadline:
                    self.refused += 1
                    raise Overloaded(
                        f"Ollama is busy: no place within {self.queue_timeout:g}s across "
                        "the replicas (OSP_QUEUE_TIMEOUT, OSP_MAX_CONCURRENT)",
                        retry_after=self.retry_after(),
                    )
                changed = asyncio.ensure_future(
                    shared.wait_changed(min(SHARED_POLL, deadline - now))
                )
                done, _ = await asyncio.wait(
                    {changed, watcher}, return_when=asyncio.FIRST_COMPLETED
                )
                changed.cancel()
                if watcher in done:
                    raise ClientDisconnected
        finally:
            watcher.cancel()
            if queued:  # gave up: its place in the shared queue goes too
                await shared.release(lease, ["admission"], "admission")

    async def _enter(self, receive: Receive, model: str | None, started: float) -> Receive:
        """Take a place, waiting in the queue if need be; the ``receive`` to use after."""
        held_back = self._held_back(model, started, started)
        queued = self.queued
        place = self.in_flight < self._limit()
        # A free place with others queued: with affinity they are all held back, so one
        # that is not may go first; in strict FIFO order, it may not.
        if place and not held_back and (self.affinity or not queued):
            if queued:  # ahead of requests held back
                self._preferred()
            self._take(model)
            return receive
        if queued >= self.max_queue:
            if held_back and place:
                self._take(model)  # no room to wait for the running model: go now
                return receive
            self.refused += 1
            raise Overloaded(
                f"Ollama is busy: {self.in_flight} generations running and {queued} "
                f"waiting, the most this proxy queues (OSP_MAX_QUEUE)",
                retry_after=self.retry_after(),
            )
        waiter = _Waiter(asyncio.get_running_loop().create_future(), model, started)
        self._queue.append(waiter)
        self._changed()
        # While queued, watch the client: one that leaves is taken out of the queue at once.
        held: list[Message] = []
        watcher = asyncio.ensure_future(_watch(receive, held))
        try:
            await self._wait(waiter, watcher)
        except BaseException:
            self._give_up(waiter)
            raise
        finally:
            watcher.cancel()
        return _replaying(held, receive)

    async def _wait(self, waiter: _Waiter, watcher: asyncio.Future[None]) -> None:
        """Until ``waiter`` has a place: handed one by a request that leaves, or taking a free
        one when it has been held back for ``affinity`` seconds. Raises when the client
        leaves or ``queue_timeout`` passes."""
        deadline = waiter.since + self.queue_timeout
        held_until = waiter.since + self.affinity if self.affinity else 0.0
        while True:
            now = time.monotonic()
            wake = min(deadline, held_until) if now < held_until else deadline
            done, _ = await asyncio.wait(
                {waiter.future, watcher},
                timeout=max(0.0, wake - now),
                return_when=asyncio.FIRST_COMPLETED,
            )
            if waiter.future in done:
                return
            if watcher in done:
                raise ClientDisconnected
            if time.monotonic() >= deadline:
                self.refused += 1
                raise Overloaded(
                    f"Ollama is busy: no place within {self.queue_timeout:g}s "
                    "(OSP_QUEUE_TIMEOUT, OSP_MAX_CONCURRENT)",
                    retry_after=self.retry_after(),
                )
            if self.in_flight < self._limit():  # held back long enough: go
                waiter.future.cancel()
                with contextlib.suppress(ValueError):
                    self._queue.remove(waiter)
                self._take(waiter.model)
                return

    def _take(self, model: str | None) -> None:
        """A new place for a request for ``model``."""
        self.in_flight += 1
        self._admit(model)

    def _admit(self, model: str | None) -> None:
        self.admitted += 1
        if model is not None:
            self._running[model] += 1
        self._changed()

    def _give_up(self, waiter: _Waiter) -> None:
        if waiter.future.done() and not waiter.future.cancelled():
            self._leave(waiter.model, ran=False)  # handed a place at the last moment: pass it on
        else:
            waiter.future.cancel()
        with contextlib.suppress(ValueError):
            self._queue.remove(waiter)
        self._changed()

    def _leave(self, model: str | None, *, ran: bool = True) -> None:
        """A request for ``model`` gives its place up: to the next in line, or back. (One
        that never ran says so: Ollama has not loaded its model for it.)"""
        if model is not None:
            self._running[model] -= 1
            if not self._running[model]:
                del self._running[model]
            if ran:
                self._last = model
        # Handed on only within the limit (it shrinks while Redis is away: local share).
        waiter = self._next() if self.in_flight <= self._limit() else None
        if waiter is not None:
            waiter.future.set_result(None)
            self._admit(waiter.model)
            return
        self.in_flight -= 1
        self._changed()

    def _next(self) -> _Waiter | None:
        """Who gets the place that freed, taken out of the queue.

        First in first out, but with ``affinity``: first the earliest (within
        ``LOOKAHEAD``) whose model is loaded, unless the first in line has waited
        ``affinity`` seconds already; and nobody, while a request for another model would
        make Ollama unload the one that runs (at most ``affinity`` seconds: each waiter
        then takes a free place itself).
        """
        queue = self._queue
        while queue and queue[0].future.done():
            queue.popleft()
        if not queue:
            return None
        if not self.affinity:
            return queue.popleft()
        now = time.monotonic()
        head = queue[0]
        candidates = [w for w in itertools.islice(queue, LOOKAHEAD) if not w.future.done()]
        if not self._loaded(head.model) and now - head.since < self.affinity:
            for waiter in candidates:
                if waiter.model is not None and self._loaded(waiter.model):
                    queue.remove(waiter)
                    if waiter is not head:
                        self._preferred()
                    return waiter
        for waiter in candidates:
            if not self._held_back(waiter.model, waiter.since, now):
                queue.remove(waiter)
                return waiter
        return None

    def _preferred(self) -> None:
        self.preferred += 1
        if self.observer is not None:
            self.observer.preferred()

    def _loaded(self, model: str | None) -> bool:
        """Whether Ollama surely has ``model`` loaded: one runs, or, none running, it ran
        last."""
        if model is None:
            return False
        return model in self._running if self._running else model == self._last

    def _held_back(self, model: str | None, since: float, now: float) -> bool:
        """Whether a request for ``model`` should wait (``affinity`` seconds at most, from
        ``since``) because another model runs and Ollama would have to unload it."""
        return bool(
            self.affinity
            and model is not None
            and self._running
            and model not in self._running
            and now - since < self.affinity
        )


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
