"""``RoutePolicy``: who may change what the server holds."""

from __future__ import annotations

import pytest

from ollama_smart_proxy.testing import FakeOllama
from tests.helpers import ADMIN, API, CHAT, keyed, make

pytestmark = pytest.mark.anyio


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


async def test_a_non_admin_key_may_read_but_not_pull() -> None:
    fake = FakeOllama()
    _, client = keyed(fake)
    headers = {"authorization": f"Bearer {API}"}
    assert (await client.get("/api/tags", headers=headers)).status_code == 200
    pull = await client.post("/api/pull", json={"model": "x"}, headers=headers)
    assert pull.status_code == 403
    assert [r.path for r in fake.requests] == ["/api/tags"]


ACCOUNT_ROUTES = [
    ("POST", "/api/signout"),
    ("DELETE", "/api/user/keys/c3NoLWVkMjU1MTk"),
    ("POST", "/api/experimental/web_search"),
    ("POST", "/api/experimental/web_fetch"),
    ("POST", "/api/me"),
]


@pytest.mark.parametrize(("method", "path"), ACCOUNT_ROUTES)
async def test_routes_that_use_the_servers_account_need_an_admin_key(
    method: str, path: str
) -> None:
    fake = FakeOllama()
    _, client = keyed(fake)
    user = await client.request(
        method, path, json={"query": "x"}, headers={"authorization": f"Bearer {API}"}
    )
    assert user.status_code == 403
    assert "ollama.com account" in user.json()["error"]
    assert "OSP_ADMIN_KEYS" in user.json()["error"]
    admin = await client.request(
        method, path, json={"query": "x"}, headers={"authorization": f"Bearer {ADMIN}"}
    )
    assert admin.status_code != 403  # the fake's own answer
    assert [r.path for r in fake.requests] == [path]


@pytest.mark.parametrize(("method", "path"), ACCOUNT_ROUTES)
async def test_account_routes_are_closed_with_admin_routes_closed(method: str, path: str) -> None:
    fake = FakeOllama()
    _, client = make(fake, admin_routes="closed")
    response = await client.request(method, path, json={"query": "x"})
    assert response.status_code == 403
    assert "OSP_ADMIN_ROUTES" in response.json()["error"]
    assert fake.requests == []


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/api/somethingnew"), ("GET", "/api/chat"), ("PUT", "/api/tags"), ("GET", "/v1/x")],
)
async def test_a_route_the_table_does_not_know_is_admin_only_with_keys(
    method: str, path: str
) -> None:
    fake = FakeOllama()
    _, client = keyed(fake)
    user = await client.request(method, path, headers={"authorization": f"Bearer {API}"})
    assert user.status_code == 403
    assert "not a route this proxy knows" in str(user.json())
    admin = await client.request(method, path, headers={"authorization": f"Bearer {ADMIN}"})
    assert admin.status_code != 403
    assert len(fake.requests) == 1


async def test_without_keys_an_unknown_route_goes_to_ollama() -> None:
    fake = FakeOllama()
    _, client = make(fake, admin_routes="closed")
    await client.post("/api/somethingnew", json={})
    assert [r.path for r in fake.requests] == ["/api/somethingnew"]


@pytest.mark.parametrize(
    "path", ["/v1/images/generations", "/v1/images/edits", "/v1/audio/transcriptions"]
)
async def test_generation_routes_passed_through_are_refused_to_keys_limited_to_models(
    path: str,
) -> None:
    fake = FakeOllama()
    _, client = make(fake, api_keys=[{"key": "sk-l", "name": "l", "models": ["llama3*"]}, API])
    limited = await client.post(path, json={"model": "x"}, headers={"authorization": "Bearer sk-l"})
    assert limited.status_code == 403
    assert "limited to some models" in limited.json()["error"]["message"]
    free = await client.post(path, json={"model": "x"}, headers={"authorization": f"Bearer {API}"})
    assert free.status_code != 403
    assert [r.path for r in fake.requests] == [path]
