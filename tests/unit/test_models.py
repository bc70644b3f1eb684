"""ModelLoader: aliases, the default model, name matching, auto-pull with one pull per model,
preload and readiness, the keep_alive policy, and /load that loads."""

from __future__ import annotations

import json
import logging
from typing import Any

import anyio
import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ollama_smart_proxy import Settings, SmartProxy, standalone
from ollama_smart_proxy.models import ModelLoader, canonical, matches
from ollama_smart_proxy.testing import FakeModel, FakeOllama, StreamingASGITransport
from tests.conftest import upstream

pytestmark = pytest.mark.anyio


def make(fake: FakeOllama, **settings: Any) -> tuple[SmartProxy, httpx.AsyncClient]:
    proxy = SmartProxy(Settings(**settings), transport=upstream(fake))
    client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=proxy), base_url="http://p", timeout=30
    )
    return proxy, client


async def chat(
    client: httpx.AsyncClient,
    model: str | None,
    *,
    dialect: str = "ollama",
    stream: bool = False,
    text: str = "hello",
    **extra: Any,
) -> httpx.Response:
    body: dict[str, Any] = {"messages": [{"role": "user", "content": text}], "stream": stream}
    if model is not None:
        body["model"] = model
    body.update(extra)
    path = "/api/chat" if dialect == "ollama" else "/v1/chat/completions"
    return await client.post(path, json=body)


def answer_model(response: httpx.Response, dialect: str, stream: bool) -> str:
    if dialect == "ollama":
        if stream:
            return str(json.loads(response.content.splitlines()[-1])["model"])
        return str(response.json()["model"])
    if stream:
        frames = [f[6:] for f in response.text.split("\n\n") if f and f != "data: [DONE]"]
        return str(json.loads(frames[0])["model"])
    return str(response.json()["model"])


# -- aliases and the default model ----------------------------------------------------------

both = pytest.mark.parametrize(
    ("dialect", "stream"),
    [("ollama", False), ("ollama", True), ("openai", False), ("openai", True)],
)


@both
async def test_alias_in_alias_out(
    dialect: str, stream: bool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ollama_smart_proxy.access")
    fake = FakeOllama()
    _, client = make(fake, aliases={"gpt-4o-mini": "llama3.2"})
    response = await chat(client, "gpt-4o-mini", dialect=dialect, stream=stream)
    assert response.status_code == 200
    assert fake.calls("/api/chat")[-1].json["model"] == "llama3.2"
    assert answer_model(response, dialect, stream) == "gpt-4o-mini"  # what the client asked
    log = next(r for r in caplog.records if r.name == "ollama_smart_proxy.access")
    assert "gpt-4o-mini->llama3.2" in log.getMessage()
    assert (log.model, log.upstream_model) == ("gpt-4o-mini", "llama3.2")  # type: ignore[attr-defined]


async def test_alias_for_embeddings_and_show_and_models() -> None:
    fake = FakeOllama()
    _, client = make(fake, aliases={"text-embedding-3-small": "all-minilm"})
    embedded = await client.post(
        "/v1/embeddings", json={"model": "text-embedding-3-small", "input": "x"}
    )
    assert embedded.json()["model"] == "text-embedding-3-small"
    native = await client.post("/api/embed", json={"model": "text-embedding-3-small", "input": "x"})
    assert native.json()["model"] == "text-embedding-3-small"
    shown = await client.post("/api/show", json={"model": "text-embedding-3-small"})
    assert shown.status_code == 200 and shown.json()["details"]["family"] == "bert"
    assert [r.json["model"] for r in fake.requests] == ["all-minilm"] * 3
    one = await client.get("/v1/models/text-embedding-3-small")
    assert one.json()["id"] == "text-embedding-3-small"
    listed = (await client.get("/v1/models")).json()["data"]
    assert "text-embedding-3-small" in [m["id"] for m in listed]
    # /api/tags stays Ollama's own list: ollama clients `show` each name they see there
    tags = (await client.get("/api/tags")).json()["models"]
    assert "text-embedding-3-small" not in [m["name"] for m in tags]


@both
async def test_default_model_for_a_request_that_names_none(dialect: str, stream: bool) -> None:
    fake = FakeOllama()
    _, client = make(fake, default_model="qwen3")
    response = await chat(client, None, dialect=dialect, stream=stream)
    assert response.status_code == 200, response.text
    assert fake.calls("/api/chat")[-1].json["model"] == "qwen3"


async def test_without_a_default_model_ollamas_answer_stands() -> None:
    fake = FakeOllama()
    _, client = make(fake)
    response = await chat(client, None)
    assert response.status_code == 400
    assert response.json() == {"error": "model is required"}


# -- names, as Ollama matches them --------------------------------------------------------

spellings = st.sampled_from(
    [
        "{name}",
        "{name}:latest",
        "{NAME}",
        "{Name}:LATEST",
        "library/{name}",
        "registry.ollama.ai/library/{name}:latest",
        "Registry.Ollama.AI/Library/{Name}",
    ]
)
model_names = st.from_regex(r"[a-z][a-z0-9]{0,8}(\.[0-9])?", fullmatch=True)


@given(name=model_names, first=spellings, second=spellings)
def test_any_two_spellings_of_a_name_are_one_model(name: str, first: str, second: str) -> None:
    a = first.format(name=name, NAME=name.upper(), Name=name.capitalize())
    b = second.format(name=name, NAME=name.upper(), Name=name.capitalize())
    assert canonical(a) == canonical(b)


@pytest.mark.parametrize(
    "spelling", ["LLAMA3.2", "llama3.2:latest", "registry.ollama.ai/library/llama3.2"]
)
async def test_an_installed_model_under_any_spelling_is_not_pulled(spelling: str) -> None:
    fake = FakeOllama()
    _, client = make(fake, auto_pull="on")
    assert (await chat(client, spelling)).status_code == 200
    assert sum(fake.pulls.values()) == 0


# -- auto-pull ------------------------------------------------------------------------------


async def test_twenty_concurrent_requests_in_both_dialects_share_one_pull() -> None:
    fake = FakeOllama(pull_delay=0.3)
    _, client = make(fake, auto_pull=["mistral*"])
    results: list[int] = []

    async def one(index: int) -> None:
        dialect = ("ollama", "openai")[index % 2]
        response = await chat(client, "mistral", dialect=dialect, stream=index % 4 < 2)
        results.append(response.status_code)

    async with anyio.create_task_group() as group:
        for index in range(20):
            group.start_soon(one, index)
    assert results == [200] * 20
    assert fake.pulls["mistral:latest"] == 1
    assert len(fake.calls("/api/chat")) == 20


async def test_a_failed_pull_reaches_every_waiter_and_the_next_request_tries_again() -> None:
    fake = FakeOllama(pullable=[], pull_delay=0.2)
    _, client = make(fake, auto_pull="on")
    responses: list[httpx.Response] = []

    async def one(dialect: str) -> None:
        responses.append(await chat(client, "nosuch", dialect=dialect))

    async with anyio.create_task_group() as group:
        for dialect in ("ollama", "openai", "ollama", "openai"):
            group.start_soon(one, dialect)
    assert fake.pulls["nosuch:latest"] == 1
    for response in responses:
        assert response.status_code == 404
        body = response.json()
        message = body["error"] if isinstance(body["error"], str) else body["error"]["message"]
        assert "cannot pull 'nosuch'" in message
        assert "the registry has no such model" in message
        if not isinstance(body["error"], str):
            assert body["error"]["code"] == "model_not_found"
    assert (await chat(client, "nosuch")).status_code == 404
    assert fake.pulls["nosuch:latest"] == 2  # not cached: the next request tries again
    assert fake.calls("/api/chat") == []


async def test_an_unreachable_registry_is_a_502_naming_the_model() -> None:
    error = "pull model manifest: Get https://registry.ollama.ai/v2/: dial tcp: no such host"
    fake = FakeOllama(pull_errors={"*": error})
    _, client = make(fake, auto_pull="on")
    response = await chat(client, "mistral", dialect="openai")
    assert response.status_code == 502
    assert "cannot pull 'mistral'" in response.json()["error"]["message"]
    assert "no such host" in response.json()["error"]["message"]


async def test_patterns_that_do_not_allow_a_model_make_no_pull() -> None:
    fake = FakeOllama()
    _, client = make(fake, auto_pull=["llama3*", "qwen*"])
    for dialect in ("ollama", "openai"):
        response = await chat(client, "mistral", dialect=dialect)
        assert response.status_code == 404
        text = response.text
        assert "'mistral'" in text and "llama3*, qwen*" in text
    assert sum(fake.pulls.values()) == 0
    assert fake.calls("/api/chat") == []


async def test_auto_pull_off_leaves_the_404_to_ollama() -> None:
    fake = FakeOllama()
    _, client = make(fake)
    response = await chat(client, "mistral")
    assert response.status_code == 404
    assert response.json() == {"error": "model 'mistral' not found"}
    assert fake.calls("/api/tags") == []  # no catalogue is kept when it is not needed


async def test_a_pull_outlives_a_waiter_that_leaves() -> None:
    fake = FakeOllama(pull_delay=0.4)
    proxy, client = make(fake, auto_pull="on")
    with anyio.move_on_after(0.1):
        await chat(client, "mistral")  # the client gives up while the pull runs
    health = (await client.get("/health")).json()["models"]
    assert [pull["model"] for pull in health["pulls"]] == ["mistral"]
    assert health["pulls"][0]["waiters"] == 0
    with anyio.fail_after(5):
        while fake.find("mistral") is None:
            await anyio.sleep(0.02)
    assert (await chat(client, "mistral")).status_code == 200
    assert fake.pulls["mistral:latest"] == 1
    await proxy.aclose()


async def test_pull_progress_is_in_health_and_the_log(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="ollama_smart_proxy.models")
    fake = FakeOllama(pull_delay=0.5)
    _, client = make(fake, auto_pull="on")
    seen: list[dict[str, Any]] = []

    async def watch() -> None:
        for _ in range(40):
            pulls = (await client.get("/health")).json()["models"]["pulls"]
            seen.extend(pulls)
            await anyio.sleep(0.02)

    async with anyio.create_task_group() as group:
        group.start_soon(watch)
        assert (await chat(client, "mistral")).status_code == 200
        group.cancel_scope.cancel()
    assert any(p["total"] and p["waiters"] == 1 for p in seen)
    progress = [r for r in caplog.records if "pulling mistral:" in r.getMessage()]
    assert 1 <= len(progress) <= 11  # one line per 10%, not per chunk
    assert any("pulled mistral" in r.getMessage() for r in caplog.records)


async def test_a_pull_past_pull_timeout_answers_504_naming_the_model() -> None:
    fake = FakeOllama(pull_delay=1)
    _, client = make(fake, auto_pull="on", pull_timeout=0.2)
    with anyio.fail_after(3):
        response = await chat(client, "mistral", dialect="openai")
    assert response.status_code == 504
    assert "pulling 'mistral' did not finish within 0.2s" in response.json()["error"]["message"]


async def test_a_delete_through_the_proxy_refreshes_the_catalogue() -> None:
    fake = FakeOllama()
    _, client = make(fake, auto_pull="on", catalogue_ttl=3600)
    assert (await chat(client, "llama3.2")).status_code == 200
    tags_before = len(fake.calls("/api/tags"))
    deleted = await client.request("DELETE", "/api/delete", json={"model": "llama3.2"})
    assert deleted.status_code == 200
    assert (await chat(client, "llama3.2")).status_code == 200  # pulled again
    assert fake.pulls["llama3.2:latest"] == 1
    assert len(fake.calls("/api/tags")) > tags_before


async def test_a_model_missing_from_a_stale_catalogue_is_checked_again() -> None:
    fake = FakeOllama()
    _, client = make(fake, auto_pull=["nothing*"], catalogue_ttl=3600)
    assert (await chat(client, "llama3.2")).status_code == 200
    fake.models["mistral:latest"] = FakeModel("mistral")  # installed behind the proxy's back
    assert (await chat(client, "mistral")).status_code == 200
    assert sum(fake.pulls.values()) == 0


# -- keep_alive ---------------------------------------------------------------------------


@pytest.mark.parametrize("dialect", ["ollama", "openai"])
async def test_keep_alive_policy_and_the_clients_own(dialect: str) -> None:
    fake = FakeOllama()
    _, client = make(fake, keep_alive={"llama3.2*": -1, "*": "10m"})
    await chat(client, "llama3.2", dialect=dialect)
    await chat(client, "qwen3", dialect=dialect)
    await chat(client, "qwen3", dialect=dialect, keep_alive="1m")
    sent = [r.json.get("keep_alive") for r in fake.calls("/api/chat")]
    assert sent == [-1, "10m", "1m"]
    await client.post("/api/embed", json={"model": "all-minilm", "input": "x"})
    assert fake.calls("/api/embed")[-1].json["keep_alive"] == "10m"


# -- preload and readiness -----------------------------------------------------------------


async def test_preload_is_visible_in_readiness() -> None:
    fake = FakeOllama(pull_delay=0.4)
    proxy, client = make(fake, preload=["llama3.2", "mistral"], auto_pull=["mistral"])
    async with proxy:
        assert (await client.get("/health/live")).status_code == 200
        ready = await client.get("/health/ready")
        assert ready.status_code == 503
        assert "preloading" in ready.json()["reason"] and "mistral" in ready.json()["reason"]
        with anyio.fail_after(5):
            while (await client.get("/health/ready")).status_code != 200:
                await anyio.sleep(0.05)
        preload = (await client.get("/health")).json()["models"]["preload"]
    assert preload == [
        {"model": "llama3.2", "status": "loaded"},
        {"model": "mistral", "status": "loaded"},
    ]
    assert {"llama3.2:latest", "mistral:latest"} <= set(fake.loaded)


async def test_a_failed_preload_is_shown_and_does_not_stop_the_proxy(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake = FakeOllama()
    proxy, client = make(fake, preload=["missing-model"])
    async with proxy:
        with anyio.fail_after(5):
            while (await client.get("/health/ready")).status_code != 200:
                await anyio.sleep(0.02)
        preload = (await client.get("/health")).json()["models"]["preload"]
        assert preload[0]["status"] == "failed"
        assert "auto-pull does not allow it" in preload[0]["reason"]
        assert (await chat(client, "llama3.2")).status_code == 200
    assert "preload of missing-model failed" in caplog.text


async def test_readiness_can_ignore_preload() -> None:
    fake = FakeOllama(pull_delay=2)
    proxy, client = make(fake, preload=["mistral"], auto_pull="on", ready_waits_for_preload=False)
    async with proxy:
        assert (await client.get("/health/ready")).status_code == 200


# -- /load ----------------------------------------------------------------------------------


async def test_load_of_installed_pullable_and_forbidden_models() -> None:
    fake = FakeOllama()
    _, client = make(fake, auto_pull=["mistral*"], aliases={"fast": "llama3.2"})
    installed = await chat(client, "llama3.2", text="/load qwen3")
    assert installed.json()["message"]["content"] == "Loaded 'qwen3'"
    pulled = await chat(client, "llama3.2", text="/load mistral")
    assert pulled.json()["message"]["content"] == "Loaded 'mistral'"
    assert fake.pulls["mistral:latest"] == 1
    forbidden = await chat(client, "llama3.2", text="/load phi4")
    assert forbidden.json()["message"]["content"] == (
        "'phi4' is not installed and auto-pull does not allow it."
    )
    alias = await chat(client, "llama3.2", text="/load fast")
    assert alias.json()["message"]["content"] == "Loaded 'fast'"
    loads = [r.json["model"] for r in fake.calls("/api/generate")]
    assert loads == ["qwen3", "mistral", "llama3.2"]  # the alias resolved on the same path
    assert {"qwen3:latest", "mistral:latest", "llama3.2:latest"} <= set(fake.loaded)


@pytest.mark.parametrize("dialect", ["ollama", "openai"])
async def test_answers_name_the_loaded_model(dialect: str) -> None:
    fake = FakeOllama()
    _, client = make(fake)
    history = [
        {"role": "user", "content": "/load qwen3"},
        {"role": "assistant", "content": "Loaded 'qwen3'"},
        {"role": "user", "content": "hi"},
    ]
    path = "/api/chat" if dialect == "ollama" else "/v1/chat/completions"
    response = await client.post(
        path, json={"model": "llama3.2", "messages": history, "stream": False}
    )
    assert answer_model(response, dialect, stream=False) == "qwen3"


async def test_the_loader_alone_in_front_of_any_ollama() -> None:
    fake = FakeOllama()
    app = standalone(ModelLoader(fake, aliases={"a": "llama3.2"}, default_model="qwen3"))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://l") as c:
        aliased = await c.post("/api/chat", json={"model": "a", "messages": [], "stream": False})
        default = await c.post("/api/generate", json={"prompt": "hi", "stream": False})
    assert aliased.json()["model"] == "a" and aliased.json()["done_reason"] == "load"
    assert default.json()["model"] == "qwen3"
    assert [r.json["model"] for r in fake.requests] == ["llama3.2", "qwen3"]


@pytest.mark.parametrize(
    ("pattern", "name", "expected"),
    [
        ("llama3*", "llama3.2", True),
        ("llama3*", "llama3.2:3b", True),
        ("llama3*", "Registry.Ollama.AI/library/llama3.2:latest", True),
        ("llama3*", "llama3.evil.example/library/qwen3", False),
        ("llama3*", "llama3/evil", False),
        ("qwen*:8b", "qwen3:8b", True),
        ("qwen*:8b", "qwen3:4b", False),
        ("*", "someone/model", False),
        ("*/*", "someone/model", True),
        ("*/*", "evil.example/library/model", False),
        ("hf.co/*/*", "hf.co/org/model:q4", True),
        ("*/*/*", "evil.example/x/y", True),
        ("llama3.2", "llama3.2:latest", True),
    ],
)
def test_name_patterns_match_segment_by_segment(pattern: str, name: str, expected: bool) -> None:
    assert matches(pattern, name) is expected


@given(
    host=st.from_regex(r"[a-z0-9]{1,8}\.[a-z]{2,5}", fullmatch=True),
    namespace=st.from_regex(r"[a-z0-9]{1,8}", fullmatch=True),
    model=st.from_regex(r"[a-z0-9.]{1,8}", fullmatch=True),
    pattern=st.from_regex(r"[a-z0-9.*]{1,8}(:[a-z0-9*]{1,4})?", fullmatch=True),
)
def test_a_pattern_without_a_host_never_matches_another_registry(
    host: str, namespace: str, model: str, pattern: str
) -> None:
    assert not matches(pattern, f"{host}/{namespace}/{model}")
    assert not matches(f"*/{pattern}", f"{host}/{namespace}/{model}")


async def test_auto_pull_never_pulls_from_a_host_the_pattern_does_not_name() -> None:
    fake = FakeOllama()
    proxy = SmartProxy(Settings(auto_pull=["llama3*"]), transport=upstream(fake))
    async with (
        proxy,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=proxy), base_url="http://l") as client,
    ):
        response = await client.post(
            "/api/chat", json={"model": "llama3.evil.example/library/qwen3", "messages": []}
        )
    assert response.status_code == 404
    assert fake.calls("/api/pull") == []


async def test_pulls_are_bounded_across_names() -> None:
    """1,100 cheap requests for different names once started 1,088 pulls: now two run, a few
    wait, and the rest are told to come back."""
    fake = FakeOllama(pull_delay=0.3)
    settings = Settings(auto_pull="on", max_pulls=2, max_waiting_pulls=3)
    proxy = SmartProxy(settings, transport=upstream(fake))
    statuses: list[int] = []
    async with (
        proxy,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=proxy), base_url="http://l", timeout=30
        ) as client,
    ):

        async def ask(index: int) -> None:
            body = {"model": f"name{index}", "prompt": "hi", "stream": False}
            statuses.append((await client.post("/api/generate", json=body)).status_code)

        async with anyio.create_task_group() as group:
            for index in range(12):
                group.start_soon(ask, index)
        tags = await client.get("/api/tags")
    assert fake.max_active_pulls == 2  # never more than max_pulls against Ollama
    assert sorted(statuses) == [200] * 5 + [503] * 7
    assert tags.status_code == 200  # the pool was never taken by pulls


async def test_a_pull_nobody_waits_for_is_stopped_after_the_grace() -> None:
    fake = FakeOllama(pull_delay=4)  # had it gone on, the model is in after 4 s
    settings = Settings(auto_pull="on", pull_grace=0.2)
    proxy = SmartProxy(settings, transport=upstream(fake))
    client = httpx.AsyncClient(
        transport=StreamingASGITransport(proxy), base_url="http://l", timeout=30
    )
    async with proxy:
        with anyio.move_on_after(0.3):  # the client gives up while the model is pulled
            await client.post("/api/generate", json={"model": "big", "prompt": "x"})
        models = proxy.loader.models
        with anyio.fail_after(10):
            while models.pulls or fake.active_pulls:
                await anyio.sleep(0.01)
    assert "big:latest" not in fake.models  # stopped before Ollama installed it
