"""What the fleet knows of its backends, from cheap polls that never generate.

Every ``poll_interval`` seconds (with 20% jitter, so replicas and backends do not beat in
step), each backend is asked ``/api/version``, ``/api/tags`` and ``/api/ps``: its version,
what it has installed and what it has loaded. None of them loads a model or moves its
``keep_alive``. A backend that does not answer in ``poll_timeout`` is down until it does.
The merged listings (``/api/tags``, ``/api/ps``, ``/api/version`` for the whole fleet) are
made here too, from the backends' own answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import secrets
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from .._json import loads
from .._side import side_request
from ..errors import ProxyError, UpstreamError
from ..types import Scope
from .backend import Backend

if TYPE_CHECKING:
    from ..shared import RedisState

logger = logging.getLogger("ollama_smart_proxy.fleet")


async def _get_json(backend: Backend, scope: Scope | None, path: str, limit: float) -> Any:
    async with asyncio.timeout(limit):
        status, body = await side_request(backend.app, scope, "GET", path)
    if status != 200:
        raise UpstreamError(f"{backend.name} answered {path} with HTTP {status}")
    try:
        return loads(body)
    except ValueError:
        raise UpstreamError(
            f"{backend.name} answered {path} with a body that is not JSON"
        ) from None


def _entries(data: Any) -> list[dict[str, Any]]:
    models = data.get("models") if isinstance(data, dict) else None
    return (
        [entry for entry in models if isinstance(entry, dict)] if isinstance(models, list) else []
    )


def version_key(version: str) -> tuple[int, ...]:
    """``"0.12.3-rc1"`` -> ``(0, 12, 3)``: versions compared as numbers."""
    return tuple(int(part) for part in re.findall(r"\d+", version.split("-", 1)[0])[:4])


class Inventory:
    """``Inventory(backends, *, poll_interval=5.0, poll_timeout=2.0, on_change=None)``:
    polls the backends; ``on_change()`` is called after each round (the queue re-decides)."""

    def __init__(
        self,
        backends: Sequence[Backend],
        *,
        poll_interval: float = 5.0,
        poll_timeout: float = 2.0,
        on_change: Callable[[], None] | None = None,
        shared: RedisState | None = None,
    ) -> None:
        self.backends = list(backends)
        #: With several replicas: one polls (the leader, by a lease), the others read.
        self.shared = shared
        self._lease = secrets.token_hex(8)
        self.leader = shared is None
        self.poll_interval = poll_interval
        self.poll_timeout = poll_timeout
        self.on_change = on_change
        self._task: asyncio.Task[None] | None = None
        self._soon: dict[str, asyncio.Task[None]] = {}
        self.rounds = 0

    def start(self) -> None:
        """Start polling in the background (once; also called by the first request)."""
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._run())

    def soon(self, backend: Backend) -> None:
        """Poll ``backend`` now, out of turn (once at a time): it loaded a model, and may
        have unloaded another for it."""
        running = self._soon.get(backend.name)
        if running is None or running.done():
            self._soon[backend.name] = asyncio.ensure_future(self._out_of_turn(backend))

    async def _out_of_turn(self, backend: Backend) -> None:
        await self.poll(backend)
        if self.on_change is not None:
            self.on_change()

    async def aclose(self) -> None:
        for task in self._soon.values():
            task.cancel()
        await asyncio.gather(*self._soon.values(), return_exceptions=True)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        while True:
            if self.shared is None:
                await self.poll_all()
            else:
                await self._round(self.shared)
            await asyncio.sleep(self.poll_interval * random.uniform(0.8, 1.2))

    async def _round(self, shared: RedisState) -> None:
        """One round with replicas: the leader polls and writes what it saw; the others
        read it (and poll themselves when nobody wrote it, or Redis is away). Ejections any
        replica made are applied everywhere."""
        from ..shared import SharedUnavailable

        try:
            self.leader = await self._lead(shared)
            view = None if self.leader else await shared.read("fleet:view")
        except SharedUnavailable:
            self.leader, view = False, None
        if view is None:
            await self.poll_all()
            if self.leader:
                with contextlib.suppress(SharedUnavailable):
                    await shared.write("fleet:view", self._view(), 3 * self.poll_interval)
        else:
            self._apply(view)
            self.rounds += 1
        with contextlib.suppress(SharedUnavailable):
            self._apply_ejections(await shared.read_map("fleet:ejected"))
        if self.on_change is not None:
            self.on_change()

    async def _lead(self, shared: RedisState) -> bool:
        if await shared.holder("fleet:poller") == self._lease:
            return True
        return await shared.acquire([("fleet:poller", 1)], self._lease, "")

    def _view(self) -> dict[str, Any]:
        now, wall = time.monotonic(), time.time()
        return {
            backend.name: {
                "state": backend.state,
                "reason": backend.reason,
                "version": backend.version,
                "installed": sorted(backend.installed) if backend.installed is not None else None,
                "loaded": dict(backend.loaded),
                "ejected_until": wall + backend.ejected_until - now,
            }
            for backend in self.backends
        }

    def _apply(self, view: dict[str, Any]) -> None:
        """Take the leader's view of the backends as this replica's."""
        now, wall = time.monotonic(), time.time()
        for backend in self.backends:
            seen = view.get(backend.name)
            if not isinstance(seen, dict):
                continue
            installed = seen.get("installed")
            backend.installed = (
                {str(name): {"name": name} for name in installed}
                if isinstance(installed, list)
                else None
            )
            loaded = seen.get("loaded")
            if isinstance(loaded, dict):
                backend.loaded = {str(k): float(v) for k, v in loaded.items()}
            backend.version = seen.get("version") if isinstance(seen.get("version"), str) else None
            state = seen.get("state")
            if state in ("up", "down", "ejected") and not backend.probing:
                backend.state = state
                backend.reason = str(seen.get("reason") or "")
            until = seen.get("ejected_until")
            if isinstance(until, int | float):
                backend.ejected_until = max(backend.ejected_until, now + until - wall)
            backend.polled = now

    def _apply_ejections(self, ejected: dict[str, str]) -> None:
        now, wall = time.monotonic(), time.time()
        for backend in self.backends:
            try:
                until = float(ejected.get(backend.name, 0))
            except ValueError:
                continue
            if until > wall and now + until - wall > backend.ejected_until:
                backend.ejected_until = now + until - wall
                if backend.state == "up":
                    backend.state, backend.reason = "ejected", "ejected by another replica"

    def share_ejection(self, backend: Backend) -> None:
        """Tell the other replicas that ``backend`` is ejected, and until when (in the
        background: never waited on)."""
        if self.shared is None:
            return
        until = time.time() + backend.ejected_until - time.monotonic()
        task = asyncio.ensure_future(self._share_ejection(self.shared, backend.name, until))
        self._soon[f"eject:{backend.name}"] = task

    async def _share_ejection(self, shared: RedisState, name: str, until: float) -> None:
        from ..shared import SharedUnavailable

        with contextlib.suppress(SharedUnavailable):
            await shared.write_map("fleet:ejected", name, str(until))

    async def poll_all(self) -> None:
        """Poll every backend at once; tell ``on_change``."""
        await asyncio.gather(*(self.poll(backend) for backend in self.backends))
        self.rounds += 1
        if self.on_change is not None:
            self.on_change()

    async def poll(self, backend: Backend) -> None:
        """Ask one backend what it has; a failure marks it down (never raises)."""
        timeout = self.poll_timeout
        try:
            version, tags, ps = await asyncio.gather(
                _get_json(backend, None, "/api/version", timeout),
                _get_json(backend, None, "/api/tags", timeout),
                _get_json(backend, None, "/api/ps", timeout),
            )
        except (ProxyError, TimeoutError, OSError) as exc:
            reason = getattr(exc, "message", "") or f"no answer within {timeout:g}s"
            if backend.state == "up":
                logger.warning("backend %s is down: %s", backend.name, reason)
            backend.poll_failed(reason)
            return
        was = backend.state
        number = version.get("version") if isinstance(version, dict) else None
        backend.polled_ok(
            str(number) if number else None,
            _entries(tags),
            _entries(ps),
            time.monotonic(),
            time.time(),
        )
        if was != "up" and backend.state == "up":
            logger.warning("backend %s is up again", backend.name)

    # -- the fleet's listings -------------------------------------------------------------

    async def _gather(self, scope: Scope, path: str) -> list[tuple[Backend, Any]]:
        # A backend known to be down would only add its timeout: asked only if all are.
        asked = [b for b in self.backends if b.state != "down"] or self.backends
        answers = await asyncio.gather(
            *(_get_json(b, scope, path, self.poll_timeout) for b in asked),
            return_exceptions=True,
        )
        results = []
        for backend, answer in zip(asked, answers, strict=True):
            if isinstance(answer, BaseException):
                if not isinstance(answer, ProxyError | TimeoutError | OSError):
                    raise answer
                continue
            results.append((backend, answer))
        if not results:
            raise UpstreamError(f"no backend answered {path}: every one is down")
        return results

    async def tags(self, scope: Scope) -> dict[str, Any]:
        """``/api/tags`` of the fleet: one entry per model, from the first backend that has
        it, with the names of every backend that has it in ``backends``."""
        merged: dict[str, dict[str, Any]] = {}
        for backend, data in await self._gather(scope, "/api/tags"):
            for entry in _entries(data):
                name = str(entry.get("model") or entry.get("name") or "")
                if name not in merged:
                    merged[name] = {**entry, "backends": []}
                merged[name]["backends"].append(backend.name)
        return {"models": list(merged.values())}

    async def ps(self, scope: Scope) -> dict[str, Any]:
        """``/api/ps`` of the fleet: every loaded model, with the backend it is loaded on."""
        models = []
        for backend, data in await self._gather(scope, "/api/ps"):
            models += [{**entry, "backend": backend.name} for entry in _entries(data)]
        return {"models": models}

    async def version(self, scope: Scope) -> dict[str, Any]:
        """``/api/version`` of the fleet: the lowest, which every backend has reached."""
        versions = [
            str(data["version"])
            for _, data in await self._gather(scope, "/api/version")
            if isinstance(data, dict) and data.get("version")
        ]
        if not versions:
            raise UpstreamError("no backend answered /api/version with a version")
        return {"version": min(versions, key=version_key)}


__all__ = ["Inventory", "version_key"]
