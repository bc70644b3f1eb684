"""OpenAICompat alone, in front of a tiny inner app that speaks native Ollama."""

from __future__ import annotations

import json

import httpx
import pytest

from ollama_smart_proxy import ErrorBoundary, OpenAICompat, Settings, SmartProxy
from ollama_smart_proxy.errors import RequestError
from ollama_smart_proxy.testing import FakeOllama
from ollama_smart_proxy.types import Message, Receive, Scope, Send
from tests.conftest import upstream

pytestmark = pytest.mark.anyio


class TinyOllama:
    """Answers every chat with two NDJSON chunks; records what it was asked."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, dict[str, object]]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        message: Message = await receive()
        body = json.loads(message["body"]) if message.get("body") else {}
        self.seen.append((scope["method"], scope["path"], body))
        if scope["path"] == "/api/tags":
            data = b'{"models":[{"name":"llama3.2:latest","modified_at":"2026-01-01T00:00:00Z"}]}'
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": data})
            return
        lines = [
            {"model": body.get("model"), "message": {"role": "assistant", "content": "hi"}},
            {"model": body.get("model"), "done": True, "done_reason": "stop", "eval_count": 1},
        ]
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/x-ndjson")],
            }
        )
        for line in lines:
            data = json.dumps(line).encode() + b"\n"
            await send({"type": "http.response.body", "body": data, "more_body": True})
        await send({"type": "http.response.body", "body": b""})


async def test_translates_in_and_out_around_any_native_app() -> None:
    inner = TinyOllama()
    app = OpenAICompat(inner, aliases={"gpt-4o-mini": "llama3.2"})
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        response = await c.post(
            "/v1/chat/completions",
            json={
                "model": "llama3.2",
                "messages": [{"role": "user", "content": "hello"}],
                "max_tokens": 5,
                "stream": True,
            },
        )
        models = (await c.get("/v1/models")).json()
    method, path, body = inner.seen[0]
    assert (method, path) == ("POST", "/api/chat")
    assert body == {
        "model": "llama3.2",
        "messages": [{"role": "user", "content": "hello"}],
        "stream": True,
        "options": {"num_predict": 5},
    }
    frames = [f[6:] for f in response.text.split("\n\n") if f]
    assert frames[-1] == "[DONE]"
    assert json.loads(frames[0])["choices"][0]["delta"] == {"role": "assistant", "content": "hi"}
    assert [m["id"] for m in models["data"]] == ["llama3.2:latest", "gpt-4o-mini"]


async def test_alone_it_raises_and_a_boundary_renders() -> None:
    inner = TinyOllama()
    with pytest.raises(RequestError, match="messages"):
        await _post(OpenAICompat(inner), {"model": "m", "messages": []})
    response = await _post(ErrorBoundary(OpenAICompat(inner)), {"model": "m", "messages": []})
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert inner.seen == []


async def _post(app: object, body: object) -> httpx.Response:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),  # type: ignore[arg-type]
        base_url="http://t",
    ) as client:
        return await client.post("/v1/chat/completions", json=body)


async def test_other_paths_pass_through() -> None:
    inner = TinyOllama()
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=OpenAICompat(inner)), base_url="http://t"
    ) as c:
        await c.post("/api/chat", json={"model": "m"})
    assert inner.seen[0][:2] == ("POST", "/api/chat")


@pytest.mark.parametrize("spelling", ["gpt-4o-mini", "GPT-4o-mini", "gpt-4o-mini:latest"])
async def test_an_alias_is_one_model_in_every_spelling_on_v1_models(spelling: str) -> None:
    """``/v1/models/{id}`` resolves names with the loader's own table, as a chat does."""
    fake = FakeOllama()
    proxy = SmartProxy(Settings(aliases={"gpt-4o-mini": "llama3.2"}), transport=upstream(fake))
    async with (
        proxy,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=proxy), base_url="http://p") as client,
    ):
        shown = await client.get(f"/v1/models/{spelling}")
        chat = await client.post(
            "/v1/chat/completions",
            json={"model": spelling, "messages": [{"role": "user", "content": "hi"}]},
        )
    assert shown.status_code == 200
    assert shown.json()["owned_by"] == "ollama-smart-proxy"  # an alias of the proxy's
    assert shown.json()["id"] == spelling
    assert chat.status_code == 200
    assert fake.requests[-1].json["model"] == "llama3.2"
