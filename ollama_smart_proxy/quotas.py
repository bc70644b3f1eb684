"""``Quotas``: per-key limits, the headers clients read, and what each key used.

A key may have limits (fields of its object in ``api_keys``, ``admin_keys`` or the keys
file; ``key_limits`` for keys that set none): ``requests_per_minute``, ``tokens_per_minute``
(prompt + completion), ``input_tokens_per_minute``, ``output_tokens_per_minute``,
``concurrent`` (generations at once), ``tokens_per_day``, ``tokens_per_month`` (UTC days and
months). A generation is admitted when each limit has room; its tokens are reserved from an
estimate (the body's size) and settled from Ollama's own counts when it ends, so a stream that
crosses a limit mid-way finishes, and the next request waits. A refusal is a 429 in the
client's dialect with ``Retry-After``; every answer to a key with limits carries the headers
its API's clients read (``x-ratelimit-*`` on OpenAI routes, ``anthropic-ratelimit-*`` on
Anthropic ones).

Per minute is a token bucket (it refills at the limit per minute; ``x-ratelimit-reset-*``
is the time until it is full again, as OpenAI means it). Without Redis the counts and the usage live in this
process's memory; with it, in Redis, exact across replicas and kept across restarts.
"""

from __future__ import annotations

import asyncio
import calendar
import collections
import math
import secrets
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote

from ._http import header
from ._keys import LIMIT_FIELDS, ApiKey, Limits, request_key
from .access_log import get_context
from .errors import ProxyError, RateLimited
from .health import send_json
from .kinds import route_class
from .routing import route_of
from .types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from .shared import RedisState

#: Bytes of a request body taken for one token, to reserve tokens before Ollama counts them.
BYTES_PER_TOKEN = 4
#: Seconds a place counted in ``concurrent`` outlives a replica that died (with Redis).
CONCURRENT_TTL = 600


@dataclass(frozen=True)
class Settlement:
    """What one request used, when it ends: its estimate replaced by Ollama's counts."""

    name: str
    estimate: int
    prompt: int
    completion: int
    #: When it was admitted (its windows), its lease (``concurrent``).
    admitted: float
    lease: str
    model: str = "-"
    failed: bool = False
    ms: int = 0


@dataclass
class Verdict:
    """What the counters said of one request."""

    allowed: bool
    #: Why not (the limit's field name), and when to try again (seconds).
    limit: str = ""
    retry_after: float = 0.0
    #: For the headers: (limit, remaining, seconds to reset) of requests and tokens.
    requests: tuple[int, int, float] | None = None
    tokens: tuple[int, int, float] | None = None
    input_tokens: tuple[int, int, float] | None = None
    output_tokens: tuple[int, int, float] | None = None


def _day(now: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(now))


def _month(now: float) -> str:
    return time.strftime("%Y-%m", time.gmtime(now))


def _to_next_day(now: float) -> float:
    return 86400 - now % 86400


def _to_next_month(now: float) -> float:
    moment = datetime.fromtimestamp(now, UTC)
    days = calendar.monthrange(moment.year, moment.month)[1]
    start = datetime(moment.year, moment.month, 1, tzinfo=UTC).timestamp()
    return start + days * 86400 - now


#: The per-minute limits: (field, bucket tag, what one admission takes: 1 or the estimate).
_PER_MINUTE = (
    ("requests_per_minute", "r"),
    ("tokens_per_minute", "t"),
    ("input_tokens_per_minute", "i"),
    ("output_tokens_per_minute", "o"),
)


class LocalCounters:
    """The counts in this process's memory (no Redis).

    Per minute is a token bucket: it holds up to the limit, refills at the limit per minute,
    and each request takes from it (a request 1; tokens their estimate, then what Ollama
    counted). A request needs something left in every bucket: a long answer may take a
    bucket below zero, and the next request waits until it has refilled above.
    """

    def __init__(self) -> None:
        #: (key, tag) -> (level, when it was last brought up to date).
        self.buckets: dict[tuple[str, str], tuple[float, float]] = {}
        self.totals: dict[str, float] = collections.defaultdict(float)
        self.running: collections.Counter[str] = collections.Counter()

    def _level(self, name: str, tag: str, limit: int, now: float) -> float:
        level, then = self.buckets.get((name, tag), (float(limit), now))
        return min(float(limit), level + (now - then) * limit / 60)

    async def admit(
        self, name: str, limits: Limits, estimate: int, now: float, lease: str
    ) -> Verdict:
        verdict = Verdict(True)
        levels: dict[str, float] = {}
        for field_name, tag in _PER_MINUTE:
            limit = getattr(limits, field_name)
            if limit is None:
                continue
            level = levels[tag] = self._level(name, tag, limit, now)
            need = 1.0 if tag == "r" else 1e-9  # requests: one; tokens: anything left
            if level < need and verdict.allowed:
                verdict.allowed, verdict.limit = False, field_name
                verdict.retry_after = (need - level) * 60 / limit
        totals = self.totals
        for field_name, key, reset in (
            ("tokens_per_day", f"{name}:d:{_day(now)}", _to_next_day(now)),
            ("tokens_per_month", f"{name}:m:{_month(now)}", _to_next_month(now)),
        ):
            limit = getattr(limits, field_name)
            if limit is not None and totals[key] >= limit and verdict.allowed:
                verdict.allowed, verdict.limit, verdict.retry_after = False, field_name, reset
        busy = limits.concurrent is not None and self.running[name] >= limits.concurrent
        if busy and verdict.allowed:
            verdict.allowed, verdict.limit, verdict.retry_after = False, "concurrent", 1.0
        taken = {"r": 1.0, "t": float(estimate), "i": float(estimate), "o": 0.0}
        for field_name, tag in _PER_MINUTE:
            limit = getattr(limits, field_name)
            if limit is None:
                continue
            level = levels[tag] - (taken[tag] if verdict.allowed else 0)
            if verdict.allowed:
                self.buckets[(name, tag)] = (level, now)
            setattr(
                verdict,
                _HEADER_OF[field_name],
                (limit, max(0, math.floor(level)), (limit - level) * 60 / limit),
            )
        if verdict.allowed:
            self.running[name] += 1
        return verdict

    async def settle(self, used: Settlement) -> None:
        """Replace the estimate by what Ollama counted."""
        name, estimate, admitted = used.name, used.estimate, used.admitted
        prompt, completion = used.prompt, used.completion
        for tag, delta in (
            ("t", prompt + completion - estimate),
            ("i", prompt - estimate),
            ("o", completion),
        ):
            bucket = self.buckets.get((name, tag))
            if bucket is not None:
                self.buckets[(name, tag)] = (bucket[0] - delta, bucket[1])
        self.totals[f"{name}:d:{_day(admitted)}"] += prompt + completion
        self.totals[f"{name}:m:{_month(admitted)}"] += prompt + completion
        self.running[name] -= 1
        if len(self.totals) > 4096:  # days and months long gone
            today, month = _day(admitted), _month(admitted)
            for key in [k for k in self.totals if not k.endswith((today, month))]:
                del self.totals[key]


#: Check every limit and take one place, in one round trip (Redis's clock). KEYS: the four
#: buckets (hashes: level, ts), day, month, the running set. ARGV: limits x7 (0: none),
#: estimate, lease, ttl of a running place. Returns {allowed, which failed (1..7, 0),
#: then level and limit of each bucket (as strings)}.
_ADMIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local estimate = tonumber(ARGV[8])
local limits = {}
for i = 1, 7 do limits[i] = tonumber(ARGV[i]) end
local levels = {}
for i = 1, 4 do
  if limits[i] > 0 then
    local level = tonumber(redis.call('HGET', KEYS[i], 'level') or tostring(limits[i]))
    local ts = tonumber(redis.call('HGET', KEYS[i], 'ts') or tostring(now))
    levels[i] = math.min(limits[i], level + (now - ts) * limits[i] / 60)
  else
    levels[i] = 0
  end
end
local day = tonumber(redis.call('GET', KEYS[5]) or '0')
local month = tonumber(redis.call('GET', KEYS[6]) or '0')
redis.call('ZREMRANGEBYSCORE', KEYS[7], '-inf', now)
local running = redis.call('ZCARD', KEYS[7])
local failed = 0
if limits[1] > 0 and levels[1] < 1 then failed = 1
elseif limits[2] > 0 and levels[2] <= 0 then failed = 2
elseif limits[3] > 0 and levels[3] <= 0 then failed = 3
elseif limits[4] > 0 and levels[4] <= 0 then failed = 4
elseif limits[5] > 0 and running >= limits[5] then failed = 5
elseif limits[6] > 0 and day >= limits[6] then failed = 6
elseif limits[7] > 0 and month >= limits[7] then failed = 7 end
if failed == 0 then
  local taken = {1, estimate, estimate, 0}
  for i = 1, 4 do
    if limits[i] > 0 then
      levels[i] = levels[i] - taken[i]
      redis.call('HSET', KEYS[i], 'level', tostring(levels[i]), 'ts', tostring(now))
      redis.call('EXPIRE', KEYS[i], 600)
    end
  end
  if limits[5] > 0 then redis.call('ZADD', KEYS[7], now + tonumber(ARGV[10]), ARGV[9]) end
end
return {failed == 0 and 1 or 0, failed, tostring(levels[1]), tostring(levels[2]),
        tostring(levels[3]), tostring(levels[4])}
"""

#: Settle one request and count its usage, in one round trip. KEYS: the token, input and
#: output buckets, day, month, the running set, the usage hash. ARGV: the three deltas,
#: the total, the lease, prompt, completion, error (0/1), ms.
_SETTLE = """
for i = 1, 3 do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    redis.call('HINCRBYFLOAT', KEYS[i], 'level', -tonumber(ARGV[i]))
  end
end
redis.call('INCRBYFLOAT', KEYS[4], ARGV[4])
redis.call('EXPIRE', KEYS[4], 172800)
redis.call('INCRBYFLOAT', KEYS[5], ARGV[4])
redis.call('EXPIRE', KEYS[5], 5356800)
redis.call('ZREM', KEYS[6], ARGV[5])
redis.call('HINCRBY', KEYS[7], 'requests', 1)
redis.call('HINCRBY', KEYS[7], 'prompt_tokens', ARGV[6])
redis.call('HINCRBY', KEYS[7], 'completion_tokens', ARGV[7])
redis.call('HINCRBY', KEYS[7], 'errors', ARGV[8])
redis.call('HINCRBY', KEYS[7], 'generation_ms', ARGV[9])
redis.call('EXPIRE', KEYS[7], 5184000)
return 1
"""


class RedisCounters:
    """The counts in Redis, the same buckets: exact across replicas, kept across restarts."""

    def __init__(self, shared: RedisState) -> None:
        self.shared = shared
        self._admit = shared.client.register_script(_ADMIT)
        self._settle = shared.client.register_script(_SETTLE)

    async def admit(
        self, name: str, limits: Limits, estimate: int, now: float, lease: str
    ) -> Verdict:
        key = self.shared.key
        keys = [key(f"q:{name}:{tag}") for _, tag in _PER_MINUTE]
        keys += [
            key(f"q:{name}:d:{_day(now)}"),
            key(f"q:{name}:m:{_month(now)}"),
            key(f"q:{name}:running"),
        ]
        args: list[str | float] = [getattr(limits, f) or 0 for f in LIMIT_FIELDS]
        args += [estimate, lease, CONCURRENT_TTL]
        ok, failed, *levels = await self.shared._call(self._admit(keys=keys, args=args))
        verdict = Verdict(bool(ok))
        for (field_name, _), raw in zip(_PER_MINUTE, levels, strict=True):
            limit = getattr(limits, field_name)
            if limit is not None:
                level = float(raw)
                triple = (limit, max(0, math.floor(level)), (limit - level) * 60 / limit)
                setattr(verdict, _HEADER_OF[field_name], triple)
        if not ok:
            verdict.limit = which = LIMIT_FIELDS[int(failed) - 1]
            per_minute = [f for f, _ in _PER_MINUTE]
            if which == "tokens_per_day":
                verdict.retry_after = _to_next_day(now)
            elif which == "tokens_per_month":
                verdict.retry_after = _to_next_month(now)
            elif which in per_minute:
                level = float(levels[per_minute.index(which)])
                need = 1.0 if which == "requests_per_minute" else 1e-9
                verdict.retry_after = (need - level) * 60 / getattr(limits, which)
            else:  # concurrent: when one ends
                verdict.retry_after = 1.0
        return verdict

    async def settle(self, used: Settlement) -> None:
        name, admitted, model = used.name, used.admitted, used.model
        prompt, completion, estimate = used.prompt, used.completion, used.estimate
        key = self.shared.key
        day = _day(admitted)
        keys = [key(f"q:{name}:{tag}") for tag in ("t", "i", "o")]
        keys += [
            key(f"q:{name}:d:{day}"),
            key(f"q:{name}:m:{_month(admitted)}"),
            key(f"q:{name}:running"),
            key(f"usage:{day}:{quote(name, safe='')}:{quote(model, safe='')}"),
        ]
        total = prompt + completion
        args: list[str | float] = [total - estimate, prompt - estimate, completion, total]
        args += [used.lease, prompt, completion, 1 if used.failed else 0, used.ms]
        await self.shared._call(self._settle(keys=keys, args=args))


#: The header triple a per-minute limit fills, by its field name.
_HEADER_OF = {
    "requests_per_minute": "requests",
    "tokens_per_minute": "tokens",
    "input_tokens_per_minute": "input_tokens",
    "output_tokens_per_minute": "output_tokens",
}


@dataclass
class UsageRow:
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    errors: int = 0
    generation_ms: int = 0


@dataclass
class Usage:
    """What each key used, by key name, model and UTC day (in this process)."""

    rows: dict[tuple[str, str, str], UsageRow] = field(default_factory=dict)

    def add(self, used: Settlement) -> None:
        where = (used.name, used.model, _day(used.admitted))
        row = self.rows.get(where)
        if row is None:
            row = self.rows[where] = UsageRow()
        row.requests += 1
        row.prompt_tokens += used.prompt
        row.completion_tokens += used.completion
        row.errors += int(used.failed)
        row.generation_ms += used.ms

    def report(self, since: str, until: str, key: str | None) -> list[dict[str, Any]]:
        return [
            {"key": name, "model": model, "day": day, **vars(row)}
            for (name, model, day), row in sorted(self.rows.items())
            if since <= day <= until and (key is None or name == key)
        ]


def _seconds(value: float) -> str:
    """OpenAI's reset format: ``1s``, ``6m0s``, ``120ms``."""
    if value < 1:
        return f"{max(0, round(value * 1000))}ms"
    minutes, seconds = divmod(math.ceil(value), 60)
    return f"{minutes}m{seconds}s" if minutes else f"{seconds}s"


def _rfc3339(seconds_from_now: float) -> str:
    moment = datetime.fromtimestamp(time.time() + seconds_from_now, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def rate_limit_headers(dialect: str, verdict: Verdict) -> list[tuple[bytes, bytes]]:
    """The headers the clients of ``dialect`` read for the limits in ``verdict``."""
    headers: list[tuple[bytes, bytes]] = []
    if dialect in ("openai", "responses"):
        for kind, triple in (("requests", verdict.requests), ("tokens", verdict.tokens)):
            if triple is not None:
                limit, remaining, reset = triple
                headers += [
                    (f"x-ratelimit-limit-{kind}".encode(), str(limit).encode()),
                    (f"x-ratelimit-remaining-{kind}".encode(), str(remaining).encode()),
                    (f"x-ratelimit-reset-{kind}".encode(), _seconds(reset).encode()),
                ]
    elif dialect == "anthropic":
        for kind, triple in (
            ("requests", verdict.requests),
            ("tokens", verdict.tokens),
            ("input-tokens", verdict.input_tokens),
            ("output-tokens", verdict.output_tokens),
        ):
            if triple is not None:
                limit, remaining, reset = triple
                headers += [
                    (f"anthropic-ratelimit-{kind}-limit".encode(), str(limit).encode()),
                    (f"anthropic-ratelimit-{kind}-remaining".encode(), str(remaining).encode()),
                    (f"anthropic-ratelimit-{kind}-reset".encode(), _rfc3339(reset).encode()),
                ]
    return headers


class Accounts:
    """Each key's counts and usage: in this process, or in Redis (``shared``).

    ``Accounts(*, default=None, shared=None)``: ``default`` limits for keys that set none.
    Shared by the ``Quotas`` layer (which counts) and ``GET /usage`` (which reports).
    """

    def __init__(
        self,
        *,
        default: Limits | None = None,
        shared: RedisState | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.default = default
        self.shared = shared
        #: Wall-clock time (UTC windows, days, months); a test may set its own.
        self.clock = clock
        self.local = LocalCounters()
        self.redis = RedisCounters(shared) if shared is not None else None
        self.usage = Usage()
        self.refused: collections.Counter[str] = collections.Counter()
        self._pending: set[asyncio.Future[None]] = set()

    def later(self, settling: Coroutine[Any, Any, None]) -> None:
        """Run ``settling`` in the background (kept until it ends)."""
        task = asyncio.ensure_future(settling)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    def limits_of(self, key: ApiKey) -> Limits | None:
        limits: Limits | None = key.limits
        return limits or self.default

    async def admit(
        self, name: str, limits: Limits, estimate: int, now: float, lease: str
    ) -> Verdict:
        from .shared import SharedUnavailable

        if self.redis is not None:
            try:
                return await self.redis.admit(name, limits, estimate, now, lease)
            except SharedUnavailable:
                assert self.shared is not None
                if self.shared.failure == "closed":
                    raise RateLimited(
                        "the proxy's shared state (Redis) is unavailable and "
                        "OSP_REDIS_FAILURE is closed: limits cannot be checked",
                        retry_after=5,
                    ) from None
                if self.shared.failure == "open":
                    return Verdict(True)
        return await self.local.admit(name, limits, estimate, now, lease)

    async def settle(self, used: Settlement, *, counted: bool) -> None:
        """Count what a request used (and, ``counted``, give its place back)."""
        from .shared import SharedUnavailable

        self.usage.add(used)
        if self.redis is not None:
            try:
                await self.redis.settle(used)
                return
            except SharedUnavailable:
                pass
        if counted:
            await self.local.settle(used)

    async def report(self, since: str, until: str, key: str | None) -> list[dict[str, Any]]:
        """The usage rows, from Redis (every replica's) when it is in use."""
        from .shared import SharedUnavailable

        if self.shared is None:
            return self.usage.report(since, until, key)
        try:
            return await _redis_usage(self.shared, since, until, key)
        except SharedUnavailable:
            return self.usage.report(since, until, key)


class Quotas:
    """``Quotas(app, *, accounts)``.

    Acts on generations (every dialect) made with a key: each is counted in its key's
    usage, and checked against its limits (the key's own, else the default); every other
    request passes.
    """

    def __init__(self, app: ASGIApp, *, accounts: Accounts) -> None:
        self.app = app
        self.accounts = accounts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = route_of(scope)
        key = request_key(scope)
        if key is None or route_class(scope["method"], route.kind) != "generation":
            await self.app(scope, receive, send)
            return
        accounts = self.accounts
        limits = accounts.limits_of(key)
        length = header(scope, b"content-length") if limits is not None else None
        estimate = int(length) // BYTES_PER_TOKEN if length and length.isdigit() else 0
        now = accounts.clock()
        lease = secrets.token_hex(8)
        verdict = None
        if limits is not None:
            verdict = await accounts.admit(key.name, limits, estimate, now, lease)
            if not verdict.allowed:
                accounts.refused[verdict.limit] += 1
                retry = max(1, math.ceil(verdict.retry_after))
                raise RateLimited(
                    f"the key '{key.name}' reached its limit {verdict.limit} "
                    f"({getattr(limits, verdict.limit)}): try again in {retry}s",
                    retry_after=retry,
                    headers=rate_limit_headers(route.dialect, verdict),
                )
        extra = rate_limit_headers(route.dialect, verdict) if verdict is not None else []
        status = 0

        async def limited_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if extra:
                    message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        started = time.perf_counter()
        failed = True
        try:
            await self.app(scope, receive, limited_send)
            failed = status >= 400
        finally:
            context = get_context(scope)
            exchange = context.exchange if context is not None else None
            prompt = completion = 0
            model = "-"
            if exchange is not None:
                prompt = exchange.prompt_tokens + exchange.side_prompt_tokens
                completion = exchange.completion_tokens + exchange.side_completion_tokens
                model = exchange.asked_model or exchange.model or "-"
            used = Settlement(
                key.name,
                estimate,
                prompt,
                completion,
                now,
                lease,
                model=model,
                failed=failed,
                ms=int((time.perf_counter() - started) * 1000),
            )
            settling = accounts.settle(used, counted=limits is not None)
            if accounts.redis is None:
                await settling
            else:  # a round trip the client need not wait for: its answer has gone
                accounts.later(settling)


async def _redis_usage(
    shared: RedisState, since: str, until: str, key: str | None
) -> list[dict[str, Any]]:
    prefix = shared.key("usage:")
    rows = []
    async for raw in shared.client.scan_iter(match=prefix + "*", count=500):
        name = raw.decode() if isinstance(raw, bytes) else str(raw)
        parts = name[len(prefix) :].split(":", 2)
        if len(parts) != 3:
            continue
        day, key_name, model = parts[0], unquote(parts[1]), unquote(parts[2])
        if not (since <= day <= until) or (key is not None and key_name != key):
            continue
        values = await shared._call(shared.client.hgetall(name))
        row = {k.decode(): int(float(v)) for k, v in values.items()}
        rows.append({"key": key_name, "model": model, "day": day, **row})
    return sorted(rows, key=lambda row: (row["key"], row["model"], row["day"]))


class UsageEndpoint:
    """``GET /usage?since=YYYY-MM-DD&until=YYYY-MM-DD&key=NAME`` (an admin key's)."""

    def __init__(self, accounts: Accounts) -> None:
        self.accounts = accounts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        from urllib.parse import parse_qs

        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        today = _day(time.time())
        since = (query.get("since") or ["0000-00-00"])[0]
        until = (query.get("until") or [today])[0]
        for name, value in (("since", since), ("until", until)):
            if value != "0000-00-00" and not _is_day(value):
                raise ProxyError(
                    f"'{name}' must be a day as YYYY-MM-DD, got {value!r}", status_code=400
                )
        key = (query.get("key") or [None])[0]
        await send_json(send, 200, {"usage": await self.accounts.report(since, until, key)})


def _is_day(value: str) -> bool:
    try:
        datetime.strptime(value, "%Y-%m-%d")
    except ValueError:
        return False
    return True


__all__ = [
    "LIMIT_FIELDS",
    "Accounts",
    "Limits",
    "LocalCounters",
    "Quotas",
    "RedisCounters",
    "Settlement",
    "Usage",
    "UsageEndpoint",
    "Verdict",
    "rate_limit_headers",
]
