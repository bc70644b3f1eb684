"""The proxy's /v1 answers against Ollama 0.24's own, recorded (tests/data): same content
types, statuses and shapes; the deliberate differences are named (docs/openai.md)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from ollama_smart_proxy import SmartProxy
from ollama_smart_proxy.testing import FakeModel, FakeOllama
from tests.conftest import upstream
from tests.unit.test_fake import read_transcript

pytestmark = pytest.mark.anyio

ASK = {
    "model": "gemma3-270m",
    "messages": [{"role": "user", "content": "Say hello in five words."}],
}
CASES: list[tuple[str, str, str, Any]] = [
    ("v1_chat_completions_nostream", "POST", "/v1/chat/completions", {**ASK, "max_tokens": 16}),
    ("v1_chat_completions_stream", "POST", "/v1/chat/completions", {**ASK, "stream": True}),
    (
        "v1_chat_completions_stream_usage",
        "POST",
        "/v1/chat/completions",
        {**ASK, "stream": True, "stream_options": {"include_usage": True}},
    ),
    ("v1_models", "GET", "/v1/models", None),
    ("v1_models_one", "GET", "/v1/models/gemma3-270m", None),
    ("v1_embeddings", "POST", "/v1/embeddings", {"model": "all-minilm", "input": ["a", "b"]}),
    (
        "v1_chat_completions_missing_model",
        "POST",
        "/v1/chat/completions",
        {**ASK, "model": "does-not-exist"},
    ),
]


def keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: keys(item) for key, item in value.items()}
    if isinstance(value, list):
        return [keys(value[0])] if value else []
    return None


def frames(body: bytes) -> list[Any]:
    out = []
    for frame in body.split(b"\n\n"):
        if frame.startswith(b"data: ") and frame != b"data: [DONE]":
            out.append(json.loads(frame[6:]))
    return out


@pytest.mark.parametrize(("name", "method", "path", "body"), CASES, ids=[c[0] for c in CASES])
async def test_v1_answers_match_ollamas_own(name: str, method: str, path: str, body: Any) -> None:
    fake = FakeOllama(
        [
            FakeModel("gemma3-270m", capabilities=("completion",), family="gemma3"),
            FakeModel("all-minilm", capabilities=("embedding",), family="bert"),
        ],
        reply="Hello there in five words now",
    )
    proxy = SmartProxy(transport=upstream(fake))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=proxy), base_url="http://p"
    ) as c:
        response = await c.request(method, path, json=body)
    status, headers, expected = read_transcript(name)
    assert response.status_code == status
    assert response.headers["content-type"] == headers["content-type"]
    if "_stream" in name:
        ours, theirs = frames(response.content), frames(expected)
        assert keys(ours[0]) == keys(theirs[0])
        if "usage" in name:
            assert keys(ours[-1]) == keys(theirs[-1])
        assert ours[0]["choices"][0]["delta"]["role"] == "assistant"
        # Deliberate: role only in the first delta (Ollama 0.24 repeats it; newer Ollama
        # does not), and a separate finish chunk with an empty delta, as newer Ollama.
        return
    ours, theirs = response.json(), json.loads(expected)
    if name == "v1_chat_completions_missing_model":
        # Deliberate: `code` says model_not_found (Ollama leaves it null).
        assert {**ours["error"], "code": None} == theirs["error"]
        return
    if name == "v1_chat_completions_nostream":
        assert keys(ours) == keys(theirs)
        return
    if isinstance(ours.get("data"), list) and ours["data"]:
        assert keys(ours["data"][0]) == keys(theirs["data"][0])
    assert set(ours) == set(theirs)
