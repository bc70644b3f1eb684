"""What the proxy knows of one Ollama's models: its catalogue, pulls in flight, preloads.

One :class:`UpstreamModels` serves one upstream (a layer that spreads over several servers
would hold one each). It talks to Ollama through an ASGI app (the stack below the model
loader), with requests of its own: ``/api/tags``, ``/api/pull``, and empty generate or embed
requests that load a model.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .._json import loads
from .._ndjson import LineSplitter
from .._pipeline import error_message
from .._side import side_request
from ..errors import ModelNotFound, Overloaded, ProxyError, UpstreamError, UpstreamTimeout
from ..names import canonical
from ..types import ASGIApp

if TYPE_CHECKING:
    from ..shared import RedisState

logger = logging.getLogger("ollama_smart_proxy.models")

#: A pull reports progress to the log at most this often (and at every 10%).
PROGRESS_EVERY = 5.0


class Catalogue:
    """Ollama's ``/api/tags``, kept for ``ttl`` seconds; refreshed by one caller at a time."""

    def __init__(self, app: ASGIApp, *, ttl: float) -> None:
        self.app = app
        self.ttl = ttl
        self._names: set[str] = set()
        self._fetched = 0.0
        self._refresh: asyncio.Future[set[str]] | None = None

    def invalidate(self) -> None:
        """Forget the list: the next question asks Ollama again (after a pull or delete)."""
        self._fetched = 0.0

    @property
    def age(self) -> float | None:
        return time.monotonic() - self._fetched if self._fetched else None

    async def names(self, *, fresh: bool = False) -> set[str]:
        """The installed models (full names), from the cache unless ``fresh`` or stale."""
        if not fresh and self._fetched and time.monotonic() - self._fetched < self.ttl:
            return self._names
        if self._refresh is None or self._refresh.done():
            self._refresh = asyncio.ensure_future(self._fetch())
        return await asyncio.shield(self._refresh)

    async def _fetch(self) -> set[str]:
        status, body = await side_request(self.app, None, "GET", "/api/tags")
        if status != 200:
            raise UpstreamError(f"Ollama answered /api/tags with HTTP {status}")
        try:
            models = loads(body).get("models") or []
        except (ValueError, AttributeError):
            raise UpstreamError("Ollama answered /api/tags with a body that is not JSON") from None
        names = {
            canonical(str(entry.get("model") or entry.get("name") or ""))
            for entry in models
            if isinstance(entry, dict)
        }
        self._names = names
        self._fetched = time.monotonic()
        return names

    async def has(self, model: str) -> bool:
        """Whether ``model`` is installed; a "no" from a cached list is checked once more."""
        name = canonical(model)
        if name in await self.names():
            return True
        return name in await self.names(fresh=True)


@dataclass
class Pull:
    """One pull in flight, shared by every request that waits for the model."""

    model: str
    started: float = field(default_factory=time.monotonic)
    status: str = "starting"
    completed: int = 0
    total: int = 0
    waiters: int = 0
    error: ProxyError | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    #: The timer that stops the pull once nobody has waited for it for the grace.
    abandon: asyncio.TimerHandle | None = None
    abandoned: bool = False

    def describe(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "status": self.status,
            "completed": self.completed,
            "total": self.total,
            "waiters": self.waiters,
            "seconds": round(time.monotonic() - self.started, 1),
        }


@dataclass
class Preload:
    model: str
    status: str = "pending"
    reason: str | None = None

    def describe(self) -> dict[str, Any]:
        data = {"model": self.model, "status": self.status}
        if self.reason:
            data["reason"] = self.reason
        return data


class UpstreamModels:
    """Catalogue, single-flight pulls and loading, for one upstream."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        catalogue_ttl: float = 10.0,
        pull_timeout: float = 1800.0,
        on_pull: Callable[[str, str], None] | None = None,
        max_pulls: int = 2,
        max_waiting_pulls: int = 16,
        pull_grace: float = 30.0,
        shared: RedisState | None = None,
    ) -> None:
        if max_pulls < 1 or max_waiting_pulls < 0 or pull_grace < 0:
            raise ValueError("max_pulls must be positive, the others not negative")
        self.max_pulls = max_pulls
        self.max_waiting_pulls = max_waiting_pulls
        self.pull_grace = pull_grace
        self._slots: asyncio.Semaphore | None = None
        self.app = app
        #: Pulls single-flight across replicas (a lock with a lease in Redis), if set.
        self.shared = shared
        self.catalogue = Catalogue(app, ttl=catalogue_ttl)
        self.pull_timeout = pull_timeout
        self.pulls: dict[str, Pull] = {}
        self.preloads: list[Preload] = []
        self._preloading: asyncio.Task[None] | None = None
        #: Called with (model, "ok" or "failed") when a pull ends (metrics).
        self.on_pull = on_pull

    # -- presence and pulls -----------------------------------------------------------------

    async def ensure(self, model: str, *, may_pull: bool, why_not: str = "") -> None:
        """Return once ``model`` is installed: at once if it is, after a pull if it may be
        pulled (one pull per model, whoever asks); else raise ``ModelNotFound``."""
        if await self.catalogue.has(model):
            return
        if not may_pull:
            raise ModelNotFound(
                f"model '{model}' not found: it is not installed{why_not}", model=model
            )
        await self.pull(model)

    async def pull(self, model: str) -> None:
        """Pull ``model``, or wait for the pull already running; raise what it failed with.

        A waiter that leaves does not stop the pull at once: the next request that wants the
        model may come. Once nobody has waited for ``pull_grace`` seconds it is stopped.
        At most ``max_pulls`` run at once (each holds one connection to Ollama) and
        ``max_waiting_pulls`` more wait for a place; one more name is a 503.
        """
        key = canonical(model)
        pull = self.pulls.get(key)
        if pull is None:
            if len(self.pulls) >= self.max_pulls + self.max_waiting_pulls:
                raise Overloaded(
                    f"{len(self.pulls)} pulls are running or waiting, the most this proxy "
                    f"takes (OSP_MAX_PULLS, OSP_MAX_WAITING_PULLS): '{model}' is not pulled",
                    retry_after=30,
                )
            pull = self.pulls[key] = Pull(model)
            pull.task = asyncio.ensure_future(self._run(pull, key))
        pull.waiters += 1
        if pull.abandon is not None:
            pull.abandon.cancel()
            pull.abandon = None
        try:
            await pull.done.wait()
        finally:
            pull.waiters -= 1
            if not pull.waiters and not pull.done.is_set():
                loop = asyncio.get_running_loop()
                pull.abandon = loop.call_later(self.pull_grace, self._abandon, pull)
        if pull.error is not None:
            raise copy.copy(pull.error)  # one exception object per waiter

    def _abandon(self, pull: Pull) -> None:
        """Nobody has waited for ``pull`` for ``pull_grace`` seconds: stop it (Ollama keeps
        what it downloaded, and resumes from there when the model is pulled again)."""
        pull.abandon = None
        if pull.waiters or pull.done.is_set() or pull.task is None:
            return
        logger.warning(
            "pull of %s stopped: nobody waited for it for %gs (OSP_PULL_GRACE)",
            pull.model,
            self.pull_grace,
        )
        pull.abandoned = True
        pull.task.cancel()

    async def _run(self, pull: Pull, key: str) -> None:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.max_pulls)
        try:
            pull.status = "waiting for a place"
            lease = await self._lock(key) if self.shared is not None else None
            if lease is False:  # another replica pulls it: wait for its outcome
                lease = await self._follow(pull, key)
            if lease is not False:
                try:
                    async with self._slots:
                        logger.info("pulling %s", pull.model)
                        pull.status = "starting"
                        await self._run_pull(pull)
                finally:
                    if isinstance(lease, str) and self.shared is not None:
                        outcome = "ok" if pull.error is None else f"error:{pull.error.message}"
                        await self.shared.finish(f"pull:{key}", lease, outcome)
        except asyncio.CancelledError:
            if not pull.abandoned:
                raise
            pull.error = UpstreamError(f"the pull of '{pull.model}' was stopped: nobody waited")
        finally:
            self.pulls.pop(key, None)  # the next request may try again
            pull.done.set()
        if self.on_pull is not None:
            result = "abandoned" if pull.abandoned else "ok"
            self.on_pull(pull.model, "failed" if pull.error is not None else result)

    async def _lock(self, key: str) -> str | bool | None:
        """The lock on pulling ``key`` across replicas: its lease, ``False`` when another
        replica holds it, ``None`` when Redis is away (this replica pulls on its own)."""
        from ..shared import SharedUnavailable

        assert self.shared is not None
        self.shared.start()
        lease = secrets.token_hex(8)
        try:
            granted = await self.shared.acquire([(f"pull:{key}", 1)], lease, "")
        except SharedUnavailable:
            return None
        return lease if granted else False

    async def _follow(self, pull: Pull, key: str) -> str | bool | None:
        """Wait for the pull another replica runs and take its outcome as this one's
        (``False``); or, when that replica went away without one, pull here (the lock's
        lease, or ``None`` when Redis went away too)."""
        from ..shared import SharedUnavailable

        shared = self.shared
        assert shared is not None
        pull.status = "pulled by another replica"
        deadline = time.monotonic() + self.pull_timeout
        holder: str | None = None
        while time.monotonic() < deadline:
            try:
                if holder is None:
                    holder = await shared.holder(f"pull:{key}")
                outcome = await shared.outcome(f"pull:{key}", holder) if holder else None
                if outcome is None and await shared.holder(f"pull:{key}") != holder:
                    # It finished just now, or went away without a word (then: pull here).
                    outcome = await shared.outcome(f"pull:{key}", holder) if holder else None
                    if outcome is None:
                        lease = await self._lock(key)
                        if lease is not False:
                            return lease
                        holder = None
                        continue
            except SharedUnavailable:
                return None
            if outcome is not None:
                if outcome != "ok":
                    pull.error = UpstreamError(outcome.removeprefix("error:"))
                else:
                    pull.status = "success"
                self.catalogue.invalidate()
                return False
            await shared.wait_changed(0.5)
        pull.error = UpstreamTimeout(
            f"pulling '{pull.model}' (on another replica) did not finish within "
            f"{self.pull_timeout:g}s (OSP_PULL_TIMEOUT)"
        )
        return False

    async def _run_pull(self, pull: Pull) -> None:
        try:
            async with asyncio.timeout(self.pull_timeout):
                await self._pull(pull)
        except TimeoutError:
            pull.error = UpstreamTimeout(
                f"pulling '{pull.model}' did not finish within {self.pull_timeout:g}s "
                "(OSP_PULL_TIMEOUT)"
            )
        except ProxyError as exc:
            pull.error = _pull_error(pull.model, exc)
        except Exception as exc:  # pragma: no cover - a bug: every waiter must still hear
            logger.exception("pull of %s failed", pull.model)
            pull.error = UpstreamError(f"cannot pull '{pull.model}': {exc}")
        finally:
            self.catalogue.invalidate()
        if pull.error is not None:
            logger.warning("pull of %s failed: %s", pull.model, pull.error.message)
        else:
            logger.info("pulled %s in %.1fs", pull.model, time.monotonic() - pull.started)

    async def _pull(self, pull: Pull) -> None:
        lines = LineSplitter()
        logged = (0.0, -1)  # time, tenth

        async def progress(data: bytes) -> None:
            nonlocal logged
            for line in lines.feed(data):
                try:
                    event = loads(line)
                except ValueError:
                    raise UpstreamError(
                        f"Ollama sent a pull line that is not JSON: {line[:100]!r}"
                    ) from None
                if not isinstance(event, dict):
                    continue
                if event.get("error"):
                    raise _PullFailed(str(event["error"]))
                pull.status = str(event.get("status") or pull.status)
                if isinstance(event.get("total"), int) and isinstance(event.get("completed"), int):
                    pull.total, pull.completed = event["total"], event["completed"]
                    tenth = pull.completed * 10 // pull.total if pull.total else 0
                    now = time.monotonic()
                    if tenth != logged[1] or now - logged[0] >= PROGRESS_EVERY:
                        logged = (now, tenth)
                        logger.info(
                            "pulling %s: %d%% of %.1f GB",
                            pull.model,
                            tenth * 10,
                            pull.total / 1e9,
                        )

        body = {"model": pull.model, "stream": True}
        try:
            status, answer = await side_request(
                self.app, None, "POST", "/api/pull", body, sink=progress
            )
        except _PullFailed as failed:
            raise _registry_error(pull.model, failed.message) from None
        if status != 200:
            raise _registry_error(pull.model, error_message(answer, status), status)
        if pull.status != "success":
            raise UpstreamError(f"the pull of '{pull.model}' ended before 'success'")

    # -- loading ----------------------------------------------------------------------------

    async def load(self, model: str, keep_alive: Any = None) -> None:
        """Load ``model`` into memory, as Ollama's own clients do: an empty request."""
        body: dict[str, Any] = {"model": model}
        if keep_alive is not None:
            body["keep_alive"] = keep_alive
        status, answer = await side_request(self.app, None, "POST", "/api/generate", body)
        if status == 400 and b"does not support generate" in answer:
            status, answer = await side_request(
                self.app, None, "POST", "/api/embed", {**body, "input": ""}
            )
        if status != 200:
            raise UpstreamError(f"cannot load '{model}': {error_message(answer, status)}")

    def start_preload(
        self, models: Sequence[tuple[str, bool]], keep_alive: Callable[[str], Any]
    ) -> None:
        """Load ``models`` in the background, in order (each with whether it may be pulled)."""
        self.preloads = [Preload(model) for model, _ in models]
        if models:
            self._preloading = asyncio.ensure_future(self._preload(models, keep_alive))

    async def _preload(
        self, models: Sequence[tuple[str, bool]], keep_alive: Callable[[str], Any]
    ) -> None:
        for preload, (model, may_pull) in zip(self.preloads, models, strict=True):
            preload.status = "loading"
            try:
                await self.ensure(
                    model, may_pull=may_pull, why_not=" and auto-pull does not allow it"
                )
                await self.load(model, keep_alive(model))
            except ProxyError as exc:
                preload.status, preload.reason = "failed", exc.message
                logger.error("preload of %s failed: %s", model, exc.message)
            else:
                preload.status = "loaded"
                logger.info("preloaded %s", model)

    @property
    def preloading(self) -> bool:
        return self._preloading is not None and not self._preloading.done()

    def describe(self) -> dict[str, Any]:
        age = self.catalogue.age
        return {
            "catalogue_age_s": round(age, 1) if age is not None else None,
            "pulls": [pull.describe() for pull in self.pulls.values()],
            "preload": [preload.describe() for preload in self.preloads],
        }

    async def aclose(self) -> None:
        tasks = [pull.task for pull in self.pulls.values() if pull.task is not None]
        if self._preloading is not None:
            tasks.append(self._preloading)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class _PullFailed(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _registry_error(model: str, message: str, status: int = 500) -> ProxyError:
    text = f"cannot pull '{model}': {message}"
    if status == 404 or "file does not exist" in message or "manifest unknown" in message:
        return ModelNotFound(text + " (the registry has no such model)", model=model)
    if status == 400:
        return ModelNotFound(text, model=model)
    return UpstreamError(text)


def _pull_error(model: str, exc: ProxyError) -> ProxyError:
    if model in exc.message:
        return exc
    return UpstreamError(f"cannot pull '{model}': {exc.message}", status_code=exc.status_code)


__all__ = ["Catalogue", "Preload", "Pull", "UpstreamModels"]
