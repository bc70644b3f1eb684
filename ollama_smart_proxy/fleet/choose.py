"""The routing decision: which backend serves a generation, from what the fleet knows.

A pure function of the backends' state (no I/O, microseconds), so it can be tested for
every state and reused by the queue each time a slot frees:

1. The candidates are the routable backends that have the model (or were not polled yet).
2. A conversation (``key``) goes to the first backend, in its consistent-hash order, among
   those where the model is loaded, while that one is not overloaded (bounded loads: at most
   ``BOUND`` times the average load of those backends); its prompt cache is there. A
   ``follow_up`` turn (one with history to reuse) waits a little for it when it is busy.
3. Otherwise: loaded with a free slot (least busy), then, when a loaded slot is expected
   to free sooner than a cold load takes, wait for one; then installed (a cold load).
4. ``patient=False`` (a request that waited its patience out) takes any slot that is free.

A backend is returned only when it has room now; ``None`` with reason ``"wait"`` means queue,
``"none"`` that no backend can serve the model at all.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from .backend import Backend

#: Bounded loads: a conversation's backend keeps it while its load is at most this many
#: times the average (Mirrokni, Thorup and Zadimoghaddam's consistent hashing with bounded
#: loads, as HAProxy and Vimeo use it).
BOUND = 1.25


@dataclass(frozen=True, slots=True)
class Choice:
    backend: Backend | None
    reason: str
    #: The backend a waiting request is kept for (its conversation's), if any.
    target: Backend | None = None


def _score(key: bytes, backend: Backend) -> float:
    """Weighted rendezvous hashing: the backend with the highest score wins the key."""
    digest = hashlib.blake2b(key + backend.name.encode(), digest_size=8).digest()
    unit = (int.from_bytes(digest, "big") + 1) / (2**64 + 1)  # in (0, 1)
    return -backend.weight / math.log(unit)


def rendezvous(key: bytes, backends: Sequence[Backend]) -> list[Backend]:
    """``backends`` in ``key``'s order of preference (stable when others come and go)."""
    return sorted(backends, key=lambda backend: _score(key, backend), reverse=True)


def _least_busy(backends: Sequence[Backend]) -> Backend:
    return min(backends, key=lambda b: (b.busy(), -b.weight, b.name))


def choose(
    model: str,
    backends: Sequence[Backend],
    key: bytes | None,
    now: float,
    wall: float,
    *,
    patient: bool = True,
    follow_up: bool = False,
    waiting: int = 0,
    queued: Mapping[str, int] | None = None,
    excluded: Collection[Backend] = (),
) -> Choice:
    """Where a generation for ``model`` (canonical) goes now; see the module. ``waiting``:
    requests queued for this model; ``queued``: requests waiting for each backend (by name),
    part of its load."""
    candidates = [b for b in backends if b not in excluded and b.routable(now) and b.has(model)]
    if not candidates:
        return Choice(None, "none")
    loaded = [b for b in candidates if b.is_loaded(model, wall)]
    target: Backend | None = None
    if key is not None and loaded:
        order = rendezvous(key, loaded)
        waits = queued or {}
        loads = {b.name: b.in_flight + waits.get(b.name, 0) for b in loaded}
        capacity = math.ceil(BOUND * (sum(loads.values()) + 1) / len(loaded))
        target = next((b for b in order if loads[b.name] < capacity), order[0])
        if target.room(model):
            return Choice(target, "affinity" if len(loaded) > 1 else "loaded")
        if patient and follow_up:  # its prompt cache is there: worth a short wait
            return Choice(None, "wait", target)
        target = None
    free_loaded = [b for b in loaded if b.room(model)]
    if free_loaded:
        return Choice(_least_busy(free_loaded), "loaded")
    cold = [b for b in candidates if b not in loaded and b.room(model)]
    if loaded and patient:
        slots = sum(b.parallel for b in loaded)
        hold = sum(b.hold_seconds for b in loaded) / len(loaded)
        expected = hold * (waiting + 1) / slots
        if not cold or expected <= min(b.load_seconds for b in cold):
            return Choice(None, "wait", target)
    if cold:
        if key is not None:
            return Choice(rendezvous(key, cold)[0], "cold")
        pick = _least_busy(cold)
        return Choice(pick, "cold" if pick.installed is not None else "unknown")
    return Choice(None, "wait", target)


__all__ = ["BOUND", "Choice", "choose", "rendezvous"]
