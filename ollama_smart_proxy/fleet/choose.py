"""The routing decision: which backend serves a generation, from what the fleet knows.

A pure function of the backends' state (no I/O, microseconds), so it can be tested for
every state and reused by the queue each time a slot frees:

1. The candidates are the routable backends that have the model (or were not polled yet).
2. A conversation (``key``) goes to the first backend, in its consistent-hash order, among
   those where the model is loaded, while that one is not overloaded (bounded loads: at most
   ``BOUND`` times the average load of those backends); its prompt cache is there. A
   ``follow_up`` turn (one with history to reuse) waits for it, when it is busy, about as
   long as one generation holds a slot there.
3. Otherwise: loaded with a free slot (least busy), then, when a loaded slot is expected
   to free sooner than a cold load takes, wait for one; then installed (a cold load), where
   it unloads least (the fewest models loaded).
4. A request that has waited as long as a cold load takes (``waited``) takes any free slot.

A backend is returned only when it has room now; ``None`` with reason ``"wait"`` means queue,
``"none"`` that no backend can serve the model at all.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from .backend import Backend

#: Bounded loads: a conversation's backend keeps it while its load is at most this many
#: times the average (Mirrokni, Thorup and Zadimoghaddam's consistent hashing with bounded
#: loads, as HAProxy and Vimeo use it), or while fewer than twice its slots are taken.
BOUND = 1.25


@dataclass(frozen=True, slots=True)
class Choice:
    backend: Backend | None
    reason: str
    #: The backend a waiting request is kept for (its conversation's), if any.
    target: Backend | None = None


_MASK = 2**64 - 1
_UNIT = 1 / (2**64 + 1)


def rendezvous(key: bytes, backends: Sequence[Backend]) -> list[Backend]:
    """``backends`` in ``key``'s order of preference (stable when others come and go):
    weighted rendezvous hashing. Each backend scores ``-weight / ln(u)``, ``u`` uniform in
    (0, 1) from the key mixed with the backend's seed (a hash of its name) by splitmix64's
    finaliser; the highest score wins. ``key`` is itself a hash (its first 8 bytes are used).
    """
    if len(backends) < 2:
        return list(backends)
    k = int.from_bytes(key[:8].ljust(8, b"\0"))
    log, unit = math.log, _UNIT
    scored = []
    for b in backends:
        x = (k ^ b.seed) * 0xBF58476D1CE4E5B9 & _MASK
        x = (x ^ (x >> 31)) * 0x94D049BB133111EB & _MASK
        x ^= x >> 29
        scored.append((-b.weight / log((x + 1) * unit), b))
    scored.sort(key=_first, reverse=True)
    return [b for _, b in scored]


def _first(item: tuple[float, Backend]) -> float:
    return item[0]


def _least_busy(backends: Sequence[Backend]) -> Backend:
    return min(backends, key=lambda b: (b.busy(), -b.weight, b.name))


def choose(
    model: str,
    backends: Sequence[Backend],
    key: bytes | None,
    now: float,
    wall: float,
    *,
    waited: float = 0.0,
    follow_up: bool = False,
    waiting: int = 0,
    queued: Mapping[str, int] | None = None,
    excluded: Collection[Backend] = (),
    home: Backend | None = None,
) -> Choice:
    """Where a generation for ``model`` (canonical) goes now; see the module.

    ``waited``: seconds the request has waited already (``math.inf``: it takes any free
    slot); ``follow_up``: a later turn of its conversation; ``waiting``: requests queued for
    this model; ``queued``: requests waiting for each backend (by name), part of its load;
    ``home``: the backend that served the conversation's last turn, if known (it comes
    first, before the hash order, while it has the model loaded and is within the bound).
    """
    candidates = [b for b in backends if b not in excluded and b.routable(now) and b.has(model)]
    if not candidates:
        return Choice(None, "none")
    loaded = [b for b in candidates if b.is_loaded(model, wall)]
    if key is not None and loaded:
        order = rendezvous(key, loaded)
        if home is not None and home in loaded:
            order.remove(home)
            order.insert(0, home)
        waits = queued or {}
        loads = {b.name: b.in_flight + waits.get(b.name, 0) for b in loaded}
        bound = math.ceil(BOUND * (sum(loads.values()) + 1) / len(loaded))
        # Overloaded: past the bound, and past twice what it runs at once (with few
        # requests the bound alone would move a conversation off a backend it just filled,
        # losing its prompt cache to save less than one generation's wait).
        target = next((b for b in order if loads[b.name] < max(bound, 2 * b.parallel)), order[0])
        if target.room(model):
            return Choice(target, "affinity" if len(loaded) > 1 else "loaded")
        if follow_up and waited < target.hold_seconds:  # its prompt cache is there
            return Choice(None, "wait", target)
    free_loaded = [b for b in loaded if b.room(model)]
    if free_loaded:
        return Choice(_least_busy(free_loaded), "loaded")
    cold = [b for b in candidates if b not in loaded and b.room(model)]
    if loaded:
        # Wait for a loaded slot while that is expected to be sooner than a cold load, and
        # for no longer than a cold load would take.
        load_cost = min((b.load_seconds for b in cold), default=math.inf)
        slots = sum(b.parallel for b in loaded)
        hold = sum(b.hold_seconds for b in loaded) / len(loaded)
        expected = hold * (waiting + 1) / slots
        if waited < load_cost and expected <= load_cost:
            return Choice(None, "wait")
    if cold:
        # A cold load where it unloads least: the fewest models loaded (none of them
        # running, if it can be), then the least busy; a conversation's own order breaks ties.
        rank = {b.name: i for i, b in enumerate(rendezvous(key, cold))} if key is not None else {}
        pick = min(
            cold,
            key=lambda b: (
                len(b.loaded_now(wall)),
                bool(b.running),
                b.busy(),
                rank.get(b.name, 0),
                b.name,
            ),
        )
        return Choice(pick, "cold" if pick.installed is not None else "unknown")
    return Choice(None, "wait")


__all__ = ["BOUND", "Choice", "choose", "rendezvous"]
