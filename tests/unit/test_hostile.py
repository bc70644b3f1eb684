"""Hostile input: paths, bodies and conversations that once froze, crashed or slipped past.

Each section names the property it holds.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import anyio
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ollama_smart_proxy import Settings, SmartProxy
from ollama_smart_proxy.agents import builtins
from ollama_smart_proxy.routing import resolve_path
from ollama_smart_proxy.testing import FakeOllama
from ollama_smart_proxy.types import Message
from tests.conftest import upstream

pytestmark = pytest.mark.anyio

SLOW = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


async def asgi(
    proxy: SmartProxy, method: str, raw_path: bytes, body: bytes | list[bytes] = b""
) -> Message:
    """Call the proxy with an exact raw path (httpx would normalise it); a list of pieces is
    the body as the server would deliver it, read by ``receive`` one at a time (what is
    left unread is in the result's ``unread``)."""
    sent: list[Message] = []
    pieces = [body] if isinstance(body, bytes) else list(body)

    async def receive() -> Message:
        if pieces:
            piece = pieces.pop(0)
            return {"type": "http.request", "body": piece, "more_body": bool(pieces)}
        await anyio.sleep_forever()
        raise AssertionError

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "path": raw_path.decode("latin-1"),
        "raw_path": raw_path,
        "root_path": "",
        "query_string": b"",
        "headers": [(b"content-type", b"application/json")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 11435),
        "scheme": "http",
    }
    with anyio.fail_after(5):
        await proxy(scope, receive, send)
    body_sent = b"".join(m.get("body", b"") for m in sent[1:])
    return {"status": sent[0]["status"], "body": body_sent, "unread": len(pieces)}


# -- the path that is routed is the path that is forwarded ---------------------

SEGMENTS = st.sampled_from(
    [
        "chat", "tags", "show", "generate", "api", "v1", "x", "..", ".", "", "%2f", "%2F",
        "%3f", "%23", "%00", "%0d%0a", "%2e", "%2e%2e", "%20", "%41", "a%2fb", "blobs",
        "sha256:" + "0" * 64, "%zz", "%ff", "\u00e9".encode().decode("latin-1"),
    ]
)  # fmt: skip


@pytest.mark.slow
@SLOW
@given(
    prefix=st.sampled_from(["/api/", "/v1/", "/", "/api/blobs/"]),
    parts=st.lists(SEGMENTS, max_size=5),
)
async def test_any_path_is_refused_or_reaches_ollama_as_routed(
    prefix: str, parts: list[str]
) -> None:
    fake = FakeOllama()
    proxy = SmartProxy(transport=upstream(fake))
    raw = (prefix + "/".join(parts)).encode("latin-1")
    route = resolve_path(raw)
    result = await asgi(proxy, "GET", raw)
    if route.family == "invalid":
        assert result["status"] == 400
        assert fake.requests == []
    elif fake.requests:
        # What Ollama decodes is exactly the route the proxy decided on.
        assert fake.requests[-1].path == route.path
        assert fake.requests[-1].raw_path == raw
    else:
        assert result["status"] != 500


@pytest.mark.parametrize(
    "raw",
    [
        b"/api/chat%3F",
        b"/api/x/..%2fchat",
        b"/api/..%2f..%2fsecret",
        b"/api/chat%23rest",
        b"/api/chat%0d%0aX:%201",
        b"/api/chat%00",
    ],
)
async def test_encoded_path_tricks_never_reach_ollama(raw: bytes) -> None:
    fake = FakeOllama()
    proxy = SmartProxy(transport=upstream(fake))
    result = await asgi(proxy, "POST", raw, b'{"model":"llama3.2","messages":[]}')
    assert result["status"] == 400
    assert fake.requests == []


# -- junk is a 4xx, never a 500 ------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=12,
)
KNOWN_KEYS = [
    "model", "messages", "prompt", "stream", "options", "format", "tools", "tool_choice",
    "response_format", "input", "stop", "think", "keep_alive", "images", "max_tokens",
    "temperature", "stream_options", "reasoning", "encoding_format", "role", "content",
]  # fmt: skip
bodies = st.dictionaries(st.sampled_from(KNOWN_KEYS), json_values, max_size=6)
ROUTES = [
    "/api/chat",
    "/api/generate",
    "/api/embed",
    "/api/embeddings",
    "/api/show",
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
]


@pytest.mark.slow
@SLOW
@given(route=st.sampled_from(ROUTES), body=bodies | json_values)
async def test_no_body_gives_a_500(route: str, body: Any) -> None:
    proxy = SmartProxy(transport=upstream(FakeOllama()))
    result = await asgi(proxy, "POST", route.encode(), json.dumps(body).encode())
    assert result["status"] != 500, result["body"]
    assert b"internal proxy error" not in result["body"]


@pytest.mark.parametrize(
    ("route", "body"),
    [
        ("/api/chat", b"[" * 5000 + b"]" * 5000),
        ("/v1/chat/completions", b'{"a":' * 3000 + b"1" + b"}" * 3000),
        ("/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "x"}],
                                  "response_format": {"type": "json_schema", "json_schema": "x"}}),
        ("/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "x"}],
                                  "tools": [{"type": "function", "function": {"name": "f"}}],
                                  "tool_choice": {"type": "function", "function": "f"}}),
        ("/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "x"}],
                                  "tools": [1]}),
        ("/v1/chat/completions", {"model": "m", "messages": [
            {"role": "assistant", "tool_calls": [{"id": 7, "function": {"name": "f"}}]}]}),
        ("/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "x"}],
                                  "tools": [{"function": "x"}], "tool_choice": {"function": {}}}),
    ],
)  # fmt: skip
async def test_bodies_that_once_crashed_a_translation_are_400s(route: str, body: Any) -> None:
    proxy = SmartProxy(transport=upstream(FakeOllama()))
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    result = await asgi(proxy, "POST", route.encode(), raw)
    assert result["status"] == 400, result["body"]


# -- commands in linear time ----------------------------------------------------


def conversation(count: int) -> list[dict[str, str]]:
    messages = []
    for index in range(count // 2):
        messages.append({"role": "user", "content": f"/set system s{index}\np"})
        messages.append({"role": "assistant", "content": "a"})
    return messages


async def test_replayed_commands_are_linear(monkeypatch: pytest.MonkeyPatch) -> None:
    """8,000 messages that each replay ``/set system`` (38 s before the fix): the system
    prompt is set once, the message list is rebuilt once, and a concurrent probe answers."""
    calls = 0
    real = builtins.set_system

    def counting(request: Any, text: str) -> None:
        nonlocal calls
        calls += 1
        real(request, text)

    monkeypatch.setattr(builtins, "set_system", counting)
    fake = FakeOllama()
    proxy = SmartProxy(transport=upstream(fake))
    body = {"model": "llama3.2", "stream": False, "messages": conversation(8000)}
    body["messages"].append({"role": "user", "content": "last"})
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=proxy), base_url="http://p")
    probe_latency: list[float] = []

    async def probe() -> None:
        for _ in range(5):
            started = time.perf_counter()
            assert (await client.get("/health/live")).status_code == 200
            probe_latency.append(time.perf_counter() - started)
            await anyio.sleep(0.01)

    async with anyio.create_task_group() as group:
        group.start_soon(probe)
        started = time.perf_counter()
        response = await client.post("/api/chat", json=body)
        elapsed = time.perf_counter() - started
    assert response.status_code == 200
    assert calls == 1  # the last /set system of the history, applied once
    sent = fake.calls("/api/chat")[-1].json
    systems = [m for m in sent["messages"] if m["role"] == "system"]
    assert systems == [{"role": "system", "content": "s3999"}]
    assert sent["messages"][-2:] == [systems[0], {"role": "user", "content": "last"}]
    assert sum(1 for m in sent["messages"] if m["role"] == "user") == 4001
    assert elapsed < 10  # seconds; 38 s and climbing quadratically before the fix
    assert max(probe_latency) < 10


async def test_max_messages_is_a_413_naming_the_setting() -> None:
    fake = FakeOllama()
    proxy = SmartProxy(Settings(max_messages=10), transport=upstream(fake))
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=proxy), base_url="http://p")
    messages = [{"role": "user", "content": "x"}] * 11
    for path, dialect in (("/api/chat", "ollama"), ("/v1/chat/completions", "openai")):
        response = await client.post(path, json={"model": "llama3.2", "messages": messages})
        assert response.status_code == 413
        error = response.json()["error"]
        message = error if dialect == "ollama" else error["message"]
        assert "OSP_MAX_MESSAGES" in message
    assert fake.requests == []


async def test_clear_many_times_is_linear() -> None:
    fake = FakeOllama()
    proxy = SmartProxy(transport=upstream(fake))
    messages = []
    for index in range(2400):  # 9,601 messages, under the default max_messages
        messages += [
            {"role": "user", "content": f"q{index}"},
            {"role": "assistant", "content": "a"},
            {"role": "user", "content": "/clear"},
            {"role": "assistant", "content": "Cleared session context."},
        ]
    messages.append({"role": "user", "content": "fresh"})
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=proxy), base_url="http://p")
    started = time.perf_counter()
    response = await client.post(
        "/api/chat", json={"model": "llama3.2", "messages": messages, "stream": False}
    )
    assert response.status_code == 200
    assert time.perf_counter() - started < 10
    assert fake.calls("/api/chat")[-1].json["messages"] == [{"role": "user", "content": "fresh"}]


# -- what came from a client cannot forge a log line ---------------------------


async def test_log_lines_escape_the_clients_path(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="ollama_smart_proxy.access")
    proxy = SmartProxy(transport=upstream(FakeOllama()))
    result = await asgi(proxy, "GET", b"/api/tags\r\nFAKE 200 forged")
    assert result["status"] == 400
    lines = [r.getMessage() for r in caplog.records if r.name == "ollama_smart_proxy.access"]
    assert len(lines) == 1
    assert "\n" not in lines[0] and "\r" not in lines[0]
    assert "\\x0d\\x0aFAKE" in lines[0]


async def test_max_json_objects_refuses_a_flood_before_parsing() -> None:
    fake = FakeOllama()
    proxy = SmartProxy(Settings(max_json_objects=1000), transport=upstream(fake))
    flood = b'{"model":"m","messages":[' + b'{"role":"user","content":"x"},' * 2000 + b"{}]}"
    result = await asgi(proxy, "POST", b"/api/chat", flood)
    assert result["status"] == 413
    assert b"OSP_MAX_JSON_OBJECTS" in result["body"]
    assert fake.requests == []


@pytest.mark.parametrize(
    "path", [b"/api/chat", b"/v1/chat/completions", b"/v1/responses", b"/v1/messages"]
)
async def test_a_flood_is_refused_while_it_arrives_not_after(path: bytes) -> None:
    fake = FakeOllama()
    proxy = SmartProxy(Settings(max_json_objects=1000), transport=upstream(fake))
    piece = b'{"role":"user","content":"x"},' * 100  # 100 objects a read
    pieces = [b'{"model":"m","messages":[', *[piece] * 50, b"{}]}"]
    result = await asgi(proxy, "POST", path, pieces)
    assert result["status"] == 413
    assert b"OSP_MAX_JSON_OBJECTS" in result["body"]
    assert result["unread"] > 35  # refused at the 11th read of 52, without reading on
    assert fake.requests == []
