"""Keys, route policy, admission, CORS, metrics and Server-Timing, in-process."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ollama_smart_proxy import Settings, SmartProxy
from ollama_smart_proxy.admission import Admission
from ollama_smart_proxy.testing import FakeOllama, FakeReply, StreamingASGITransport
from tests.conftest import upstream

pytestmark = pytest.mark.anyio

API = "sk-user-0123456789"
ADMIN = "sk-admin-0123456789"
HASHED = "sk-hashed-0123456789"
CHAT = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}], "stream": False}


def make(fake: FakeOllama, **options: Any) -> tuple[SmartProxy, httpx.AsyncClient]:
    proxy = SmartProxy(Settings(**options), transport=upstream(fake))
    client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=proxy), base_url="http://p", timeout=20
    )
    return proxy, client


def queueing(fake: FakeOllama, **options: Any) -> tuple[SmartProxy, httpx.AsyncClient, Admission]:
    """``make`` with ``max_concurrent`` among the options, and the admission layer it built."""
    proxy, client = make(fake, **options)
    assert proxy.admission is not None
    return proxy, client, proxy.admission


def keyed(fake: FakeOllama, **options: Any) -> tuple[SmartProxy, httpx.AsyncClient]:
    digest = hashlib.sha256(HASHED.encode()).hexdigest()
    return make(
        fake,
        api_keys=[API, f"sha256:{digest}"],
        admin_keys=[{"key": ADMIN, "name": "ops"}],
        **options,
    )


# -- the auth matrix --------------------------------------------------------------------------

CREDENTIALS = {
    "none": {},
    "wrong": {"authorization": "Bearer sk-wrong"},
    "api": {"authorization": f"Bearer {API}"},
    "api-x-api-key": {"x-api-key": API},
    "hashed": {"authorization": f"Bearer {HASHED}"},
    "admin": {"authorization": f"Bearer {ADMIN}"},
}
ROUTES = {
    "native chat": ("POST", "/api/chat", CHAT),
    "native tags": ("GET", "/api/tags", None),
    "openai chat": ("POST", "/v1/chat/completions", {**CHAT, "stream": False}),
    "openai models": ("GET", "/v1/models", None),
    "pull": ("POST", "/api/pull", {"model": "llama3.2", "stream": False}),
    "delete": ("DELETE", "/api/delete", {"model": "nothing-here"}),
    "live": ("GET", "/health/live", None),
    "ready": ("GET", "/health/ready", None),
    "health": ("GET", "/health", None),
    "metrics": ("GET", "/metrics", None),
    "plugins": ("GET", "/plugins", None),
}
EXPECTED = {
    # route: status for none, wrong, api, api-x-api-key, hashed, admin
    "native chat": (401, 401, 200, 200, 200, 200),
    "native tags": (401, 401, 200, 200, 200, 200),
    "openai chat": (401, 401, 200, 200, 200, 200),
    "openai models": (401, 401, 200, 200, 200, 200),
    "pull": (401, 401, 403, 403, 403, 200),
    "delete": (401, 401, 403, 403, 403, 404),
    "live": (200, 200, 200, 200, 200, 200),
    "ready": (200, 200, 200, 200, 200, 200),
    "health": (401, 401, 200, 200, 200, 200),
    "metrics": (401, 401, 200, 200, 200, 200),
    "plugins": (401, 401, 200, 200, 200, 200),
}


@pytest.mark.parametrize("route", sorted(ROUTES))
async def test_auth_matrix(route: str) -> None:
    fake = FakeOllama()
    _, client = keyed(fake)
    method, path, body = ROUTES[route]
    for (credential, headers), expected in zip(CREDENTIALS.items(), EXPECTED[route], strict=True):
        before = len(fake.requests)
        sent = {**headers, "cookie": "session=secret"}
        response = await client.request(method, path, json=body, headers=sent)
        assert response.status_code == expected, (credential, response.text)
        if expected in (401, 403):
            assert len(fake.requests) == before  # nothing unauthorised reaches Ollama
            if path.startswith("/v1/"):
                error = response.json()["error"]
                if expected == 401:
                    assert error["type"] == "invalid_request_error"
                    assert error["code"] == "invalid_api_key"
            else:
                assert "error" in response.json()
    for request in fake.requests:  # credentials stay here
        assert "authorization" not in request.headers
        assert "x-api-key" not in request.headers
        assert "cookie" not in request.headers


async def test_401_says_how_to_send_a_key_and_403_names_the_setting() -> None:
    _, client = keyed(FakeOllama())
    missing = await client.get("/api/tags")
    assert missing.headers["www-authenticate"] == "Bearer"
    assert "Authorization: Bearer KEY" in missing.json()["error"]
    wrong = await client.get("/api/tags", headers={"x-api-key": "nope"})
    assert wrong.json() == {"error": "the API key is not valid"}
    pull = await client.post(
        "/api/pull", json={"model": "x"}, headers={"authorization": f"Bearer {API}"}
    )
    assert "needs an admin key (OSP_ADMIN_KEYS)" in pull.json()["error"]


async def test_admin_routes_can_be_closed_without_keys() -> None:
    fake = FakeOllama()
    _, client = make(fake, admin_routes="closed")
    for method, path in (("POST", "/api/pull"), ("DELETE", "/api/delete"), ("POST", "/api/copy")):
        response = await client.request(method, path, json={"model": "llama3.2"})
        assert response.status_code == 403
        assert "OSP_ADMIN_ROUTES" in response.json()["error"]
    assert (await client.head("/api/blobs/sha256:" + "0" * 64)).status_code == 404  # a read
    assert (await client.post("/api/chat", json=CHAT)).status_code == 200
    assert [r.path for r in fake.requests] == ["/api/blobs/sha256:" + "0" * 64, "/api/chat"]


async def test_key_names_and_models(caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    caplog.set_level(logging.INFO, logger="ollama_smart_proxy.access")
    digest = hashlib.sha256(b"sk-team").hexdigest()
    keys_file = tmp_path / "keys.toml"
    keys_file.write_text(
        f'[[keys]]\nsha256 = "{digest}"\nname = "team"\nmodels = ["llama3*", "fast"]\n'
    )
    fake = FakeOllama()
    _, client = make(fake, keys_file=keys_file, aliases={"fast": "qwen3"})
    headers = {"authorization": "Bearer sk-team"}
    assert (await client.post("/api/chat", json=CHAT, headers=headers)).status_code == 200
    assert (
        await client.post("/api/chat", json={**CHAT, "model": "fast"}, headers=headers)
    ).status_code == 200
    refused = await client.post(
        "/v1/chat/completions", json={**CHAT, "model": "qwen3"}, headers=headers
    )
    assert refused.status_code == 403
    assert "the key 'team' may not use the model 'qwen3'" in refused.json()["error"]["message"]
    assert [r.json["model"] for r in fake.calls("/api/chat")] == ["llama3.2", "qwen3"]
    lines = [r for r in caplog.records if r.name == "ollama_smart_proxy.access"]
    assert all(line.key == "team" for line in lines)  # type: ignore[attr-defined]
    assert "sk-team" not in caplog.text
    metrics = (await client.get("/metrics", headers=headers)).text
    assert 'key="team"' in metrics and "sk-team" not in metrics


async def test_a_key_can_be_given_as_its_hash_only() -> None:
    _, client = keyed(FakeOllama())
    ok = await client.get("/api/tags", headers={"authorization": f"Bearer {HASHED}"})
    assert ok.status_code == 200


def test_bad_key_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="sha256"):
        Settings(api_keys=[{"sha256": "abc"}])
    with pytest.raises(ValueError, match="either"):
        Settings(api_keys=[{"name": "x"}])


# -- admission ---------------------------------------------------------------------------------


async def until(predicate: Any) -> None:
    """Wait for the proxy to reach a state (a loaded machine may take any time to get there)."""
    with anyio.fail_after(5):
        while not predicate():
            await anyio.sleep(0.002)


async def post(client: httpx.AsyncClient, body: dict[str, Any]) -> None:
    await client.post("/api/chat", json=body)


async def test_the_bound_holds_and_the_queue_is_fifo() -> None:
    fake = FakeOllama(token_delay=0.02)
    _, client = make(fake, max_concurrent=2, max_queue=20)
    done: list[int] = []

    async def one(index: int) -> None:
        dialect = "/api/chat" if index % 2 else "/v1/chat/completions"
        response = await client.post(
            dialect,
            json={**CHAT, "stream": True, "messages": [{"role": "user", "content": "a b c"}]},
        )
        assert response.status_code == 200
        done.append(index)

    async with anyio.create_task_group() as group:
        for index in range(8):
            group.start_soon(one, index)
            await anyio.sleep(0.005)
    assert fake.max_active == 2  # Ollama never saw more than the bound
    assert len(done) == 8


async def test_a_full_queue_answers_503_with_retry_after_at_once() -> None:
    fake = FakeOllama()
    fake.script(
        FakeReply(content="slow", first_delay=0.5), FakeReply(content="slow", first_delay=0.5)
    )
    proxy, client, admission = queueing(fake, max_concurrent=1, max_queue=1)
    results: list[httpx.Response] = []

    async def one(path: str) -> None:
        results.append(await client.post(path, json=CHAT))

    async with anyio.create_task_group() as group:
        group.start_soon(one, "/api/chat")
        await until(lambda: admission.in_flight == 1)
        group.start_soon(one, "/api/chat")  # queued
        await until(lambda: admission.queued == 1)
        started = anyio.current_time()
        refused = await client.post("/v1/chat/completions", json=CHAT)
        assert anyio.current_time() - started < 0.3  # at once, not after a wait
    assert refused.status_code == 503
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.json()["error"]["type"] == "api_error"
    assert "OSP_MAX_QUEUE" in refused.json()["error"]["message"]
    assert sorted(r.status_code for r in results) == [200, 200]


async def test_a_wait_past_queue_timeout_is_a_503() -> None:
    fake = FakeOllama()
    fake.script(FakeReply(content="slow", first_delay=1.0))
    proxy, client, admission = queueing(fake, max_concurrent=1, queue_timeout=0.2)
    async with anyio.create_task_group() as group:
        group.start_soon(post, client, CHAT)
        await until(lambda: admission.in_flight == 1)
        waited = await client.post("/api/chat", json=CHAT)
    assert waited.status_code == 503
    assert "no place within 0.2s" in waited.json()["error"]
    assert "retry-after" in waited.headers


async def test_a_client_that_leaves_the_queue_never_reaches_ollama() -> None:
    fake = FakeOllama()
    fake.script(FakeReply(content="slow", first_delay=0.6))
    proxy, client, admission = queueing(fake, max_concurrent=1)
    leaving = httpx.AsyncClient(transport=StreamingASGITransport(proxy), base_url="http://p")
    async with anyio.create_task_group() as group:
        group.start_soon(post, client, CHAT)
        await until(lambda: admission.in_flight == 1)
        with anyio.move_on_after(0.1):
            await leaving.post("/api/chat", json={**CHAT, "model": "qwen3"})
        await until(lambda: admission.queued == 0)
    await anyio.sleep(0.7)
    assert [r.json["model"] for r in fake.calls("/api/chat")] == ["llama3.2"]


async def test_other_routes_are_never_held() -> None:
    fake = FakeOllama()
    fake.script(FakeReply(content="slow", first_delay=0.5))
    proxy, client, admission = queueing(fake, max_concurrent=1, max_queue=0)
    async with anyio.create_task_group() as group:
        group.start_soon(post, client, CHAT)
        await until(lambda: admission.in_flight == 1)
        with anyio.fail_after(0.4):
            for method, path, body in (
                ("GET", "/api/tags", None),
                ("GET", "/api/version", None),
                ("GET", "/api/ps", None),
                ("POST", "/api/show", {"model": "llama3.2"}),
                ("GET", "/health/live", None),
                ("GET", "/metrics", None),
            ):
                response = await client.request(method, path, json=body)
                assert response.status_code == 200, path
        health = (await client.get("/health")).json()["admission"]
        assert health["in_flight"] == 1 and health["max_concurrent"] == 1


async def test_without_affinity_the_queue_is_first_in_first_out() -> None:
    fake = FakeOllama(load_delay=0.05, max_loaded=1)
    proxy, client, admission = queueing(fake, max_concurrent=1)
    models = ["llama3.2", "qwen3", "llama3.2", "qwen3", "llama3.2"]

    async with anyio.create_task_group() as group:
        for arrived, model in enumerate(models, 1):
            group.start_soon(post, client, {**CHAT, "model": model})
            await until(lambda n=arrived: admission.admitted + admission.queued == n)
    assert [r.json["model"] for r in fake.calls("/api/chat")] == models
    assert sum(fake.loads.values()) == 5  # Ollama swapped models for every one


async def alternate(client: httpx.AsyncClient, per_model: int) -> None:
    """Six clients, three for each model, each sending ``per_model`` requests in turn."""

    async def one(model: str) -> None:
        for _ in range(per_model):
            await post(client, {**CHAT, "model": model, "stream": True})

    async with anyio.create_task_group() as group:
        for model in ("llama3.2", "qwen3") * 3:
            group.start_soon(one, model)


@pytest.mark.parametrize("max_concurrent", [1, 2])
async def test_affinity_serves_the_loaded_model_first_so_ollama_does_not_thrash(
    max_concurrent: int,
) -> None:
    loads = {}
    for affinity in (0.0, 5.0):
        fake = FakeOllama(load_delay=0.05, max_loaded=1, token_delay=0.002)
        _, client, admission = queueing(
            fake, max_concurrent=max_concurrent, queue_affinity=affinity
        )
        await alternate(client, per_model=4)
        loads[affinity] = sum(fake.loads.values())
        assert len(fake.calls("/api/chat")) == 24
        assert fake.max_active <= max_concurrent
        if affinity:
            assert admission.preferred > 0
    assert loads[0.0] >= 16  # strict FIFO: nearly every request makes Ollama swap models
    assert loads[5.0] <= 4


async def test_affinity_passes_a_request_over_for_at_most_its_seconds() -> None:
    fake = FakeOllama(load_delay=0.05, max_loaded=1, token_delay=0.002)
    _, client = make(fake, max_concurrent=1, queue_affinity=0.3)
    finished: dict[str, float] = {}
    busy = True

    async def keep_llama_busy() -> None:
        while busy:
            await post(client, {**CHAT, "stream": True})

    async with anyio.create_task_group() as group:
        for _ in range(3):
            group.start_soon(keep_llama_busy)
        await anyio.sleep(0.1)
        started = anyio.current_time()
        await post(client, {**CHAT, "model": "qwen3"})
        finished["qwen3"] = anyio.current_time() - started
        busy = False
    # Held back for 0.3 s, then the next place: never starved by the busy model.
    assert 0.25 <= finished["qwen3"] < 2.0
    assert fake.loads["qwen3:latest"] == 1


async def test_affinity_lets_the_running_model_into_a_free_place_at_once() -> None:
    fake = FakeOllama(load_delay=0.05, max_loaded=1)
    fake.script(FakeReply(content="slow", first_delay=0.6))
    proxy, client, admission = queueing(fake, max_concurrent=2, queue_affinity=5.0)
    async with anyio.create_task_group() as group:
        group.start_soon(post, client, CHAT)  # llama3.2 runs
        await until(lambda: admission.in_flight == 1)
        group.start_soon(post, client, {**CHAT, "model": "qwen3"})  # held back
        await until(lambda: admission.queued == 1)
        assert admission.in_flight == 1  # a place is free, and qwen3 does not take it
        with anyio.fail_after(0.5):  # the free place, at once: no wait for llama3.2 to end
            assert (await client.post("/api/chat", json=CHAT)).status_code == 200
    assert [r.json["model"] for r in fake.calls("/api/chat")] == ["llama3.2", "llama3.2", "qwen3"]
    assert admission.describe()["preferred"] == 1  # the second llama3.2 went first
    metrics = (await client.get("/metrics")).text
    assert "osp_queue_preferred_total 1.0" in metrics


async def test_a_client_held_back_for_affinity_that_leaves_never_reaches_ollama() -> None:
    fake = FakeOllama()
    fake.script(FakeReply(content="slow", first_delay=0.5))
    proxy, client, admission = queueing(fake, max_concurrent=2, queue_affinity=5.0)
    leaving = httpx.AsyncClient(transport=StreamingASGITransport(proxy), base_url="http://p")
    async with anyio.create_task_group() as group:
        group.start_soon(post, client, CHAT)  # llama3.2 runs
        await until(lambda: admission.in_flight == 1)
        with anyio.move_on_after(0.2):  # held back behind llama3.2, then gone
            await leaving.post("/api/chat", json={**CHAT, "model": "qwen3"})
        await until(lambda: admission.queued == 0)
    assert [r.json["model"] for r in fake.calls("/api/chat")] == ["llama3.2"]
    assert admission.in_flight == 0


# -- CORS, metrics, Server-Timing ---------------------------------------------------------------


async def test_cors_preflight_allowed_and_refused() -> None:
    _, client = keyed(FakeOllama(), cors_origins=["https://chat.example"])
    preflight = {
        "origin": "https://chat.example",
        "access-control-request-method": "POST",
        "access-control-request-headers": "authorization, content-type",
    }
    allowed = await client.options("/v1/chat/completions", headers=preflight)
    assert allowed.status_code == 200  # no key needed: browsers send none on a preflight
    assert allowed.headers["access-control-allow-origin"] == "https://chat.example"
    refused = await client.options(
        "/v1/chat/completions", headers={**preflight, "origin": "https://evil.example"}
    )
    assert "access-control-allow-origin" not in refused.headers
    real = await client.get(
        "/api/tags",
        headers={"origin": "https://chat.example", "authorization": f"Bearer {API}"},
    )
    assert real.headers["access-control-allow-origin"] == "https://chat.example"
    assert "x-request-id" in real.headers["access-control-expose-headers"]


async def test_metrics_move_and_server_timing_is_there() -> None:
    fake = FakeOllama()
    _, client = make(fake, aliases={"gpt": "llama3.2"})
    before = (await client.get("/metrics")).text
    response = await client.post("/v1/chat/completions", json={**CHAT, "model": "gpt"})
    assert response.headers["server-timing"].startswith("proxy;dur=")
    assert "upstream;dur=" in response.headers["server-timing"]
    await client.post("/api/chat", json={**CHAT, "model": "made-up-name"})
    after = (await client.get("/metrics")).text
    assert before.count("osp_requests_total{") < after.count("osp_requests_total{")
    line = (
        'osp_requests_total{dialect="openai",key="-",model="gpt",route="openai.chat",'
        'status="200"} 1.0'
    )
    assert line in after
    assert 'model="other"' in after  # a 404 for a made-up name is not a label of its own
    assert 'osp_tokens_total{direction="out",model="gpt"}' in after
    assert "osp_time_to_first_token_seconds_bucket" in after


# -- junk headers -----------------------------------------------------------------------------

header_values = st.binary(max_size=40).filter(lambda v: b"\r" not in v and b"\n" not in v)


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    name=st.sampled_from(
        [b"authorization", b"x-api-key", b"content-type", b"content-length", b"x-request-id",
         b"connection", b"via", b"origin", b"transfer-encoding"]
    ),
    value=header_values,
    path=st.sampled_from(["/api/chat", "/v1/chat/completions", "/api/tags", "/health"]),
)  # fmt: skip
async def test_junk_headers_never_give_a_500(name: bytes, value: bytes, path: str) -> None:
    fake = FakeOllama()
    proxy = SmartProxy(Settings(api_keys=[API]), transport=upstream(fake))
    sent: list[dict[str, Any]] = []
    body = json.dumps(CHAT).encode()
    given_body = False

    async def receive() -> dict[str, Any]:
        nonlocal given_body
        if not given_body:
            given_body = True
            return {"type": "http.request", "body": body, "more_body": False}
        await anyio.sleep_forever()
        raise AssertionError

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST" if path != "/health" else "GET",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"authorization", f"Bearer {API}".encode()), (name, value)],
        "client": ("127.0.0.1", 1),
    }
    with anyio.fail_after(5):
        await proxy(scope, receive, send)
    assert sent[0]["status"] != 500, b"".join(m.get("body", b"") for m in sent[1:])
