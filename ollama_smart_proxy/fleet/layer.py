"""``Fleet``: several Ollama servers behind one proxy.

The only layer that knows there are several servers. A generation (chat, generate, embed,
embeddings, in any dialect: the exchange names the model) goes to the backend
:func:`~ollama_smart_proxy.fleet.choose.choose` picks, within that backend's slots; the rest
wait in the fleet's queue (bounded, ``Retry-After``), where a slot that frees goes to the
first waiting request it suits. Every other route follows its row of :data:`RULES`.

Failover: before the first byte reaches the client, a request that could not connect, or got
a 5xx (or a 404 for a model the inventory said was there), is tried on the next candidate,
at most ``failover_attempts`` times, never for an admin route. After the first byte, a
failure ends the stream with the dialect's error: nothing is replayed. Every response a
backend served carries its name in ``X-OSP-Backend``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import itertools
import logging
import math
import secrets
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from .._http import DEFAULT_MAX_BODY, header, read_body, replay_receive
from .._json import loads
from .._side import never_disconnects
from ..errors import (
    ClientDisconnected,
    ModelNotFound,
    Overloaded,
    ProxyError,
    UpstreamError,
    UpstreamStatusError,
)
from ..exchange import Exchange, get_exchange
from ..health import send_json
from ..names import canonical
from ..routing import route_of
from ..schemas import ChatRequest, GenerateRequest
from ..types import Message, Receive, Scope, Send
from .backend import Backend
from .choose import choose, rendezvous
from .inventory import Inventory

if TYPE_CHECKING:
    from ..shared import RedisState

logger = logging.getLogger("ollama_smart_proxy.fleet")

BACKEND_HEADER = b"x-osp-backend"

#: How a fleet serves each route kind (any other: ``"any"``, one backend, the least busy).
Rule = Literal[
    "model", "has-model", "tags", "ps", "version", "pull", "everywhere", "by-name", "any"
]
RULES: dict[str, Rule] = {
    # a model runs: placement, slots, the queue, failover
    "chat": "model",
    "generate": "model",
    "embed": "model",
    "embeddings": "model",
    # a backend that has the model answers
    "show": "has-model",
    # the fleet's own listings, merged from every backend
    "tags": "tags",
    "ps": "ps",
    "version": "version",
    # the backend routing would place the model on (or every backend: ``pull_to``)
    "pull": "pull",
    # every backend that has the model
    "delete": "everywhere",
    "copy": "everywhere",
    # one backend by a stable hash of the name or digest: a blob and the create that uses
    # it meet there
    "create": "by-name",
    "blobs": "by-name",
    "push": "by-name",
}

#: How far into the queue a freed slot looks for a request it suits.
LOOKAHEAD = 64
#: Conversations whose last backend is remembered (the hash order stands in for the rest).
HOMES = 65_536
#: The most of a failed answer kept to pass on when no other backend can be tried.
MAX_HELD_BODY = 64 * 1024
#: Statuses that say a backend is unwell: the request goes elsewhere and it is ejected.
UNWELL = frozenset({500, 502, 503, 504})


class _Waiter:
    __slots__ = (
        "backend",
        "excluded",
        "follow_up",
        "future",
        "key",
        "model",
        "reason",
        "since",
        "wakes",
    )

    def __init__(
        self,
        model: str,
        key: bytes | None,
        follow_up: bool,
        excluded: list[Backend],
        since: float,
        wakes: list[float],
    ) -> None:
        self.model = model
        self.key = key
        self.follow_up = follow_up
        self.excluded = excluded
        self.since = since
        #: When its choice may change though no slot freed (its patience for its
        #: conversation's backend, then for a loaded one, is over).
        self.wakes = wakes
        self.future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.backend: Backend | None = None
        self.reason = ""


class _Retry(Exception):
    """This backend failed before the first byte: try the next one."""

    def __init__(self, start: Message | None, body: bytes, error: ProxyError | None = None) -> None:
        super().__init__()
        self.start = start
        self.body = body
        self.error = error


class Fleet:
    """``Fleet(backends, *, max_queue=256, queue_timeout=30.0, poll_interval=5.0,
    poll_timeout=2.0, failover_attempts=2, eject_seconds=5.0, pull_to="one",
    session_headers=("x-claude-code-session-id", "x-session-id"), max_body_bytes=64 MiB)``.

    ``backends`` are :class:`~ollama_smart_proxy.fleet.backend.Backend` objects, each with
    the ASGI app that reaches it (an :class:`~ollama_smart_proxy.upstream.OllamaUpstream`).
    Polling starts with :meth:`start` (or the first request) and ends with :meth:`aclose`.
    """

    def __init__(
        self,
        backends: Sequence[Backend],
        *,
        max_queue: int = 256,
        queue_timeout: float = 30.0,
        poll_interval: float = 5.0,
        poll_timeout: float = 2.0,
        failover_attempts: int = 2,
        eject_seconds: float = 5.0,
        pull_to: Literal["one", "all"] = "one",
        session_headers: Sequence[str] = ("x-claude-code-session-id", "x-session-id"),
        max_body_bytes: int = DEFAULT_MAX_BODY,
        shared: RedisState | None = None,
    ) -> None:
        if not backends:
            raise ValueError("a fleet needs at least one backend")
        if max_queue < 0 or queue_timeout <= 0 or failover_attempts < 0 or eject_seconds <= 0:
            raise ValueError(
                "max_queue and failover_attempts must be >= 0, queue_timeout and eject_seconds > 0"
            )
        names = [backend.name for backend in backends]
        if len(set(names)) != len(names):
            raise ValueError(f"backend names must be unique: {', '.join(names)}")
        self.backends = list(backends)
        self.by_name = {backend.name: backend for backend in backends}
        self.max_queue = max_queue
        self.queue_timeout = queue_timeout
        self.failover_attempts = failover_attempts
        self.eject_seconds = eject_seconds
        self.pull_to = pull_to
        self.session_headers = [name.lower().encode() for name in session_headers]
        self.max_body_bytes = max_body_bytes
        #: Slots shared with other replicas (Redis), if any.
        self.shared = shared
        self.inventory = Inventory(
            self.backends,
            poll_interval=poll_interval,
            poll_timeout=poll_timeout,
            on_change=self._dispatch,
            shared=shared,
        )
        self._queue: collections.deque[_Waiter] = collections.deque()
        self._waiting: collections.Counter[str] = collections.Counter()
        #: Requests queued for a conversation's backend, by its name (part of its load).
        self._targeted: collections.Counter[str] = collections.Counter()
        #: The backend each recent conversation was last placed on (bounded, oldest out):
        #: placement is by consistent hash, and this keeps a conversation where it is when
        #: the set of backends with its model loaded changes. Another replica, or a restart,
        #: falls back on the hash order alone.
        self._homes: collections.OrderedDict[bytes, Backend] = collections.OrderedDict()
        self.failovers = 0
        self.refused = 0

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Poll every backend once (so the first requests are placed knowingly), then keep
        polling in the background."""
        await self.inventory.poll_all()
        self.inventory.start()

    async def aclose(self) -> None:
        await self.inventory.aclose()

    def describe(self) -> dict[str, Any]:
        """The fleet in ``/health``."""
        now = time.monotonic()
        return {
            "backends": [backend.describe(now) for backend in self.backends],
            "queued": len(self._queue),
            "max_queue": self.max_queue,
            "failovers": self.failovers,
            "refused": self.refused,
            "poller": self.inventory.leader,
        }

    def ready(self) -> str | None:
        """Why the fleet cannot serve (no backend is up), or ``None``."""
        if any(backend.state == "up" for backend in self.backends):
            return None
        reasons = "; ".join(f"{b.name}: {b.reason or b.state}" for b in self.backends)
        return f"no backend is up ({reasons})"

    # -- ASGI ------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # pragma: no cover - the proxy routes only http here
            raise RuntimeError("Fleet serves only HTTP")
        self.inventory.start()
        kind = route_of(scope).kind
        rule = RULES.get(kind, "any")
        exchange = get_exchange(scope)
        if rule == "model" and exchange is not None and exchange.model:
            await self._generation(scope, receive, send, exchange)
        elif rule == "has-model" and exchange is not None and exchange.model:
            await self._show(scope, receive, send, exchange)
        elif rule in ("tags", "ps", "version") and scope["method"] == "GET":
            listing = getattr(self.inventory, rule)
            await send_json(send, 200, await listing(scope))
        elif rule == "pull" and scope["method"] == "POST":
            await self._pull(scope, receive, send)
        elif rule == "everywhere" and scope["method"] in ("POST", "DELETE"):
            await self._everywhere(scope, receive, send)
        elif rule == "by-name":
            await self._by_name(scope, receive, send, kind)
        else:
            await self._any(scope, receive, send)

    # -- generations -------------------------------------------------------------------------

    async def _generation(
        self, scope: Scope, receive: Receive, send: Send, exchange: Exchange
    ) -> None:
        model = canonical(exchange.model or "")
        key, follow_up = self.conversation(scope, exchange)
        body = await read_body(scope, receive, self.max_body_bytes)
        excluded: list[Backend] = []
        #: Backends another replica filled (the shared slots said no), for this try only.
        full: list[Backend] = []
        #: This request's id in the shared slots and their queue.
        ticket = secrets.token_hex(8)
        failed: _Retry | None = None
        started = time.perf_counter()
        queued = False  # it had a place in the shared queue: given up as it leaves
        try:
            while True:
                try:
                    backend, reason = await self._place(
                        model, key, follow_up, [*excluded, *full], receive, exchange
                    )
                except ProxyError:
                    if full:  # every candidate is busy with other replicas' requests: wait
                        await self._wait_shared(receive, started, exchange)
                        full.clear()
                        continue
                    if failed is None:
                        raise
                    await self._pass_on(failed, send, excluded[-1])  # nobody else: its answer
                    return
                try:
                    lease = (
                        await self._share(backend, model, ticket)
                        if self.shared is not None
                        else None
                    )
                except BaseException:
                    backend.release(model, 0.0)
                    self._dispatch()
                    raise
                queued = queued or lease is False
                if lease is False:
                    backend.release(model, 0.0)
                    self._dispatch()
                    full.append(backend)
                    continue
                if excluded:
                    reason = "failover"
                    self.failovers += 1
                backend.routed[reason] += 1
                if key is not None:
                    self._remember(key, backend)
                exchange.backend, exchange.backend_reason = backend.name, reason
                exchange.routing_ms = (time.perf_counter() - started) * 1000
                may_retry = len(excluded) < self.failover_attempts
                held = time.monotonic()
                try:
                    await self._attempt(
                        backend,
                        scope,
                        replay_receive(body, receive),
                        send,
                        may_retry=may_retry,
                        model=model,
                        exchange=exchange,
                    )
                except _Retry as retry:
                    failed = retry
                    excluded.append(backend)
                    continue
                finally:
                    backend.release(model, time.monotonic() - held)
                    self._dispatch()
                    if isinstance(lease, str) and self.shared is not None:
                        self.shared.release_soon(
                            lease, self._pools(backend, model), f"fleet:{model}"
                        )
                return
        finally:
            if queued:  # gone from the queue once placed; if not (it left, Redis away): now
                self._leave_queue(ticket, model)

    def _leave_queue(self, ticket: str, model: str) -> None:
        """A request that waited for shared slots gave up: its place in the queue goes."""
        if self.shared is not None:
            self.shared.release_soon(ticket, [], f"fleet:{model}")

    def _pools(self, backend: Backend, model: str) -> list[str]:
        pools = [f"fleet:{backend.name}:{model}"]
        if backend.max_concurrent is not None:
            pools.append(f"fleet:{backend.name}")
        return pools

    async def _share(self, backend: Backend, model: str, lease: str) -> str | bool | None:
        """A lease on ``backend``'s shared slots for ``model``: its id, ``False`` when other
        replicas hold them all, ``None`` when Redis is away and ``failure`` lets the request
        go (each replica then keeps its share of the slots); 503 when it does not.
        ``lease`` is the request's one id: it keeps its place in the model's queue across
        tries."""
        from ..shared import SharedUnavailable

        shared = self.shared
        assert shared is not None
        shared.start()
        limits = [backend.parallel] + (
            [backend.max_concurrent] if backend.max_concurrent is not None else []
        )
        pools = list(zip(self._pools(backend, model), limits, strict=True))
        try:  # first come first served among every replica's requests for the model
            granted = await shared.acquire(pools, lease, f"fleet:{model}")
        except SharedUnavailable:
            self._divide()
            if shared.failure == "closed":
                raise Overloaded(
                    "the proxy's shared state (Redis) is unavailable and OSP_REDIS_FAILURE "
                    "is closed: no generation is admitted",
                    retry_after=5,
                ) from None
            return None
        self._divide()
        return lease if granted else False

    def _divide(self) -> None:
        """Each backend's slots here: all of them (shared, or ``open``), or this replica's
        share while Redis is away (``local``)."""
        shared = self.shared
        assert shared is not None
        local = not shared.available and shared.failure == "local"
        for backend in self.backends:
            backend.divisor = shared.replicas if local else 1

    async def _wait_shared(self, receive: Receive, started: float, exchange: Exchange) -> None:
        """Until another replica gives a slot back (told, or a short poll), within the
        queue's timeout; a client that leaves ends it."""
        shared = self.shared
        assert shared is not None
        left = started + self.queue_timeout - time.perf_counter()
        if left <= 0:
            self.refused += 1
            raise Overloaded(
                f"every backend that has '{exchange.asked_model}' stayed busy for "
                f"{self.queue_timeout:g}s across the replicas (OSP_QUEUE_TIMEOUT)",
                retry_after=self._retry_after(),
            )
        changed = asyncio.ensure_future(shared.wait_changed(min(0.2, left)))
        watcher = asyncio.ensure_future(_disconnected(receive))
        try:
            done, _ = await asyncio.wait({changed, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            changed.cancel()
            watcher.cancel()
        if watcher in done:
            raise ClientDisconnected

    async def _attempt(
        self,
        backend: Backend,
        scope: Scope,
        receive: Receive,
        send: Send,
        *,
        may_retry: bool,
        model: str | None = None,
        exchange: Exchange | None = None,
    ) -> None:
        """One try of a request on ``backend``. Raises :class:`_Retry` when it failed
        before its first byte went up and another backend may be tried. ``model``: the
        request is for that model (a 404 then says the backend lacks it); ``exchange``:
        a generation, whose success says the model is loaded there."""
        forwarded = False
        held: Message | None = None
        body = bytearray()
        name = backend.name.encode()

        #: A good answer's start, kept until its first body bytes: a stream that breaks off
        #: before them has sent the client nothing, and may go elsewhere.
        pending: Message | None = None

        async def guarded(message: Message) -> None:
            nonlocal forwarded, held, pending
            if forwarded:
                await send(message)
            elif message["type"] == "http.response.start":
                status = message["status"]
                if status in UNWELL or (status == 404 and model is not None):
                    held = message  # kept back: this backend's failure may not be the answer
                    return
                headers = [*message.get("headers", []), (BACKEND_HEADER, name)]
                pending = {**message, "headers": headers}
            elif held is not None and message["type"] == "http.response.body":
                body.extend(message.get("body", b"")[: MAX_HELD_BODY - len(body)])
            elif pending is not None and message["type"] == "http.response.body":
                if message.get("body") or not message.get("more_body", False):
                    forwarded = True
                    await send(pending)
                    await send(message)
            else:
                await send(message)

        now = time.monotonic()
        try:
            await backend.app(scope, receive, guarded)
        except UpstreamError as exc:
            if forwarded or held is not None:
                if not isinstance(exc, UpstreamStatusError):  # a stream Ollama broke off
                    self._failed(backend, exc.message, time.monotonic())
                exc.headers.append((BACKEND_HEADER, name))
                raise
            self._failed(backend, exc.message, now)
            logger.warning("backend %s failed: %s", backend.name, exc.message)
            exc.headers.append((BACKEND_HEADER, name))
            if may_retry and (exc.unsent or not _timed_out(exc)):
                raise _Retry(None, b"", exc) from None
            raise
        except ProxyError as exc:
            if forwarded:
                exc.headers.append((BACKEND_HEADER, name))
            raise
        if pending is not None and not forwarded:  # pragma: no cover - an app that ended
            await send(pending)  # without a body message (ASGI requires one)
        if held is not None:
            status = held["status"]
            if status == 404:
                if model:
                    backend.missing(model)
            else:
                text = _error_text(bytes(body)) or f"HTTP {status}"
                self._failed(backend, f"answered {status}: {text}", now)
                logger.warning("backend %s answered %d: %s", backend.name, status, text)
            retry = _Retry(held, bytes(body))
            if may_retry:
                raise retry
            await self._pass_on(retry, send, backend)
            return
        if exchange is not None and model:
            if backend.served(model, exchange.load_seconds, time.time()):
                self.inventory.soon(backend)  # what did it unload for it?
        else:
            backend.succeeded()

    def _failed(self, backend: Backend, reason: str, now: float) -> None:
        """``backend`` failed a request: ejected here, and for every replica."""
        backend.failed(reason, self.eject_seconds, now)
        self.inventory.share_ejection(backend)

    async def _pass_on(self, failed: _Retry, send: Send, backend: Backend) -> None:
        """Send up the failed answer of the last backend tried (nobody else can serve it)."""
        if failed.start is None:
            raise failed.error or UpstreamError(f"backend {backend.name} failed")
        headers = [
            (k, v) for k, v in failed.start.get("headers", []) if k.lower() != b"content-length"
        ]
        headers += [
            (b"content-length", str(len(failed.body)).encode()),
            (BACKEND_HEADER, backend.name.encode()),
        ]
        await send({**failed.start, "headers": headers})
        await send({"type": "http.response.body", "body": failed.body})

    def _remember(self, key: bytes, backend: Backend) -> None:
        homes = self._homes
        homes[key] = backend
        homes.move_to_end(key)
        if len(homes) > HOMES:
            homes.popitem(last=False)

    def conversation(self, scope: Scope, exchange: Exchange) -> tuple[bytes | None, bool]:
        """What identifies a conversation, for affinity: a session header, else the system
        prompt and first message (every later turn repeats them); ``None`` for embeddings.
        And whether this is a later turn, with history a prompt cache may hold."""
        for name in self.session_headers:
            value = header(scope, name)
            if value:
                return hashlib.blake2b(b"h:" + value[:256], digest_size=16).digest(), True
        request = exchange.request
        parts: list[str] = []
        follow_up = False
        if isinstance(request, ChatRequest):
            messages = request.messages or ()
            for message in messages:
                parts.append(message.content[:4096])
                if message.role != "system":
                    break
            follow_up = len(messages) > len(parts)
        elif isinstance(request, GenerateRequest):
            parts = [(request.system or "")[:4096], (request.prompt or "")[:4096]]
        else:
            return None, False
        if not any(parts):
            return None, False
        digest = hashlib.blake2b("\x00".join(parts).encode(), digest_size=16)
        return digest.digest(), follow_up

    # -- placement and the queue -------------------------------------------------------------

    async def _place(
        self,
        model: str,
        key: bytes | None,
        follow_up: bool,
        excluded: list[Backend],
        receive: Receive,
        exchange: Exchange,
    ) -> tuple[Backend, str]:
        """A backend with a slot for this request, now or once one frees."""
        now = time.monotonic()
        choice = choose(
            model,
            self.backends,
            key,
            now,
            time.time(),
            follow_up=follow_up,
            waiting=self._waiting[model],
            queued=self._targeted,
            excluded=excluded,
            home=self._homes.get(key) if key is not None else None,
        )
        if choice.backend is not None:
            choice.backend.take(model, now)
            return choice.backend, choice.reason
        if choice.reason == "none":
            raise self._no_backend(model, exchange, excluded)
        if len(self._queue) >= self.max_queue:
            self.refused += 1
            raise Overloaded(
                f"every backend that has '{exchange.asked_model}' is busy and {len(self._queue)} "
                "requests wait, the most this proxy queues (OSP_MAX_QUEUE)",
                retry_after=self._retry_after(),
            )
        wakes = [now + min((b.load_seconds for b in self.backends), default=5.0)]
        if choice.target is not None:
            wakes.insert(0, now + choice.target.hold_seconds)
        waiter = _Waiter(model, key, follow_up, excluded, now, wakes)
        self._queue.append(waiter)
        self._waiting[model] += 1
        target = choice.target.name if choice.target is not None else None
        if target is not None:
            self._targeted[target] += 1
        watcher = asyncio.ensure_future(_disconnected(receive))
        try:
            return await self._wait(waiter, watcher, exchange)
        finally:
            watcher.cancel()
            self._waiting[model] -= 1
            if not self._waiting[model]:
                del self._waiting[model]
            if target is not None:
                self._targeted[target] -= 1
                if not self._targeted[target]:
                    del self._targeted[target]
            with contextlib.suppress(ValueError):
                self._queue.remove(waiter)

    async def _wait(
        self, waiter: _Waiter, watcher: asyncio.Future[None], exchange: Exchange
    ) -> tuple[Backend, str]:
        deadline = waiter.since + self.queue_timeout
        while True:
            now = time.monotonic()
            wake = min([deadline, *(t for t in waiter.wakes if t > now)])
            done, _ = await asyncio.wait(
                {waiter.future, watcher},
                timeout=max(0.0, wake - now),
                return_when=asyncio.FIRST_COMPLETED,
            )
            if waiter.future in done:
                waiter.future.result()  # raises what the dispatcher found (no backend left)
                if waiter.backend is None:  # pragma: no cover - the dispatcher sets it
                    raise UpstreamError("the fleet lost a placed request")
                return waiter.backend, waiter.reason
            if watcher in done:
                if waiter.backend is not None:  # placed at the very moment the client left
                    waiter.backend.release(waiter.model, 0.0)
                    self._dispatch()
                raise ClientDisconnected
            now = time.monotonic()
            if now >= deadline:
                self.refused += 1
                raise Overloaded(
                    f"every backend that has '{exchange.asked_model}' stayed busy for "
                    f"{self.queue_timeout:g}s (OSP_QUEUE_TIMEOUT)",
                    retry_after=self._retry_after(),
                )
            # No slot freed, but its patience changed: it may take one that is free now.
            self._place_waiter(waiter, now, time.time())

    def _dispatch(self) -> None:
        """Give the slots that are free to the requests waiting, first come first served,
        each where :func:`choose` puts it now."""
        if not self._queue:
            return
        now, wall = time.monotonic(), time.time()
        for waiter in list(itertools.islice(self._queue, LOOKAHEAD)):
            self._place_waiter(waiter, now, wall)

    def _place_waiter(self, waiter: _Waiter, now: float, wall: float) -> None:
        if waiter.future.done():
            return
        choice = choose(
            waiter.model,
            self.backends,
            waiter.key,
            now,
            wall,
            waited=now - waiter.since,
            follow_up=waiter.follow_up,
            waiting=self._waiting[waiter.model] - 1,
            queued=self._targeted,
            excluded=waiter.excluded,
            home=self._homes.get(waiter.key) if waiter.key is not None else None,
        )
        if choice.backend is not None:
            choice.backend.take(waiter.model, now)
            waiter.backend, waiter.reason = choice.backend, choice.reason
            waiter.future.set_result(None)
            self._queue.remove(waiter)
        elif choice.reason == "none":
            waiter.future.set_exception(
                Overloaded(
                    f"no backend that has '{waiter.model}' is up any more",
                    retry_after=self._retry_after(),
                )
            )
            self._queue.remove(waiter)

    def _retry_after(self) -> int:
        slots = sum(b.parallel for b in self.backends if b.state == "up") or 1
        hold = sum(b.hold_seconds for b in self.backends) / len(self.backends)
        return max(1, min(120, math.ceil(hold * (len(self._queue) + 1) / slots)))

    def _no_backend(self, model: str, exchange: Exchange, excluded: list[Backend]) -> ProxyError:
        asked = exchange.asked_model or model
        having = [b for b in self.backends if b.has(model)]
        if not having:
            names = ", ".join(b.name for b in self.backends)
            return ModelNotFound(
                f"model '{asked}' not found: no backend has it ({names})", model=asked
            )
        now = time.monotonic()
        reasons = "; ".join(
            f"{b.name}: {'failed just now' if b in excluded else b.reason or b.state}"
            for b in having
        )
        wait = min((max(0.0, b.ejected_until - now) for b in having), default=1.0)
        return Overloaded(
            f"every backend that has '{asked}' is down or ejected ({reasons})",
            retry_after=max(1, math.ceil(wait)),
        )

    # -- the other routes --------------------------------------------------------------------

    def _up(self) -> list[Backend]:
        now = time.monotonic()
        return (
            [b for b in self.backends if b.routable(now)]
            or [b for b in self.backends if b.state != "down"]
            or list(self.backends)
        )

    async def _one(
        self,
        candidates: Sequence[Backend],
        scope: Scope,
        receive: Receive,
        send: Send,
        *,
        retry: bool,
        model: str | None = None,
    ) -> None:
        """Serve the request on the first of ``candidates`` that answers (the next ones only
        for a request that may be repeated, and then only before the first byte)."""
        body: bytes | None = None
        if retry and len(candidates) > 1:
            body = await read_body(scope, receive, self.max_body_bytes)
        last = len(candidates) - 1
        for index, backend in enumerate(candidates):
            inner = replay_receive(body, receive) if body is not None else receive
            try:
                await self._attempt(
                    backend,
                    scope,
                    inner,
                    send,
                    may_retry=body is not None and index < last,
                    model=model,
                )
            except _Retry:
                continue
            return

    async def _show(self, scope: Scope, receive: Receive, send: Send, exchange: Exchange) -> None:
        model = canonical(exchange.model or "")
        wall = time.time()
        having = [b for b in self._up() if b.has(model)]
        having.sort(key=lambda b: not b.is_loaded(model, wall))
        await self._one(having or self._up(), scope, receive, send, retry=True, model=model)

    async def _any(self, scope: Scope, receive: Receive, send: Send) -> None:
        up = sorted(self._up(), key=lambda b: (b.busy(), b.name))
        await self._one(up, scope, receive, send, retry=scope["method"] in ("GET", "HEAD"))

    async def _read_json(self, scope: Scope, receive: Receive) -> tuple[bytes, dict[str, Any]]:
        raw = await read_body(scope, receive, self.max_body_bytes)
        try:
            data = loads(raw) if raw else {}
        except ValueError:
            data = {}
        return raw, data if isinstance(data, dict) else {}

    async def _pull(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw, data = await self._read_json(scope, receive)
        name = canonical(str(data.get("model") or data.get("name") or ""))
        up = self._up()
        having = [b for b in up if b.installed is not None and name in b.installed]
        # Where routing would place it: a backend that has it already (a pull to update it),
        # else the first in the model's consistent-hash order, the same on every replica.
        target = having[0] if having else rendezvous(_digest(name), up)[0]
        others = [b for b in up if b is not target] if self.pull_to == "all" else []
        extra = [asyncio.ensure_future(self._pull_quietly(b, scope, raw)) for b in others]
        try:
            await self._attempt(target, scope, replay_receive(raw, receive), send, may_retry=False)
        finally:
            await asyncio.gather(*extra, return_exceptions=True)
            await self.inventory.poll(target)
            self._dispatch()

    async def _pull_quietly(self, backend: Backend, scope: Scope, raw: bytes) -> None:
        sink: list[Message] = []

        async def collect(message: Message) -> None:
            sink.append(message)

        try:
            await backend.app(scope, replay_receive(raw, never_disconnects), collect)
        except ProxyError as exc:
            logger.warning("pull on %s failed: %s", backend.name, exc.message)
        await self.inventory.poll(backend)

    async def _everywhere(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Delete or copy on every backend that has the model; the answer of the first that
        did it (or the last refusal)."""
        raw, data = await self._read_json(scope, receive)
        name = canonical(str(data.get("source") or data.get("model") or data.get("name") or ""))
        up = self._up()
        having = [b for b in up if b.has(name)] or up
        answers: list[tuple[Backend, _Retry]] = []
        for backend in having:
            collected: list[Message] = []

            async def collect(message: Message, into: list[Message] = collected) -> None:
                into.append(message)

            try:
                await backend.app(scope, replay_receive(raw, never_disconnects), collect)
            except ProxyError as exc:
                answers.append((backend, _Retry(None, b"", exc)))
                continue
            start = next(m for m in collected if m["type"] == "http.response.start")
            body = b"".join(m.get("body", b"") for m in collected[1:])
            answers.append((backend, _Retry(start, body)))
            await self.inventory.poll(backend)
        # The first that did it, else the first refusal, else the first failure.
        answers.sort(key=lambda item: _rank(item[1]))
        backend, answer = answers[0]
        await self._pass_on(answer, send, backend)

    async def _by_name(self, scope: Scope, receive: Receive, send: Send, kind: str) -> None:
        """Create, blobs and push on one backend, by a stable hash of what they name: a
        blob upload and the create that uses it (by digest) meet on the same backend."""
        path = route_of(scope).path
        if kind == "blobs":
            await self._one(
                self._hashed(path.rsplit("/", 1)[-1]), scope, receive, send, retry=False
            )
            return
        raw, data = await self._read_json(scope, receive)
        files = data.get("files")
        digests = sorted(str(v) for v in files.values()) if isinstance(files, dict) else []
        name = canonical(str(data.get("model") or data.get("name") or ""))
        if kind == "push":
            up = self._up()
            having = [b for b in up if b.has(name)] or up
            candidates = rendezvous(_digest(name), having)
        else:
            candidates = self._hashed(digests[0] if digests else name)
        await self._one(candidates[:1], scope, replay_receive(raw, receive), send, retry=False)
        await self.inventory.poll(candidates[0])

    def _hashed(self, name: str) -> list[Backend]:
        return rendezvous(_digest(name), self._up())


def _digest(name: str) -> bytes:
    """The key a name is placed by (a model, a blob's digest)."""
    return hashlib.blake2b(name.encode(), digest_size=16).digest()


def _rank(answer: _Retry) -> int:
    if answer.start is None:
        return 2
    return 0 if answer.start["status"] < 400 else 1


def _timed_out(exc: UpstreamError) -> bool:
    """A timeout waiting for an answer: the generation may be running; not repeated."""
    return exc.status_code == 504


def _error_text(body: bytes) -> str:
    try:
        data = loads(body)
    except ValueError:
        return body[:200].decode("utf-8", "replace")
    return str(data.get("error", ""))[:200] if isinstance(data, dict) else ""


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


__all__ = ["BACKEND_HEADER", "RULES", "Fleet", "Rule"]
