"""FakeOllama against the transcripts recorded from a real Ollama (shared/ollama-transcripts)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from ollama_smart_proxy.testing import FakeModel, FakeOllama, FakeReply

pytestmark = pytest.mark.anyio

TRANSCRIPTS = Path(__file__).parents[1] / "data" / "ollama-transcripts"
CASES = [
    # (transcript, method, path, body)
    ("root_get", "GET", "/", None),
    ("api_tags", "GET", "/api/tags", None),
    ("api_show", "POST", "/api/show", {"model": "gemma3-270m"}),
    (
        "api_chat_missing_model_nostream",
        "POST",
        "/api/chat",
        {
            "model": "does-not-exist",
            "messages": [{"role": "user", "content": "hi"}],
            "stream": False,
        },
    ),
    ("api_version", "GET", "/api/version", None),
    ("api_ps_before_load", "GET", "/api/ps", None),
    (
        "api_chat_nostream",
        "POST",
        "/api/chat",
        {
            "model": "gemma3-270m",
            "messages": [{"role": "user", "content": "Say hello"}],
            "stream": False,
        },
    ),
    (
        "api_chat_stream",
        "POST",
        "/api/chat",
        {"model": "gemma3-270m", "messages": [{"role": "user", "content": "Say hello"}]},
    ),
    ("api_generate_stream", "POST", "/api/generate", {"model": "gemma3-270m", "prompt": "Why?"}),
    (
        "api_generate_nostream",
        "POST",
        "/api/generate",
        {"model": "gemma3-270m", "prompt": "Why?", "stream": False},
    ),
    (
        "api_chat_missing_model_stream",
        "POST",
        "/api/chat",
        {"model": "does-not-exist", "messages": [{"role": "user", "content": "hi"}]},
    ),
    (
        "api_generate_missing_model",
        "POST",
        "/api/generate",
        {"model": "does-not-exist", "prompt": "hi", "stream": False},
    ),
    ("api_show_missing_model", "POST", "/api/show", {"model": "does-not-exist"}),
    ("api_chat_bad_json", "POST", "/api/chat", b'{"model":'),
    ("api_chat_no_model", "POST", "/api/chat", {"messages": [{"role": "user", "content": "hi"}]}),
    ("api_embed_chat_model", "POST", "/api/embed", {"model": "gemma3-270m", "input": "hello"}),
    (
        "api_chat_embedding_model",
        "POST",
        "/api/chat",
        {"model": "all-minilm", "messages": [{"role": "user", "content": "hi"}], "stream": False},
    ),
    ("api_tags_wrong_method", "POST", "/api/tags", {}),
    ("api_pull_unreachable_stream", "POST", "/api/pull", {"model": "llama3.2:1b"}),
    (
        "api_pull_unreachable_nostream",
        "POST",
        "/api/pull",
        {"model": "llama3.2:1b", "stream": False},
    ),
    (
        "api_embed",
        "POST",
        "/api/embed",
        {"model": "all-minilm", "input": ["hello world", "goodbye"]},
    ),
    (
        "api_embeddings_legacy",
        "POST",
        "/api/embeddings",
        {"model": "all-minilm", "prompt": "hello world"},
    ),
]


def read_transcript(name: str) -> tuple[int, dict[str, str], bytes]:
    raw = (TRANSCRIPTS / f"{name}.txt").read_bytes()
    head, _, body = raw.partition(b"\r\n\r\n") if b"\r\n\r\n" in raw else raw.partition(b"\n\n")
    status_line, *header_lines = head.decode().splitlines()
    headers = {}
    for line in header_lines:
        key, _, value = line.partition(":")
        headers[key.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body.strip()


def shape(value: object) -> object:
    """Keys and types, not values: what a client's parser depends on."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    return type(value).__name__ if not isinstance(value, bool) else "bool"


def parse(body: bytes, content_type: str) -> object:
    if "json" not in content_type:
        return body.decode()
    if "ndjson" in content_type:
        return [json.loads(line) for line in body.splitlines() if line]
    return json.loads(body)


@pytest.fixture
def gemma_fake() -> FakeOllama:
    return FakeOllama(
        [
            FakeModel("gemma3-270m", capabilities=("completion",), family="gemma3"),
            FakeModel("all-minilm", capabilities=("embedding",), family="bert"),
        ],
        pullable=[],
        embedding_dim=384,
    )


@pytest.mark.parametrize(("name", "method", "path", "body"), CASES, ids=[c[0] for c in CASES])
async def test_fake_matches_real_ollama(
    gemma_fake: FakeOllama, name: str, method: str, path: str, body: object
) -> None:
    status, headers, expected_body = read_transcript(name)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=gemma_fake), base_url="http://o"
    ) as client:
        content = body if isinstance(body, bytes) else None
        response = await client.request(
            method, path, content=content, json=None if content is not None else body
        )
    assert response.status_code == status
    assert response.headers.get("content-type") == headers.get("content-type")
    expected = parse(expected_body, headers.get("content-type", ""))
    actual = parse(response.content, response.headers.get("content-type", ""))
    if status >= 400 or name.startswith(("root", "api_pull")):
        if isinstance(expected, list):  # pull: the status line, then the error line
            assert actual[0] == expected[0]  # type: ignore[index]
            assert actual[1]["error"].startswith("pull model manifest")  # type: ignore[index]
        elif isinstance(expected, dict) and "pull model manifest" in str(expected):
            assert str(actual).startswith("{'error': 'pull model manifest")
        else:
            assert actual == expected
    elif isinstance(expected, list):
        assert shape(actual[0]) == shape(expected[0])  # type: ignore[index]
        assert shape(actual[-1]) == shape(expected[-1])  # type: ignore[index]
    elif name == "api_show":  # model_info's keys are the model's own: compare the rest
        assert isinstance(actual, dict) and isinstance(expected, dict)
        assert {k: type(v).__name__ for k, v in actual.items()} == {
            k: type(v).__name__ for k, v in expected.items()
        }
        assert shape(actual["details"]) == shape(expected["details"])
    else:
        assert shape(actual) == shape(expected)


async def test_done_reason_load_and_unload(fake: FakeOllama) -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=fake), base_url="http://o") as c:
        load = (await c.post("/api/chat", json={"model": "llama3.2"})).json()
        unload = (await c.post("/api/generate", json={"model": "llama3.2", "keep_alive": 0})).json()
    assert load["done_reason"] == "load" and load["message"] == {"role": "assistant", "content": ""}
    assert unload["done_reason"] == "unload" and unload["response"] == ""


async def test_tool_calls_thinking_and_capabilities(fake: FakeOllama) -> None:
    fake.script(
        FakeReply(
            tool_calls=[{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]
        )
    )
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=fake), base_url="http://o") as c:
        tools = await c.post(
            "/api/chat",
            json={
                "model": "llama3.2",
                "messages": [{"role": "user", "content": "w?"}],
                "stream": False,
                "tools": [{"type": "function", "function": {"name": "get_weather"}}],
            },
        )
        think = await c.post(
            "/api/chat",
            json={
                "model": "qwen3",
                "messages": [{"role": "user", "content": "a b"}],
                "stream": False,
            },
        )
        no_think = await c.post(
            "/api/chat",
            json={
                "model": "llama3.2",
                "messages": [{"role": "user", "content": "a"}],
                "think": True,
            },
        )
        no_tools = await c.post(
            "/api/chat",
            json={"model": "all-minilm", "messages": [{"role": "user", "content": "a"}]},
        )
    call = tools.json()["message"]["tool_calls"][0]
    assert call["id"].startswith("call_") and len(call["id"]) == 13
    assert call["function"] == {"name": "get_weather", "arguments": {"city": "Paris"}, "index": 0}
    assert think.json()["message"]["thinking"].startswith("The user wrote 2 words")
    assert think.json()["message"]["content"] == "a b"
    assert no_think.status_code == 400 and no_think.json() == {
        "error": '"llama3.2" does not support thinking'
    }
    assert no_tools.json() == {"error": '"all-minilm" does not support chat'}


async def test_pull_copy_delete_and_records(fake: FakeOllama) -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=fake), base_url="http://o") as c:
        pulled = await c.post("/api/pull", json={"model": "mistral"})
        statuses = [json.loads(line)["status"] for line in pulled.content.splitlines()]
        assert statuses[0] == "pulling manifest" and statuses[-1] == "success"
        assert fake.find("mistral:latest") is not None
        assert (
            await c.post("/api/copy", json={"source": "mistral", "destination": "m2"})
        ).status_code == 200
        assert (await c.request("DELETE", "/api/delete", json={"model": "m2"})).content == b""
        missing = await c.request("DELETE", "/api/delete", json={"model": "m2"})
        assert missing.status_code == 404 and missing.json() == {"error": "model 'm2' not found"}
    assert [r.path for r in fake.requests] == [
        "/api/pull",
        "/api/copy",
        "/api/delete",
        "/api/delete",
    ]
    assert fake.requests[0].json == {"model": "mistral"}
