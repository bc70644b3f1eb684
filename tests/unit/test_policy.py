"""``RoutePolicy``: who may change what the server holds."""

from __future__ import annotations

import pytest

from ollama_smart_proxy.testing import FakeOllama
from tests.helpers import API, CHAT, keyed, make

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
