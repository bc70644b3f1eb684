"""What Ollama may get wrong, and what every dialect's client then sees: a 502 or a final
error event, never an "internal proxy error", never a stream that looks complete."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ollama_smart_proxy import ErrorBoundary
from ollama_smart_proxy.errors import UpstreamError
from ollama_smart_proxy.testing import FakeOllama, FakeReply
from ollama_smart_proxy.types import Message, Receive, Scope, Send
from tests.helpers import ADMIN, API, CHAT, keyed, make

pytestmark = pytest.mark.anyio

ROUTES: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]},
    "/v1/completions": {"model": "llama3.2", "prompt": "hi"},
    "/v1/responses": {"model": "llama3.2", "input": "hi"},
    "/v1/messages": {
        "model": "llama3.2",
        "max_tokens": 10,
        "messages": [{"role": "user", "content": "hi"}],
    },
}
WRONG = [
    b'{"model":"m","message":{"role":"assistant","content":5},"done":false}\n',
    b'{"model":"m","message":"not an object","done":false}\n',
    b'{"model":"m","response":["x"],"done":false}\n',
    b'{"model":"m","message":{"role":"assistant","content":"a","tool_calls":"x"},"done":false}\n',
    b'{"model":"m","message":{"role":"assistant","content":""},"done":true,"eval_count":"7"}\n',
]


@pytest.mark.parametrize("path", sorted(ROUTES))
@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize("line", WRONG)
async def test_wrong_typed_chunks_are_ollamas_fault_in_every_dialect(
    path: str, stream: bool, line: bytes
) -> None:
    fake = FakeOllama()
    fake.script(FakeReply(raw_lines=[line]))
    _, client = make(fake)
    response = await client.post(path, json={**ROUTES[path], "stream": stream})
    assert "internal proxy error" not in response.text
    assert response.status_code in (200, 502), response.text  # lenient, or Ollama's fault


@pytest.mark.parametrize("path", sorted(ROUTES))
async def test_a_stream_that_ends_before_its_final_chunk_ends_with_an_error(path: str) -> None:
    fake = FakeOllama()
    partial = b'{"model":"m","message":{"role":"assistant","content":"half"},"done":false}\n'
    if path == "/v1/completions":
        partial = b'{"model":"m","response":"half","done":false}\n'
    fake.script(FakeReply(raw_lines=[partial]))
    _, client = make(fake)
    response = await client.post(path, json={**ROUTES[path], "stream": True})
    tail = response.text.rstrip().rsplit("\n\n", 1)[-1]
    assert "error" in tail and "before its final chunk" in tail, response.text


async def test_nothing_is_sent_after_the_final_chunk() -> None:
    fake = FakeOllama()
    done = b'{"model":"m","message":{"role":"assistant","content":""},"done":true,"done_reason":"stop"}\n'
    more = b'{"model":"m","message":{"role":"assistant","content":"late"},"done":false}\n'
    fake.script(FakeReply(raw_lines=[done, more]))
    _, client = make(fake)
    response = await client.post("/v1/responses", json={**ROUTES["/v1/responses"], "stream": True})
    events = [
        json.loads(line[5:]) for line in response.text.splitlines() if line.startswith("data:")
    ]
    assert events[-1]["type"] == "response.completed"
    assert "late" not in response.text


async def test_a_native_stream_cut_mid_line_gets_its_error_on_a_line_of_its_own() -> None:
    async def cut(scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"content-type", b"application/x-ndjson")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b'{"model": "m", ', "more_body": True})
        raise UpstreamError("Ollama closed the stream early")

    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/api/chat", "headers": []}
    await ErrorBoundary(cut)(scope, receive, send)
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    lines = body.split(b"\n")
    assert lines[0] == b'{"model": "m", '
    assert json.loads(lines[1]) == {"error": "Ollama closed the stream early"}


async def test_a_name_that_is_not_a_string_crashes_nothing() -> None:
    fake = FakeOllama()
    _, client = make(fake, aliases={"gpt": "llama3.2"}, api_keys=[API])
    response = await client.post(
        "/api/chat", json={"name": 5, "messages": []}, headers={"authorization": f"Bearer {API}"}
    )
    assert response.status_code != 500, response.text
    metrics = await client.get("/metrics", headers={"authorization": f"Bearer {API}"})
    assert metrics.status_code in (200, 403)


async def test_every_spelling_of_a_model_is_one_metrics_label() -> None:
    fake = FakeOllama()
    _, client = make(fake)
    for spelling in ("llama3.2", "Llama3.2", "LLAMA3.2:latest", "library/llama3.2"):
        await client.post("/api/chat", json={**CHAT, "model": spelling})
    metrics = (await client.get("/metrics")).text
    labels = {
        line.split('model="', 1)[1].split('"', 1)[0]
        for line in metrics.splitlines()
        if line.startswith("osp_requests_total{") and 'route="chat"' in line
    }
    assert labels == {"llama3.2"}


async def test_a_key_limited_to_some_models_sees_only_those() -> None:
    fake = FakeOllama()
    _, client = make(fake, api_keys=[{"key": "sk-l", "name": "l", "models": ["llama3*"]}])
    headers = {"authorization": "Bearer sk-l"}
    tags = (await client.get("/api/tags", headers=headers)).json()["models"]
    assert [m["name"] for m in tags] == ["llama3.2:latest"]
    listed = (await client.get("/v1/models", headers=headers)).json()["data"]
    assert [m["id"] for m in listed] == ["llama3.2:latest"]
    assert len(fake.models) > 1  # Ollama has more; the key is shown what it may use


async def test_metrics_need_an_admin_key_when_keys_are_in_use() -> None:
    _, client = keyed(FakeOllama())
    user = await client.get("/metrics", headers={"authorization": f"Bearer {API}"})
    assert user.status_code == 403
    assert "OSP_ADMIN_KEYS" in user.json()["error"]
    admin = await client.get("/metrics", headers={"authorization": f"Bearer {ADMIN}"})
    assert admin.status_code == 200
