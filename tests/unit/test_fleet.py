"""The fleet: several FakeOllama servers behind one proxy, in one process."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import pytest

from ollama_smart_proxy import Settings, SmartProxy
from ollama_smart_proxy.fleet import Fleet
from ollama_smart_proxy.testing import FakeModel, FakeOllama, FakeReply, HostsASGITransport

from ..helpers import until

pytestmark = pytest.mark.anyio

LLAMA = "llama3.2:latest"
QWEN = "qwen3:latest"


def chat(content: str = "hi", model: str = "llama3.2", **extra: Any) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "stream": False,
        **extra,
    }


@asynccontextmanager
async def fleet(
    fakes: dict[str, FakeOllama], backends: dict[str, dict[str, Any]] | None = None, **options: Any
) -> AsyncIterator[tuple[SmartProxy, httpx.AsyncClient, HostsASGITransport]]:
    """A proxy over ``fakes`` (name -> fake; each a backend of that name), started."""
    transport = HostsASGITransport(fakes)
    specs = [
        {"name": name, "url": f"http://{name}:11434", **(backends or {}).get(name, {})}
        for name in fakes
    ]
    options.setdefault("poll_interval", 60)  # the tests poll when they mean to
    proxy = SmartProxy(Settings(backends=specs, **options), transport=transport)
    client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=proxy), base_url="http://p", timeout=20
    )
    async with proxy, client:
        yield proxy, client, transport


def the_fleet(proxy: SmartProxy) -> Fleet:
    assert proxy.fleet is not None
    return proxy.fleet


def served_by(response: httpx.Response) -> str:
    return response.headers["x-osp-backend"]


def reason(response: httpx.Response) -> str:
    timing = response.headers["server-timing"]
    return timing.split('desc="', 1)[1].split('"', 1)[0].split(" ", 1)[1]


async def post(client: httpx.AsyncClient, body: dict[str, Any]) -> None:
    response = await client.post("/api/chat", json=body)
    assert response.status_code == 200, response.text


def load(fake: FakeOllama, *models: str) -> None:
    import time

    for model in models:
        fake.loaded[model] = time.time() + 300


# -- routing order ---------------------------------------------------------------------------


async def test_a_model_goes_where_it_is_loaded_and_free_then_loaded_then_cold() -> None:
    a, b, c = FakeOllama(), FakeOllama(), FakeOllama()
    load(b, LLAMA)
    async with fleet({"a": a, "b": b, "c": c}) as (proxy, client, _):
        first = await client.post("/api/chat", json=chat())
        assert first.status_code == 200, first.text
        assert served_by(first) == "b" and reason(first) == "loaded"
        # a loaded too; one of them busy (its one slot): the other is loaded and free
        load(a, LLAMA)
        await the_fleet(proxy).inventory.poll_all()
        for fake in (a, b):
            fake.script(FakeReply(content="slow", first_delay=0.5))
        async with anyio.create_task_group() as group:
            group.start_soon(post, client, chat())
            await until(lambda: a.active + b.active == 1)
            busy = "a" if a.active else "b"
            second = await client.post("/api/chat", json=chat())
        assert served_by(second) != busy and reason(second) == "loaded"
        assert c.calls("/api/chat") == []


async def test_a_busy_loaded_backend_is_waited_for_rather_than_a_cold_load() -> None:
    a, b = FakeOllama(), FakeOllama()
    load(b, LLAMA)
    async with fleet({"a": a, "b": b}) as (proxy, client, _):
        b.script(FakeReply(content="slow", first_delay=0.3))
        async with anyio.create_task_group() as group:
            group.start_soon(post, client, chat())
            await until(lambda: b.active == 1)
            second = await client.post("/api/chat", json=chat())
        # b frees in ~0.3 s, a cold load is estimated at 5 s: waiting for b is faster
        assert served_by(second) == "b"
        assert a.calls("/api/chat") == [] and a.loads[LLAMA] == 0


async def test_a_model_not_loaded_anywhere_is_loaded_cold_where_it_is_installed() -> None:
    a = FakeOllama(models=[FakeModel(QWEN)])
    b = FakeOllama()
    async with fleet({"a": a, "b": b}) as (_, client, _t):
        response = await client.post("/api/chat", json=chat())
        assert response.status_code == 200
        assert served_by(response) == "b" and reason(response) == "cold"
        qwen = await client.post("/api/chat", json=chat(model="qwen3"))
        assert qwen.status_code == 200
        assert served_by(qwen) in ("a", "b")


async def test_a_model_no_backend_has_is_a_404_in_the_clients_dialect() -> None:
    async with fleet({"a": FakeOllama(), "b": FakeOllama()}) as (_, client, _t):
        native = await client.post("/api/chat", json=chat(model="nope"))
        assert native.status_code == 404
        assert native.json()["error"] == "model 'nope' not found: no backend has it (a, b)"
        openai = await client.post(
            "/v1/chat/completions",
            json={"model": "nope", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert openai.status_code == 404
        assert openai.json()["error"]["code"] == "model_not_found"
        assert "nope" in openai.json()["error"]["message"]


async def test_a_backend_without_the_model_is_never_asked_for_it() -> None:
    a = FakeOllama(models=[FakeModel(QWEN)])
    b = FakeOllama(models=[FakeModel(LLAMA)])
    async with fleet({"a": a, "b": b}) as (_, client, _t):
        for _ in range(6):
            response = await client.post("/api/chat", json=chat())
            assert served_by(response) == "b"
        assert a.calls("/api/chat") == []


# -- slots and the queue -----------------------------------------------------------------------


async def test_each_backend_runs_at_most_its_slots_and_the_rest_wait_in_the_proxy() -> None:
    a, b = FakeOllama(token_delay=0.01), FakeOllama(token_delay=0.01)
    load(a, LLAMA)
    load(b, LLAMA)
    async with fleet({"a": a, "b": b}, {"a": {"parallel": 2}}) as (proxy, client, _):
        results: list[httpx.Response] = []

        async def one(index: int) -> None:
            results.append(await client.post("/api/chat", json=chat(f"question {index} " * 5)))

        async with anyio.create_task_group() as group:
            for index in range(9):
                group.start_soon(one, index)
        assert [r.status_code for r in results] == [200] * 9
        assert a.max_active <= 2 and b.max_active <= 1
        assert a.max_active + b.max_active == 3  # every slot was used
        assert the_fleet(proxy).describe()["queued"] == 0


async def test_a_full_fleet_queue_is_a_503_with_retry_after() -> None:
    a = FakeOllama()
    load(a, LLAMA)
    async with fleet({"a": a}, max_queue=1) as (_, client, _t):
        a.script(FakeReply(content="slow", first_delay=0.5), FakeReply(content="next"))
        results: list[httpx.Response] = []

        async def one() -> None:
            results.append(await client.post("/api/chat", json=chat()))

        async with anyio.create_task_group() as group:
            group.start_soon(one)
            await until(lambda: a.active == 1)
            group.start_soon(one)
            await anyio.sleep(0.05)
            refused = await client.post("/api/chat", json=chat())
        assert refused.status_code == 503
        assert refused.headers["retry-after"].isdigit()
        assert "OSP_MAX_QUEUE" in refused.json()["error"]
        assert sorted(r.status_code for r in results) == [200, 200]


# -- affinity --------------------------------------------------------------------------------


def conversation(system: str, turns: int) -> list[dict[str, Any]]:
    """A conversation's messages at its turn ``turns`` (0: the first)."""
    messages = [{"role": "system", "content": system}, {"role": "user", "content": "hello"}]
    for turn in range(turns):
        messages.append({"role": "assistant", "content": f"answer {turn}"})
        messages.append({"role": "user", "content": f"turn {turn}"})
    return messages


async def test_a_conversation_stays_on_one_backend_and_conversations_spread() -> None:
    fakes = {name: FakeOllama() for name in ("a", "b", "c")}
    for fake in fakes.values():
        load(fake, LLAMA)
    async with fleet(fakes) as (_, client, _t):
        homes: dict[int, set[str]] = {}
        for index in range(12):
            for turn in range(4):
                body = {"model": "llama3.2", "messages": conversation(f"you are {index}", turn)}
                response = await client.post("/api/chat", json={**body, "stream": False})
                assert reason(response) == "affinity", response.headers["server-timing"]
                homes.setdefault(index, set()).add(served_by(response))
        assert all(len(names) == 1 for names in homes.values())
        assert len({next(iter(names)) for names in homes.values()}) == 3


async def test_a_session_header_names_the_conversation() -> None:
    fakes = {name: FakeOllama() for name in ("a", "b", "c", "d")}
    for fake in fakes.values():
        load(fake, LLAMA)
    async with fleet(fakes) as (_, client, _t):
        seen = set()
        for index in range(6):
            response = await client.post(
                "/api/chat",
                json=chat(f"a different first message {index}"),
                headers={"x-claude-code-session-id": "session-1"},
            )
            seen.add(served_by(response))
        assert len(seen) == 1


async def test_affinity_gives_way_when_its_backend_is_overloaded() -> None:
    a, b = FakeOllama(), FakeOllama()
    load(a, LLAMA)
    load(b, LLAMA)
    async with fleet({"a": a, "b": b}) as (_, client, _t):
        messages = conversation("stay with me", 1)
        home = served_by(await client.post("/api/chat", json=chat() | {"messages": messages}))
        other = "b" if home == "a" else "a"
        fake = a if home == "a" else b
        fake.script(*[FakeReply(content="slow", first_delay=0.4)] * 3)
        answers: list[httpx.Response] = []

        async def turn() -> None:
            answers.append(await client.post("/api/chat", json=chat() | {"messages": messages}))

        async with anyio.create_task_group() as group:
            for _ in range(3):
                group.start_soon(turn)
        # one kept its home; the others did not wait behind it: past the bound, they moved
        assert sorted(served_by(r) for r in answers).count(other) >= 1
        assert any(served_by(r) == home for r in answers)


# -- health and failover -------------------------------------------------------------------


async def test_a_backend_that_refuses_is_failed_over_before_the_first_byte_and_ejected() -> None:
    a, b = FakeOllama(), FakeOllama()
    load(a, LLAMA)
    load(b, LLAMA)
    async with fleet({"a": a, "b": b}) as (proxy, client, transport):
        transport.down("a")
        for _ in range(4):
            response = await client.post("/api/chat", json=chat())
            assert response.status_code == 200
            assert served_by(response) == "b"
        state = {b["name"]: b for b in the_fleet(proxy).describe()["backends"]}
        assert state["a"]["state"] in ("ejected", "down") and state["a"]["ejections"] == 1
        assert "refused" in state["a"]["reason"]
        health = (await client.get("/health")).json()
        assert health["status"] == "ok"
        states = [backend["state"] for backend in health["fleet"]["backends"]]
        assert states[0] in ("ejected", "down") and states[1] == "up"


async def test_a_backend_that_fails_fast_with_503_draws_no_traffic() -> None:
    a, b = FakeOllama(), FakeOllama()
    load(a, LLAMA)
    load(b, LLAMA)
    a.failure = (503, "server busy, please try again.  maximum pending requests exceeded")
    async with fleet({"a": a, "b": b}) as (_, client, _t):
        statuses = []
        for index in range(20):
            response = await client.post("/api/chat", json=chat(f"n {index}"))
            statuses.append(response.status_code)
        assert statuses == [200] * 20
        assert len(a.calls("/api/chat")) == 1  # one try, then ejected for its back-off


async def test_an_ejected_backend_comes_back_after_a_good_poll() -> None:
    a, b = FakeOllama(), FakeOllama()
    load(a, LLAMA)
    async with fleet({"a": a, "b": b}, eject_seconds=0.05) as (proxy, client, transport):
        transport.down("a")
        assert served_by(await client.post("/api/chat", json=chat())) == "b"
        transport.up("a")
        await anyio.sleep(0.06)
        await the_fleet(proxy).inventory.poll_all()
        state = {b["name"]: b["state"] for b in the_fleet(proxy).describe()["backends"]}
        assert state == {"a": "up", "b": "up"}
        transport.down("b")  # a takes the work again
        assert served_by(await client.post("/api/chat", json=chat())) == "a"


async def test_a_5xx_is_answered_when_no_other_backend_can_serve() -> None:
    a = FakeOllama()
    a.failure = (500, "llama runner process has terminated")
    async with fleet({"a": a}) as (_, client, _t):
        response = await client.post("/api/chat", json=chat())
        assert response.status_code == 500
        assert response.json()["error"] == "llama runner process has terminated"
        assert served_by(response) == "a"


async def test_a_stream_cut_after_its_first_byte_ends_with_an_error_and_is_not_replayed() -> None:
    a, b = FakeOllama(), FakeOllama()
    load(a, LLAMA)
    async with fleet({"a": a, "b": b}) as (_, client, _t):
        a.script(FakeReply(content="one two three four", drop_after=2))
        async with client.stream(
            "POST",
            "/v1/chat/completions",
            json={
                "model": "llama3.2",
                "stream": True,
                "messages": [{"role": "user", "content": "hi"}],
            },
        ) as response:
            assert response.status_code == 200
            assert served_by(response) == "a"
            text = "".join([piece async for piece in response.aiter_text()])
        assert '"error"' in text and "[DONE]" not in text
        assert b.calls("/api/chat") == []


async def test_all_backends_down_is_a_503_and_not_ready() -> None:
    async with fleet({"a": FakeOllama(), "b": FakeOllama()}) as (proxy, client, transport):
        transport.down("a")
        transport.down("b")
        response = await client.post("/api/chat", json=chat())
        assert response.status_code in (502, 503)
        await the_fleet(proxy).inventory.poll_all()
        ready = await client.get("/health/ready")
        assert ready.status_code == 503
        assert "no backend is up" in ready.json()["reason"]
        again = await client.post("/api/chat", json=chat())
        assert again.status_code == 503
        assert "down or ejected" in again.json()["error"]


async def test_a_404_from_a_stale_inventory_moves_on_to_a_backend_that_has_the_model() -> None:
    a, b = FakeOllama(), FakeOllama()
    load(a, LLAMA)
    async with fleet({"a": a, "b": b}) as (_, client, _t):
        del a.models[LLAMA]  # deleted behind the proxy's back
        response = await client.post("/api/chat", json=chat())
        assert response.status_code == 200
        assert served_by(response) == "b"
        again = await client.post("/api/chat", json=chat())
        assert served_by(again) == "b" and len(a.calls("/api/chat")) == 1


# -- one catalogue and the other routes -------------------------------------------------------


async def test_the_catalogue_is_the_union_with_the_backends_that_have_each_model() -> None:
    a = FakeOllama(models=[FakeModel(LLAMA), FakeModel(QWEN)], version="0.12.10")
    b = FakeOllama(models=[FakeModel(LLAMA)], version="0.12.9")
    load(b, LLAMA)
    async with fleet({"a": a, "b": b}) as (_, client, _t):
        tags = (await client.get("/api/tags")).json()["models"]
        assert {m["name"]: m["backends"] for m in tags} == {LLAMA: ["a", "b"], QWEN: ["a"]}
        models = (await client.get("/v1/models")).json()["data"]
        assert {m["id"]: m["backends"] for m in models} == {LLAMA: ["a", "b"], QWEN: ["a"]}
        ps = (await client.get("/api/ps")).json()["models"]
        assert [(m["name"], m["backend"]) for m in ps] == [(LLAMA, "b")]
        assert (await client.get("/api/version")).json() == {"version": "0.12.9"}
        show = await client.post("/api/show", json={"model": "qwen3"})
        assert show.status_code == 200 and served_by(show) == "a"


async def test_a_pull_goes_to_one_backend_and_the_model_is_then_routed_there() -> None:
    a = FakeOllama(models=[])
    b = FakeOllama(models=[])
    async with fleet({"a": a, "b": b}) as (_, client, _t):
        pulled = await client.post("/api/pull", json={"model": "llama3.2", "stream": False})
        assert pulled.status_code == 200, pulled.text
        target = served_by(pulled)
        assert sum(f.pulls["llama3.2:latest"] for f in (a, b)) == 1
        response = await client.post("/api/chat", json=chat())
        assert served_by(response) == target


async def test_pull_to_all_pulls_on_every_backend() -> None:
    a, b = FakeOllama(models=[]), FakeOllama(models=[])
    async with fleet({"a": a, "b": b}, pull_to="all") as (_, client, _t):
        pulled = await client.post("/api/pull", json={"model": "llama3.2", "stream": False})
        assert pulled.status_code == 200
        assert a.pulls["llama3.2:latest"] == b.pulls["llama3.2:latest"] == 1


async def test_auto_pull_pulls_on_one_backend_when_none_has_the_model() -> None:
    a, b = FakeOllama(models=[]), FakeOllama(models=[])
    async with fleet({"a": a, "b": b}, auto_pull="on") as (_, client, _t):
        response = await client.post("/api/chat", json=chat())
        assert response.status_code == 200, response.text
        assert sum(f.pulls["llama3.2:latest"] for f in (a, b)) == 1


async def test_a_delete_reaches_every_backend_that_has_the_model() -> None:
    a = FakeOllama()
    b = FakeOllama()
    c = FakeOllama(models=[FakeModel(QWEN)])
    async with fleet({"a": a, "b": b, "c": c}) as (_, client, _t):
        deleted = await client.request("DELETE", "/api/delete", json={"model": "llama3.2"})
        assert deleted.status_code == 200
        assert LLAMA not in a.models and LLAMA not in b.models
        assert c.calls("/api/delete") == []
        tags = (await client.get("/api/tags")).json()["models"]
        assert LLAMA not in {m["name"] for m in tags}
        missing = await client.request("DELETE", "/api/delete", json={"model": "llama3.2"})
        assert missing.status_code == 404


async def test_a_blob_and_the_create_that_uses_it_meet_on_one_backend() -> None:
    fakes = {name: FakeOllama() for name in ("a", "b", "c", "d")}
    async with fleet(fakes) as (_, client, _t):
        digest = "sha256:" + "ab" * 32
        blob = await client.post(f"/api/blobs/{digest}", content=b"GGUF")
        create = await client.post(
            "/api/create", json={"model": "mine", "files": {"model.gguf": digest}}
        )
        assert served_by(blob) == served_by(create)
        landed = [name for name, fake in fakes.items() if fake.calls("/api/create")]
        assert landed == [served_by(create)]


async def test_backend_header_and_metrics_name_the_backend() -> None:
    a = FakeOllama()
    load(a, LLAMA)
    async with fleet({"a": a}) as (_, client, _t):
        await client.post("/api/chat", json=chat())
        metrics = (await client.get("/metrics")).text
        assert 'osp_backend_requests_total{backend="a",reason="loaded"} 1.0' in metrics
        assert 'osp_backend_up{backend="a"} 1.0' in metrics
        assert 'osp_backend_loaded_models{backend="a"} 1.0' in metrics


async def test_one_upstream_builds_no_fleet() -> None:
    proxy = SmartProxy(Settings())
    assert proxy.fleet is None and proxy.terminal is proxy.upstream


def test_upstream_and_backends_together_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="upstream and backends are both given"):
        Settings(upstream="http://x:11434", backends=[{"name": "a", "url": "http://a"}])
    monkeypatch.setenv("OLLAMA_HOST", "gpu:11434")  # OLLAMA_HOST is not a choice of the user's
    settings = Settings(backends=[{"name": "a", "url": "http://a"}])
    assert settings.backends[0].url == "http://a:80"


def test_backends_come_from_json_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "OSP_BACKENDS",
        json.dumps([{"name": "gpu-a", "url": "gpu-a", "parallel": 4, "labels": {"gpu": "a100"}}]),
    )
    spec = Settings().backends[0]
    assert (spec.name, spec.url, spec.parallel, spec.labels) == (
        "gpu-a",
        "http://gpu-a:11434",
        4,
        {"gpu": "a100"},
    )


@pytest.mark.parametrize(
    ("backends", "message"),
    [
        ([{"name": "a", "url": "x"}, {"name": "a", "url": "y"}], "the name 'a' is given twice"),
        ([{"name": "a", "url": "x"}, {"name": "b", "url": "x"}], "have the same url"),
        ([{"name": "a b", "url": "x"}], "must be 1-64 letters"),
        ([{"name": "a", "url": "x", "parallel": 0}], "parallel"),
        ([{"name": "a"}], "url"),
    ],
)
def test_bad_backends_are_refused_with_the_reason(backends: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Settings(backends=backends)


async def test_a_client_that_leaves_while_queued_never_reaches_a_backend() -> None:
    a = FakeOllama()
    load(a, LLAMA)
    async with fleet({"a": a}) as (proxy, client, _t):
        a.script(FakeReply(content="slow", first_delay=0.5), FakeReply(content="next"))
        async with anyio.create_task_group() as group:
            group.start_soon(post, client, chat())
            await until(lambda: a.active == 1)
            with anyio.move_on_after(0.1):  # the client gives up while it waits
                await client.post("/api/chat", json=chat("leaving"))
            assert the_fleet(proxy).describe()["queued"] == 0
        await anyio.sleep(0.1)
        assert [r.json["messages"][0]["content"] for r in a.calls("/api/chat")] == ["hi"]


async def test_the_fleet_layer_alone_over_two_fakes() -> None:
    """``Fleet`` is a plain ASGI layer: over any apps (here two fakes, no upstream), below
    the entry that makes the exchange."""
    from ollama_smart_proxy import standalone
    from ollama_smart_proxy.fleet import Backend

    a, b = FakeOllama(models=[FakeModel(QWEN)]), FakeOllama()
    layer = Fleet([Backend(name="a", app=a), Backend(name="b", app=b)], poll_interval=60)
    app = standalone(layer)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://fleet"
    ) as client:
        await layer.start()
        response = await client.post("/api/chat", json=chat())
        assert response.status_code == 200 and served_by(response) == "b"
        await layer.aclose()


async def test_a_conversation_keeps_its_home_when_its_model_loads_elsewhere() -> None:
    fakes = {name: FakeOllama() for name in ("a", "b", "c", "d")}
    load(fakes["a"], LLAMA)
    async with fleet(fakes) as (proxy, client, _t):
        homes = {}
        for index in range(8):
            body = chat() | {"messages": conversation(f"conversation {index}", 0)}
            homes[index] = served_by(await client.post("/api/chat", json=body))
        assert set(homes.values()) == {"a"}
        for fake in fakes.values():  # now loaded everywhere: the hash order alone would move some
            load(fake, LLAMA)
        await the_fleet(proxy).inventory.poll_all()
        for index in range(8):
            body = chat() | {"messages": conversation(f"conversation {index}", 1)}
            assert served_by(await client.post("/api/chat", json=body)) == "a"


async def test_a_stream_that_breaks_before_its_first_byte_is_failed_over() -> None:
    a, b = FakeOllama(), FakeOllama()
    load(a, LLAMA)
    async with fleet({"a": a, "b": b}) as (_, client, _t):
        a.script(FakeReply(content="never sent", drop_after=0))  # headers, then the cut
        response = await client.post("/api/chat", json=chat() | {"stream": True})
        assert response.status_code == 200
        assert served_by(response) == "b"
        assert '"done":true' in response.text and "error" not in response.text
