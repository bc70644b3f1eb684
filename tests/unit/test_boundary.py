"""ErrorBoundary alone, around tiny inner apps: every failure, every dialect, every phase."""

from __future__ import annotations

import json
import logging

import anyio
import pytest

from ollama_smart_proxy import ErrorBoundary
from ollama_smart_proxy.errors import (
    ClientDisconnected,
    Overloaded,
    RequestError,
    UpstreamError,
    UpstreamStatusError,
)
from ollama_smart_proxy.types import Message, Receive, Scope, Send

pytestmark = pytest.mark.anyio


def scope(path: str, raw_path: bytes | None = None) -> Scope:
    return {
        "type": "http",
        "method": "POST",
        "path": path,
        "raw_path": raw_path if raw_path is not None else path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [],
    }


async def call(app: object, path: str, raw_path: bytes | None = None) -> list[Message]:
    sent: list[Message] = []

    async def receive() -> Message:
        await anyio.sleep_forever()
        raise AssertionError

    async def send(message: Message) -> None:
        sent.append(message)

    await ErrorBoundary(app)(scope(path, raw_path), receive, send)  # type: ignore[arg-type]
    return sent


def raising(exc: BaseException, *, after: list[Message] = ()):  # type: ignore[assignment]
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        for message in after:
            await send(message)
        raise exc

    return app


START = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-type", b"application/x-ndjson")],
}
CHUNK = {"type": "http.response.body", "body": b'{"a":1}\n', "more_body": True}


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/chat", {"error": "bad field"}),
        (
            "/v1/chat/completions",
            {
                "error": {
                    "message": "bad field",
                    "type": "invalid_request_error",
                    "param": "messages",
                    "code": None,
                }
            },
        ),
        (
            "/v1/responses",
            {
                "error": {
                    "message": "bad field",
                    "type": "invalid_request_error",
                    "param": "messages",
                    "code": None,
                }
            },
        ),
        (
            "/v1/messages",
            {"type": "error", "error": {"type": "invalid_request_error", "message": "bad field"}},
        ),
    ],
)
async def test_error_before_start_in_the_routes_dialect(path: str, body: object) -> None:
    sent = await call(raising(RequestError("bad field", param="messages")), path)
    assert sent[0]["status"] == 400
    content_type = (
        b"application/json; charset=utf-8" if path == "/api/chat" else b"application/json"
    )
    assert (b"content-type", content_type) in sent[0]["headers"]
    assert json.loads(sent[1]["body"]) == body


async def test_retry_after_header_of_a_503() -> None:
    sent = await call(raising(Overloaded("queue full", retry_after=7)), "/v1/messages")
    assert sent[0]["status"] == 503
    assert (b"retry-after", b"7") in sent[0]["headers"]
    assert json.loads(sent[1]["body"])["error"]["type"] == "overloaded_error"


async def test_unexpected_exception_is_a_500_without_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sent = await call(raising(KeyError("secret internals")), "/api/chat")
    assert sent[0]["status"] == 500
    body = json.loads(sent[1]["body"])
    assert body["error"].startswith("internal proxy error")
    assert "secret" not in body["error"]
    assert any("unhandled error" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("path", "tail"),
    [
        ("/api/chat", b'{"error":"Ollama closed the stream early"}\n'),
        (
            "/v1/chat/completions",
            b'data: {"error":{"message":"Ollama closed the stream early","type":"api_error",'
            b'"param":null,"code":null}}\n\n',
        ),
        (
            "/v1/messages",
            b'event: error\ndata: {"type":"error","error":{"type":"api_error",'
            b'"message":"Ollama closed the stream early"}}\n\n',
        ),
    ],
)
async def test_error_after_start_ends_the_stream_in_the_dialect(path: str, tail: bytes) -> None:
    exc = UpstreamError("Ollama closed the stream early")
    sent = await call(raising(exc, after=[START, CHUNK]), path)
    assert sent[:2] == [START, CHUNK]
    assert sent[2] == {"type": "http.response.body", "body": tail, "more_body": False}


async def test_responses_stream_error_is_an_error_event() -> None:
    sent = await call(raising(UpstreamError("gone"), after=[START]), "/v1/responses")
    event, data = sent[1]["body"].decode().strip().split("\n")
    assert event == "event: error"
    payload = json.loads(data.removeprefix("data: "))
    assert payload["type"] == "error" and payload["message"] == "gone"


async def test_framed_response_cannot_take_an_error_frame() -> None:
    framed = {**START, "headers": [(b"content-length", b"100")]}
    with pytest.raises(UpstreamError):
        await call(raising(UpstreamError("cut"), after=[framed, CHUNK]), "/api/tags")


async def test_nothing_after_a_finished_response() -> None:
    done = {"type": "http.response.body", "body": b"", "more_body": False}
    sent = await call(raising(UpstreamError("late"), after=[START, done]), "/api/chat")
    assert sent == [START, done]


async def test_client_gone_is_quiet(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    assert await call(raising(ClientDisconnected()), "/api/chat") == []
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_upstream_status_keeps_status_and_says_model_not_found() -> None:
    exc = UpstreamStatusError("model 'x' not found", status_code=404)
    sent = await call(raising(exc), "/v1/chat/completions")
    assert sent[0]["status"] == 404
    error = json.loads(sent[1]["body"])["error"]
    assert (error["type"], error["code"]) == ("not_found_error", "model_not_found")


async def test_5xx_reason_is_in_the_proxys_own_log(caplog: pytest.LogCaptureFixture) -> None:
    await call(raising(UpstreamError("cannot reach Ollama at http://x: refused")), "/api/tags")
    assert any("cannot reach Ollama at http://x" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    "raw",
    [
        b"/api/chat%3F",
        b"/api/x/..%2fchat",
        b"/api/..%2f..%2fsecret",
        b"/api/chat%23frag",
        b"/api/chat%0d%0aX-Injected:%201",
        b"/api/chat%00",
        b"/api//chat",
        b"/api/./chat",
        b"/api/x/../chat",
        b"/api/%ff",
    ],
)
async def test_ambiguous_paths_are_a_400_before_any_layer(raw: bytes) -> None:
    reached = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        reached.append(scope)

    sent = await call(app, "/ignored", raw_path=raw)
    assert reached == []
    assert sent[0]["status"] == 400
    assert "path" in json.loads(sent[1]["body"])["error"]


# -- a client that stopped reading ---------------------------------------------------------


async def test_a_client_that_stops_reading_has_its_response_ended_and_its_place_freed() -> None:
    """``send`` that makes no progress for write_timeout: the request is cancelled, which
    frees its admission place and Ollama's stream, and the next request goes in."""
    from ollama_smart_proxy import Settings, SmartProxy
    from ollama_smart_proxy.testing import FakeOllama, FakeReply, StreamingASGITransport

    fake = FakeOllama()
    fake.script(FakeReply(content=" ".join(["w"] * 2000), delay=0.001))
    settings = Settings(max_concurrent=1, write_timeout=0.3)
    proxy = SmartProxy(settings, transport=StreamingASGITransport(fake))
    admission = proxy.admission
    assert admission is not None
    blocked = anyio.Event()
    sent: list[Message] = []

    async def stuck_send(message: Message) -> None:
        sent.append(message)
        if message["type"] == "http.response.body" and len(sent) > 3:
            blocked.set()
            await anyio.sleep_forever()  # the client's socket buffer is full

    requested = False

    async def receive() -> Message:
        nonlocal requested
        if not requested:
            requested = True
            body = b'{"model":"llama3.2","messages":[{"role":"user","content":"hi"}]}'
            return {"type": "http.request", "body": body, "more_body": False}
        await anyio.sleep_forever()  # the client never leaves, it only stops reading
        raise AssertionError

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/api/chat",
        "raw_path": b"/api/chat",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"localhost")],
        "client": ("127.0.0.1", 1),
    }
    with anyio.fail_after(10):
        await proxy(scope, receive, stuck_send)  # returns: the response was ended
    assert blocked.is_set()
    assert admission.in_flight == 0  # the place is free
    assert not any(m.get("more_body") is False for m in sent if m["type"] == "http.response.body")
    with anyio.fail_after(10):  # and the next client gets it
        while not fake.disconnects:
            await anyio.sleep(0.01)
    assert fake.completed_streams == 0  # Ollama's stream was stopped too
