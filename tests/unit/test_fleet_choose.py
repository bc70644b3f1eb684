"""The routing decision, for every state hypothesis can make of a fleet."""

from __future__ import annotations

import hashlib
import math
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from ollama_smart_proxy.fleet import Backend, choose, rendezvous
from ollama_smart_proxy.fleet.choose import BOUND

MODELS = ["a:latest", "b:latest", "c:latest"]
NOW = 1000.0
WALL = 2_000_000_000.0


async def _app(scope: Any, receive: Any, send: Any) -> None:  # pragma: no cover - not called
    raise AssertionError


@st.composite
def backends(draw: st.DrawFn, min_size: int = 1) -> list[Backend]:
    count = draw(st.integers(min_size, 6))
    fleet = []
    for index in range(count):
        backend = Backend(
            name=f"gpu-{index}",
            app=_app,
            parallel=draw(st.integers(1, 3)),
            max_concurrent=draw(st.none() | st.integers(1, 4)),
            weight=draw(st.sampled_from([0.5, 1.0, 2.0])),
        )
        polled = draw(st.booleans())
        if polled:
            installed = draw(st.sets(st.sampled_from(MODELS)))
            backend.installed = {m: {"name": m} for m in installed}
            for model in draw(st.sets(st.sampled_from(sorted(installed)))) if installed else ():
                backend.loaded[model] = WALL + draw(st.sampled_from([-1.0, 100.0]))
        for model in MODELS:
            running = draw(st.integers(0, 3))
            if running:
                backend.running[model] = running
                backend.in_flight += running
        backend.state = draw(st.sampled_from(["up", "up", "down", "ejected"]))
        backend.ejected_until = NOW + draw(st.sampled_from([-1.0, 10.0]))
        backend.probing = draw(st.booleans())
        fleet.append(backend)
    return fleet


keys = st.none() | st.binary(min_size=1, max_size=16)


@settings(max_examples=200, deadline=None)
@given(backends(), st.sampled_from(MODELS), keys, st.booleans(), st.booleans())
def test_a_choice_is_always_a_backend_that_can_serve_now(
    fleet: list[Backend], model: str, key: bytes | None, patient: bool, follow_up: bool
) -> None:
    choice = choose(
        model, fleet, key, NOW, WALL, waited=0.0 if patient else math.inf, follow_up=follow_up
    )
    candidates = [b for b in fleet if b.routable(NOW) and b.has(model)]
    if choice.backend is not None:
        assert choice.backend in candidates
        assert choice.backend.room(model)
    assert (choice.reason == "none") == (not candidates)
    if not patient:  # an impatient request takes any slot that is free
        assert (choice.backend is not None) == any(b.room(model) for b in candidates)


@settings(max_examples=200, deadline=None)
@given(backends(), st.sampled_from(MODELS), st.booleans())
def test_a_loaded_backend_with_a_free_slot_is_preferred(
    fleet: list[Backend], model: str, patient: bool
) -> None:
    choice = choose(model, fleet, None, NOW, WALL, waited=0.0 if patient else math.inf)
    free_loaded = [
        b
        for b in fleet
        if b.routable(NOW) and b.has(model) and b.is_loaded(model, WALL) and b.room(model)
    ]
    if free_loaded:
        assert choice.backend in free_loaded and choice.reason == "loaded"
        assert choice.backend.busy() == min(b.busy() for b in free_loaded)
    elif choice.backend is not None:
        assert not choice.backend.is_loaded(model, WALL)


@settings(max_examples=150, deadline=None)
@given(st.integers(2, 8), st.binary(min_size=1, max_size=16), st.data())
def test_a_conversation_moves_only_when_its_backend_goes(
    count: int, key: bytes, data: st.DataObject
) -> None:
    fleet = [Backend(name=f"gpu-{i}", app=_app, parallel=2) for i in range(count)]
    for backend in fleet:
        backend.installed = {"a:latest": {}}
        backend.loaded["a:latest"] = WALL + 100
    home = choose("a:latest", fleet, key, NOW, WALL).backend
    assert home is rendezvous(key, fleet)[0]
    gone = data.draw(st.sampled_from([b for b in fleet if b is not home]))
    rest = [b for b in fleet if b is not gone]
    assert choose("a:latest", rest, key, NOW, WALL).backend is home  # others leaving: stays
    moved = choose("a:latest", [b for b in fleet if b is not home], key, NOW, WALL).backend
    assert moved is rendezvous(key, [b for b in fleet if b is not home])[0]


@settings(max_examples=150, deadline=None)
@given(
    st.integers(2, 6), st.lists(st.integers(0, 4), min_size=6, max_size=6), st.binary(min_size=1)
)
def test_affinity_never_puts_a_conversation_past_the_load_bound(
    count: int, loads: list[int], key: bytes
) -> None:
    fleet = [Backend(name=f"gpu-{i}", app=_app, parallel=8) for i in range(count)]
    loads = [load * 5 for load in loads]  # up to 20 each: past twice the slots
    for backend, load in zip(fleet, loads, strict=False):
        backend.installed = {"a:latest": {}}
        backend.loaded["a:latest"] = WALL + 100
        backend.in_flight = load
        backend.running["a:latest"] = load
    choice = choose("a:latest", fleet, key, NOW, WALL)
    if choice.backend is None:  # every slot is taken: it waits
        assert not any(b.room("a:latest") for b in fleet)
        return
    bound = math.ceil(BOUND * (sum(b.in_flight for b in fleet) + 1) / count)
    capacity = max(bound, 2 * 8)
    if any(b.in_flight < capacity for b in fleet):
        assert choice.backend.in_flight < capacity


def test_the_share_of_conversations_follows_the_weights() -> None:
    heavy = Backend(name="heavy", app=_app, weight=3.0)
    light = Backend(name="light", app=_app, weight=1.0)
    keys = [hashlib.blake2b(str(i).encode(), digest_size=16).digest() for i in range(4000)]
    wins = sum(rendezvous(key, [heavy, light])[0] is heavy for key in keys)
    assert 0.70 < wins / 4000 < 0.80  # 3 of 4
