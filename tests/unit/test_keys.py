"""``ApiKeys``: who may use the proxy, under which name, with which models."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ollama_smart_proxy import Settings, SmartProxy
from ollama_smart_proxy.testing import FakeOllama
from tests.conftest import upstream
from tests.helpers import ADMIN, API, CHAT, HASHED, keyed, make

pytestmark = pytest.mark.anyio


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
    "metrics": (401, 401, 403, 403, 403, 200),  # it names every key: admin only
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


async def test_key_names_and_models(caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    caplog.set_level(logging.INFO, logger="ollama_smart_proxy.access")
    digest = hashlib.sha256(b"sk-team").hexdigest()
    keys_file = tmp_path / "keys.toml"
    keys_file.write_text(
        f'[[keys]]\nsha256 = "{digest}"\nname = "team"\nmodels = ["llama3*", "fast"]\n'
    )
    fake = FakeOllama()
    _, client = make(
        fake, keys_file=keys_file, aliases={"fast": "qwen3"}, admin_keys=[{"key": ADMIN}]
    )
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
    metrics = (await client.get("/metrics", headers={"authorization": f"Bearer {ADMIN}"})).text
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


# -- junk headers -----------------------------------------------------------------------------

header_values = st.binary(max_size=40).filter(lambda v: b"\r" not in v and b"\n" not in v)


@pytest.mark.slow
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
