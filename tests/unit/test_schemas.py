"""Native request bodies: what Ollama decodes is what the proxy checked.

Ollama decodes bodies with Go's ``encoding/json``: an object key matches a struct field
without regard to case (Go's folding: ASCII case, and the long s and the Kelvin sign), and of
several keys that match one field the last wins. ``go_decode`` below is a model of that rule;
the proxy must forward only bodies on which it and Go agree.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ollama_smart_proxy import Settings, SmartProxy
from ollama_smart_proxy.names import matches
from ollama_smart_proxy.schemas import go_fold
from ollama_smart_proxy.testing import FakeOllama, StreamingASGITransport

pytestmark = pytest.mark.anyio

KEY = {"authorization": "Bearer sk-limited"}
SETTINGS = Settings(api_keys=[{"key": "sk-limited", "name": "limited", "models": ["llama3*"]}])
ROUTES = {
    "/api/chat": {"messages": [{"role": "user", "content": "hi"}]},
    "/api/generate": {"prompt": "hi"},
    "/api/embed": {"input": "hi"},
    "/api/embeddings": {"prompt": "hi"},
    "/api/show": {},
}


def go_decode(raw: bytes, field: str) -> Any:
    """The value Go's decoder gives ``field`` of a top-level struct: the last key that folds
    to it, exact spelling or not (``None`` if no key does)."""
    pairs = json.loads(raw, object_pairs_hook=lambda items: items)
    value = None
    for key, item in pairs:
        if go_fold(key) == go_fold(field):
            value = item
    return value


def encode(pairs: list[tuple[str, Any]]) -> bytes:
    """A JSON object with these keys, in this order, duplicates kept."""
    inner = ",".join(f"{json.dumps(k)}:{json.dumps(v)}" for k, v in pairs)
    return ("{" + inner + "}").encode()


def spellings(name: str) -> st.SearchStrategy[str]:
    """``name`` as written, in any case, with ``s`` as the long s or ``k`` as the Kelvin sign."""
    letters = [
        st.sampled_from(sorted({c, c.upper()} | ({"\u017f"} if c == "s" else set())))
        | (st.just("\u212a") if c == "k" else st.nothing())
        for c in name
    ]
    return st.tuples(*letters).map("".join)


def proxied() -> tuple[FakeOllama, httpx.AsyncClient]:
    fake = FakeOllama()
    proxy = SmartProxy(SETTINGS, transport=StreamingASGITransport(fake))
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=proxy), base_url="http://p")
    return fake, client


@pytest.mark.parametrize("path", sorted(ROUTES))
@pytest.mark.parametrize(
    "pairs",
    [
        [("model", "llama3.2"), ("MODEL", "qwen3")],
        [("Model", "qwen3"), ("model", "llama3.2")],
        [("model", "llama3.2"), ("mODEL", "qwen3"), ("stream", False)],
    ],
    ids=["upper-last", "title-first", "mixed"],
)
async def test_a_key_ollama_reads_as_another_field_is_refused(
    path: str, pairs: list[tuple[str, Any]]
) -> None:
    fake, client = proxied()
    body = encode([*ROUTES[path].items(), *pairs])
    response = await client.post(path, content=body, headers=KEY)
    assert response.status_code == 400, response.text
    assert "which Ollama reads as 'model'" in response.json()["error"]
    assert fake.requests == []


@pytest.mark.parametrize("key", ["\u017ftream", "STREAM", "\u212aeep_alive"])
async def test_go_folds_the_long_s_and_the_kelvin_sign_too(key: str) -> None:
    fake, client = proxied()
    body = encode([("model", "llama3.2"), ("prompt", "hi"), (key, False)])
    response = await client.post("/api/generate", content=body, headers=KEY)
    assert response.status_code == 400
    assert fake.requests == []


async def test_a_message_key_that_ollama_reads_as_role_is_refused() -> None:
    fake, client = proxied()
    body = b'{"model":"llama3.2","messages":[{"role":"user","ROLE":"system","content":"x"}]}'
    response = await client.post("/api/chat", content=body, headers=KEY)
    assert response.status_code == 400
    assert "'ROLE'" in response.json()["error"]
    assert fake.requests == []


async def test_exact_duplicates_agree_and_pass() -> None:
    """Both decoders take the last of two keys spelled alike: nothing to refuse."""
    fake, client = proxied()
    body = b'{"model":"qwen3","model":"llama3.2","prompt":"hi","stream":false}'
    response = await client.post("/api/generate", content=body, headers=KEY)
    assert response.status_code == 200
    assert go_decode(fake.requests[0].body, "model") == "llama3.2"


@pytest.mark.slow
@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    path=st.sampled_from(sorted(ROUTES)),
    pairs=st.lists(
        st.tuples(
            st.sampled_from(["model", "stream", "keep_alive", "think", "name"]).flatmap(spellings),
            st.sampled_from(["llama3.2", "qwen3", True, False, "5m", None]),
        ),
        min_size=1,
        max_size=5,
    ),
)
async def test_what_ollama_decodes_is_what_the_proxy_checked(
    path: str, pairs: list[tuple[str, Any]]
) -> None:
    fake, client = proxied()
    body = encode([*ROUTES[path].items(), *pairs])
    response = await client.post(path, content=body, headers=KEY)
    for request in fake.requests:  # whatever reached Ollama, Ollama reads as allowed
        model = go_decode(request.body, "model")
        if path == "/api/show":  # the deprecated spelling, read when model is empty
            model = model or go_decode(request.body, "name")
        # No model at all: Ollama refuses the request itself ("model is required").
        assert model is None or (isinstance(model, str) and matches("llama3*", model))
        stream = go_decode(request.body, "stream")
        if path in ("/api/chat", "/api/generate") and response.status_code == 200:
            streamed = response.headers["content-type"].startswith("application/x-ndjson")
            assert streamed == (stream is not False)  # the proxy answered as Ollama decided
    if response.status_code == 200:
        assert fake.requests
