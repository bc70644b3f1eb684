"""State shared by several proxy replicas (and ``--workers``) through Redis.

Limits are **leases**: a place in a pool (the fleet's generations in flight, one backend's
slots) is a member of a sorted set scored by when it expires; its holder renews it every
third of ``lease_ttl``, so a replica that dies gives its places back within one lease. Every
operation is one round trip (a Lua script, run with Redis's own clock), with its own short
timeout: a slow or absent Redis is never waited on for longer.

When Redis cannot be reached, :class:`SharedUnavailable` is raised and the caller applies
``failure``: ``local`` (each replica keeps its share of the limit: the limit divided by the
replicas it last saw), ``open`` (the limit is not shared until Redis is back) or ``closed``
(503). The switch and the recovery are logged once each, counted, and shown in ``/health``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import secrets
import socket
from collections.abc import Sequence
from typing import Any, Literal

logger = logging.getLogger("ollama_smart_proxy.shared")

Failure = Literal["local", "open", "closed"]

#: Seconds between two tries to reach Redis while it is away.
PROBE = 0.5

#: Take a lease in every pool (KEYS: the pools, then the fair queue's two sets, then the
#: replicas' set) if each has room and, when fair, this request is among the first in the
#: queue (else it keeps its place there). ARGV: lease ttl, lease id, replica id, fair (1/0),
#: one limit per pool. Returns {granted, replicas}.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local ttl = tonumber(ARGV[1])
local id = ARGV[2]
local fair = ARGV[4] == '1'
local n = #KEYS - 3
local queue, queue_exp, replicas = KEYS[n + 1], KEYS[n + 2], KEYS[n + 3]
redis.call('ZADD', replicas, now + ttl, ARGV[3])
redis.call('ZREMRANGEBYSCORE', replicas, '-inf', now)
local seen = redis.call('ZCARD', replicas)
local rank = 0
if fair then
  local gone = redis.call('ZRANGEBYSCORE', queue_exp, '-inf', now)
  for _, old in ipairs(gone) do
    redis.call('ZREM', queue, old)
    redis.call('ZREM', queue_exp, old)
  end
  redis.call('ZADD', queue, 'NX', now, id)
  redis.call('ZADD', queue_exp, now + ttl, id)
  rank = redis.call('ZRANK', queue, id)
end
local free = nil
for i = 1, n do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now)
  local room = tonumber(ARGV[4 + i]) - redis.call('ZCARD', KEYS[i])
  if free == nil or room < free then free = room end
end
if free > 0 and rank < free then
  for i = 1, n do redis.call('ZADD', KEYS[i], now + ttl, id) end
  if fair then
    redis.call('ZREM', queue, id)
    redis.call('ZREM', queue_exp, id)
  end
  return {1, seen}
end
return {0, seen}
"""

#: Give a lease (or a place in the queue) back, and tell the waiting replicas when there
#: are any. KEYS: the pools, then the queue's two sets (if any); ARGV: the lease id, the
#: channel, whether the last two keys are a queue (1/0).
_RELEASE = """
local removed = 0
for i = 1, #KEYS do removed = removed + redis.call('ZREM', KEYS[i], ARGV[1]) end
if ARGV[3] == '1' and redis.call('ZCARD', KEYS[#KEYS - 1]) > 0 then
  redis.call('PUBLISH', ARGV[2], '1')
end
return removed
"""

#: Renew this replica's leases and queue places, and its own entry among the replicas.
#: KEYS: the sets; ARGV: ttl, replica, the replicas' set, then one member per key. Returns
#: the number of replicas alive.
_RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local ttl = tonumber(ARGV[1])
redis.call('ZADD', ARGV[3], now + ttl, ARGV[2])
redis.call('ZREMRANGEBYSCORE', ARGV[3], '-inf', now)
for i = 1, #KEYS do redis.call('ZADD', KEYS[i], 'XX', now + ttl, ARGV[3 + i]) end
return redis.call('ZCARD', ARGV[3])
"""


def _cancelled_meanwhile() -> None:
    """Raise ``CancelledError`` if this task was asked to stop while something it awaited
    turned the cancel into another exception (``asyncio.timeout`` on Python 3.11 may)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class SharedUnavailable(Exception):
    """Redis did not answer in time (or at all)."""


class RedisState:
    """``RedisState(url, *, failure="local", timeout=0.25, lease_ttl=10.0, prefix="osp")``.

    ``url`` is ``redis://``, ``rediss://`` or ``unix://`` (Redis 7 or Valkey), read by the
    ``redis`` package (``pip install 'ollama-smart-proxy[redis]'``).
    """

    def __init__(
        self,
        url: str,
        *,
        failure: Failure = "local",
        timeout: float = 0.25,
        lease_ttl: float = 10.0,
        prefix: str = "osp",
    ) -> None:
        try:
            import redis.asyncio as aioredis
        except ImportError as exc:  # pragma: no cover - the extra is installed in the tests
            raise RuntimeError(
                "redis_url needs the redis package: pip install 'ollama-smart-proxy[redis]'"
            ) from exc
        if timeout <= 0 or lease_ttl <= 0:
            raise ValueError("timeout and lease_ttl must be positive")
        self.url = url
        self.failure = failure
        self.timeout = timeout
        self.lease_ttl = lease_ttl
        self.prefix = prefix
        self.client = aioredis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, health_check_interval=0
        )
        self._acquire = self.client.register_script(_ACQUIRE)
        self._release = self.client.register_script(_RELEASE)
        self._renew = self.client.register_script(_RENEW)
        self.replica = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self.channel = f"{prefix}:released"
        #: Whether Redis answered the last operation; how many replicas it last counted.
        self.available = True
        self.replicas = 1
        self.outages = 0
        self.reason = ""
        #: What this replica holds, to renew: member -> the keys it is in.
        self._held: dict[str, list[str]] = {}
        #: Set when a replica gave a place back (pub/sub), or Redis came back; replaced by
        #: a new one each time, so that every waiter sees each notice.
        self._changed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._releasing: set[asyncio.Future[None]] = set()
        self._closing = False

    def key(self, name: str) -> str:
        return f"{self.prefix}:{name}"

    # -- lifecycle ------------------------------------------------------------------------

    async def startup(self) -> None:
        """Count this replica in at once (so the others' shares are right from its first
        request), then keep renewing in the background."""
        await self.renew()
        self.start()

    def start(self) -> None:
        if not self._tasks:
            self._tasks = [
                asyncio.ensure_future(self._renewing()),
                asyncio.ensure_future(self._listening()),
            ]

    async def aclose(self) -> None:
        self._closing = True
        if self._releasing:  # give back what is being given back, then stop
            await asyncio.gather(*self._releasing, return_exceptions=True)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        with contextlib.suppress(Exception):
            await self.client.aclose()

    def describe(self) -> dict[str, Any]:
        return {
            "available": self.available,
            "failure_mode": self.failure,
            "replicas": self.replicas,
            "outages": self.outages,
            "held": len(self._held),
            **({"reason": self.reason} if not self.available else {}),
        }

    # -- one round trip each ----------------------------------------------------------------

    async def _call(self, operation: Any, *, probe: bool = False) -> Any:
        if not self.available and not probe:
            # Known to be away: no request waits for it; the probe finds it back.
            if asyncio.iscoroutine(operation):
                operation.close()
            raise SharedUnavailable(self.reason)
        try:
            async with asyncio.timeout(self.timeout):
                result = await operation
        except (TimeoutError, OSError, ConnectionError) as exc:
            _cancelled_meanwhile()  # a cancel must not become "Redis is away" (3.11)
            self._down(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
            raise SharedUnavailable(self.reason) from exc
        except Exception as exc:
            from redis.exceptions import RedisError

            if not isinstance(exc, RedisError):
                raise
            self._down(f"{type(exc).__name__}: {exc}")
            raise SharedUnavailable(self.reason) from exc
        self._up()
        return result

    def _down(self, reason: str) -> None:
        self.reason = reason
        if self.available:
            self.available = False
            self.outages += 1
            self._tasks.append(asyncio.ensure_future(self._probing()))
            logger.warning(
                "Redis at %s is unavailable (%s): limits are now %s until it is back",
                self.url.split("@")[-1],
                reason,
                {
                    "local": f"this replica's share (1/{self.replicas})",
                    "open": "not shared",
                    "closed": "refused (503)",
                }[self.failure],
            )

    def _up(self) -> None:
        if not self.available:
            self.available = True
            self.reason = ""
            logger.warning("Redis is back: limits are shared again")
            self._notify()

    async def _probing(self) -> None:
        """While Redis is away: ask it every ``PROBE`` seconds; the first answer ends the
        outage (limits are shared again from the next request)."""
        while not self.available:
            await asyncio.sleep(PROBE)
            with contextlib.suppress(SharedUnavailable):
                await self._call(self.client.ping(), probe=True)

    def share(self, limit: int) -> int:
        """This replica's share of ``limit`` while Redis is away (``failure = "local"``)."""
        return max(1, math.ceil(limit / max(1, self.replicas)))

    async def acquire(self, pools: Sequence[tuple[str, int]], lease: str, queue: str) -> bool:
        """Take ``lease`` in every pool (name, limit) if each has room and this request is
        among the first waiting in ``queue`` (``""``: no queue, first to ask); else keep its
        place there. Raises :class:`SharedUnavailable`."""
        keys = [self.key(name) for name, _ in pools]
        queue_keys = [self.key(f"queue:{queue}"), self.key(f"queue:{queue}:exp")]
        args: list[str | float] = [self.lease_ttl, lease, self.replica, "1" if queue else "0"]
        args += [limit for _, limit in pools]
        granted, seen = await self._call(
            self._acquire(keys=[*keys, *queue_keys, self.key("replicas")], args=args)
        )
        self.replicas = int(seen)
        # Held (to renew) either way: a lease, or a place in the queue.
        if granted:
            self._held[lease] = keys
        elif queue:
            self._held[lease] = queue_keys
        return bool(granted)

    async def release(self, lease: str, pools: Sequence[str], queue: str) -> None:
        """Give ``lease`` (or its place in ``queue``) back. Never raises: a lease that could
        not be given back expires."""
        self._held.pop(lease, None)
        keys = [self.key(name) for name in pools]
        if queue:
            keys += [self.key(f"queue:{queue}"), self.key(f"queue:{queue}:exp")]
        args = [lease, self.channel, "1" if queue else "0"]
        with contextlib.suppress(SharedUnavailable):
            await self._call(self._release(keys=keys, args=args))

    async def read(self, name: str) -> Any:
        """A JSON value written by :meth:`write` (``None``: none, or it expired)."""
        value = await self._call(self.client.get(self.key(name)))
        if value is None:
            return None
        try:
            return json.loads(value)
        except ValueError:
            return None  # not ours: as if absent

    async def write(self, name: str, value: Any, ttl: float) -> None:
        data = json.dumps(value, separators=(",", ":"))
        await self._call(self.client.set(self.key(name), data, px=max(1, int(ttl * 1000))))

    async def read_map(self, name: str) -> dict[str, str]:
        raw = await self._call(self.client.hgetall(self.key(name)))
        return {
            (k.decode() if isinstance(k, bytes) else str(k)): (
                v.decode() if isinstance(v, bytes) else str(v)
            )
            for k, v in raw.items()
        }

    async def write_map(self, name: str, field: str, value: str, ttl: float = 3600.0) -> None:
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(self.key(name), field, value)
        pipe.expire(self.key(name), int(ttl))
        await self._call(pipe.execute())

    async def holder(self, name: str) -> str | None:
        """Who holds the lock ``name`` (a pool of one), if anyone."""
        members = await self._call(self.client.zrange(self.key(name), 0, 0))
        return members[0].decode() if members else None

    async def outcome(self, name: str, holder: str) -> str | None:
        """What ``holder`` of the lock ``name`` wrote when it finished (``None``: not yet)."""
        value = await self._call(self.client.get(self.key(f"{name}:{holder}:outcome")))
        return value.decode() if isinstance(value, bytes) else None

    async def finish(self, name: str, lease: str, outcome: str, keep: float = 60.0) -> None:
        """Write ``outcome`` for the waiters of every replica and give the lock back (one
        round trip). Never raises: the lock then expires with its lease."""
        self._held.pop(lease, None)
        pipe = self.client.pipeline(transaction=True)
        pipe.set(self.key(f"{name}:{lease}:outcome"), outcome, ex=max(1, int(keep)))
        pipe.zrem(self.key(name), lease)
        pipe.publish(self.channel, "1")
        with contextlib.suppress(SharedUnavailable):
            await self._call(pipe.execute())

    def release_soon(self, lease: str, pools: Sequence[str], queue: str) -> None:
        """:meth:`release` in the background: the answer has gone to the client already,
        and it need not wait for Redis."""
        self._held.pop(lease, None)  # not renewed from now on
        task = asyncio.ensure_future(self.release(lease, pools, queue))
        self._releasing.add(task)
        task.add_done_callback(self._releasing.discard)

    async def _renewing(self) -> None:
        while not self._closing:  # at once (it counts from its start), then every third
            await self.renew()
            _cancelled_meanwhile()
            await asyncio.sleep(self.lease_ttl / 3)

    async def renew(self) -> None:
        """Renew what this replica holds, and its own entry among the replicas (one round
        trip)."""
        keys: list[str] = []
        members: list[str] = []
        for member, held in list(self._held.items()):
            keys += held
            members += [member] * len(held)
        args: list[str | float] = [self.lease_ttl, self.replica, self.key("replicas")]
        args += members
        with contextlib.suppress(SharedUnavailable):
            seen = await self._call(self._renew(keys=keys, args=args))
            self.replicas = int(seen)

    async def _listening(self) -> None:
        """Wake the waiting requests when any replica gives a place back."""
        while not self._closing:
            pubsub = self.client.pubsub()
            try:
                await pubsub.subscribe(self.channel)
                while not self._closing:  # short waits: a cancel the client swallowed is seen
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
                    _cancelled_meanwhile()
                    if message is not None and message.get("type") == "message":
                        self._notify()
            except asyncio.CancelledError:
                raise
            except Exception:  # Redis away: the waiters poll meanwhile; subscribe again
                if self._closing:
                    raise asyncio.CancelledError from None
                _cancelled_meanwhile()  # the client may have turned a cancel into this
                await asyncio.sleep(1.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_changed(self, limit: float) -> None:
        """Until a place may have freed (told, or ``limit`` seconds: waiters also poll)."""
        changed = self._changed
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(limit):
                await changed.wait()


__all__ = ["Failure", "RedisState", "SharedUnavailable"]
