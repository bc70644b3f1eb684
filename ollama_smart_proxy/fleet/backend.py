"""One backend of the fleet as the proxy sees it: what it has, what runs on it, its health.

The proxy's own counts (generations in flight, per model) are exact; what the backend has
installed and loaded comes from polls of ``/api/tags`` and ``/api/ps`` and from what its
answers say (a model it loaded, a model it does not have). Health is a circuit breaker:
a failure ejects the backend for a back-off that doubles while failures go on; once the
back-off has passed, one request (or a poll) probes it, and a success closes the breaker.
"""

from __future__ import annotations

import collections
import hashlib
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from ..names import canonical, short
from ..types import ASGIApp

State = Literal["up", "down", "ejected"]

#: Seconds Ollama keeps a model loaded after its last request, by default (``keep_alive``).
DEFAULT_KEEP_ALIVE = 300.0
#: The longest back-off of an ejected backend (unless ``eject_seconds`` is longer).
MAX_EJECT = 60.0


@dataclass(eq=False)
class Backend:
    """A backend: its configuration, the ASGI app that reaches it, and its state."""

    name: str
    app: ASGIApp
    url: str = ""
    parallel: int = 1
    max_concurrent: int | None = None
    weight: float = 1.0
    labels: dict[str, str] = field(default_factory=dict)

    # -- inventory (from polls and answers) ---------------------------------------------
    #: Installed models by canonical name -> their ``/api/tags`` entry (``None``: not polled
    #: yet, so any model may be there).
    installed: dict[str, dict[str, Any]] | None = None
    #: Loaded models by canonical name -> when Ollama will unload them (``time.time()``).
    loaded: dict[str, float] = field(default_factory=dict)
    version: str | None = None
    polled: float = 0.0

    # -- the proxy's own counts ----------------------------------------------------------
    in_flight: int = 0
    running: collections.Counter[str] = field(default_factory=collections.Counter)
    #: Requests routed here, by reason; errors; ejections; cold loads seen.
    routed: collections.Counter[str] = field(default_factory=collections.Counter)
    errors: int = 0
    ejections: int = 0
    cold_loads: int = 0
    #: Smoothed seconds Ollama here took to load a model (from ``load_duration``).
    load_seconds: float = 5.0
    #: Smoothed seconds a generation holds its slot here.
    hold_seconds: float = 2.0

    # -- health --------------------------------------------------------------------------
    state: State = "up"
    reason: str = ""
    failures: int = 0
    ejected_until: float = 0.0
    probing: bool = False
    #: The replicas whose share of the slots this one keeps (Redis away: ``local``); 1 else.
    divisor: int = 1

    def __post_init__(self) -> None:
        #: A hash of the name, mixed with a conversation's key for its order of backends
        #: (the same in every replica).
        digest = hashlib.blake2b(self.name.encode(), digest_size=8).digest()
        self.seed = int.from_bytes(digest)

    # -- what routing asks -----------------------------------------------------------------

    def has(self, model: str) -> bool:
        """Whether ``model`` (canonical) is installed here (or may be: not polled yet)."""
        return self.installed is None or model in self.installed

    def is_loaded(self, model: str, now: float) -> bool:
        until = self.loaded.get(model)
        return until is not None and until > now

    def loaded_now(self, wall: float) -> list[str]:
        return [model for model, until in self.loaded.items() if until > wall]

    def room(self, model: str) -> bool:
        """Whether one more generation for ``model`` runs at once here (not queued by Ollama)."""
        divisor = self.divisor
        if self.max_concurrent is not None and self.in_flight >= -(-self.max_concurrent // divisor):
            return False
        return self.running[model] < -(-self.parallel // divisor)

    def busy(self) -> float:
        """How busy it is, for least-loaded choices: generations per slot, by weight."""
        return self.in_flight / (self.parallel * self.weight)

    def routable(self, now: float) -> bool:
        """Whether a request may go here: up, or ejected with its back-off over and no probe
        running (half-open: this request is the probe)."""
        if self.state == "up":
            return True
        return self.state == "ejected" and now >= self.ejected_until and not self.probing

    # -- what happens ----------------------------------------------------------------------

    def take(self, model: str, now: float) -> None:
        self.in_flight += 1
        self.running[model] += 1
        if self.state == "ejected":
            self.probing = True

    def release(self, model: str, held: float) -> None:
        self.hold_seconds = 0.8 * self.hold_seconds + 0.2 * held
        self.in_flight -= 1
        self.running[model] -= 1
        if self.running[model] <= 0:
            del self.running[model]

    def served(self, model: str, load_seconds: float, now: float) -> bool:
        """A generation for ``model`` succeeded: the model is loaded, the breaker closes.
        Returns whether Ollama had to load it (it may have unloaded another for it)."""
        cold = load_seconds > 0.5
        if cold:
            self.cold_loads += 1
            self.load_seconds = 0.7 * self.load_seconds + 0.3 * load_seconds
        self.loaded[model] = now + DEFAULT_KEEP_ALIVE
        if self.installed is not None and model not in self.installed:
            self.installed[model] = {"name": model, "model": model}
        self.succeeded()
        return cold

    def succeeded(self) -> None:
        self.failures = 0
        self.probing = False
        if self.state != "up":
            self.state, self.reason = "up", ""

    def failed(self, reason: str, eject_seconds: float, now: float) -> None:
        """A request failed in a way that says the backend is unwell: eject it for a
        back-off that doubles with each failure in a row."""
        self.errors += 1
        self.failures += 1
        self.probing = False
        backoff = min(eject_seconds * 2 ** (self.failures - 1), max(MAX_EJECT, eject_seconds))
        self.ejected_until = now + backoff
        if self.state != "ejected":
            self.ejections += 1
        self.state, self.reason = "ejected", reason

    def missing(self, model: str) -> None:
        """The backend said it does not have ``model``."""
        if self.installed is not None:
            self.installed.pop(model, None)
        self.loaded.pop(model, None)

    def polled_ok(
        self,
        version: str | None,
        tags: list[dict[str, Any]],
        ps: list[dict[str, Any]],
        now: float,
        wall: float,
    ) -> None:
        """A poll answered: the inventory is what it says; a down backend is up again, an
        ejected one whose back-off is over is up (a failing request ejects it again)."""
        self.version = version
        self.installed = {
            canonical(str(entry.get("model") or entry.get("name") or "")): entry for entry in tags
        }
        self.loaded = {}
        for entry in ps:
            name = canonical(str(entry.get("model") or entry.get("name") or ""))
            self.loaded[name] = _expiry(entry.get("expires_at"), wall)
        self.polled = now
        if self.state == "down" or (self.state == "ejected" and now >= self.ejected_until):
            self.state, self.reason = "up", ""

    def poll_failed(self, reason: str) -> None:
        """A poll found no server: down (even if ejected: no probe goes to it) until a
        poll answers."""
        self.probing = False
        self.state, self.reason = "down", reason

    def describe(self, now: float) -> dict[str, Any]:
        data: dict[str, Any] = {
            "name": self.name,
            "state": self.state,
            "version": self.version,
            "in_flight": self.in_flight,
            "parallel": self.parallel,
            "max_concurrent": self.max_concurrent,
            "weight": self.weight,
            "installed": sorted(map(short, self.installed)) if self.installed is not None else None,
            "loaded": sorted(map(short, self.loaded_now(time.time()))),
            "routed": dict(self.routed),
            "errors": self.errors,
            "ejections": self.ejections,
            "cold_loads": self.cold_loads,
            "polled_s_ago": round(now - self.polled, 1) if self.polled else None,
        }
        if self.labels:
            data["labels"] = dict(self.labels)
        if self.reason:
            data["reason"] = self.reason
        if self.state == "ejected":
            data["ejected_for_s"] = round(max(0.0, self.ejected_until - now), 1)
        return data


def _expiry(value: object, wall: float) -> float:
    """When Ollama will unload a model, from ``/api/ps``'s ``expires_at`` (RFC 3339)."""
    if isinstance(value, str) and value:
        from datetime import datetime

        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            pass
    return wall + DEFAULT_KEEP_ALIVE


__all__ = ["DEFAULT_KEEP_ALIVE", "MAX_EJECT", "Backend", "State"]
