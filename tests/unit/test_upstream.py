"""The terminal layer, in-process, with FakeOllama (or a tiny inner app) upstream."""

from __future__ import annotations

import json

import anyio
import httpx
import pytest

from ollama_smart_proxy import Settings, SmartProxy
from ollama_smart_proxy.testing import FakeOllama, FakeReply, StreamingASGITransport
from ollama_smart_proxy.types import Message, Receive, Scope, Send
from tests.conftest import upstream

pytestmark = pytest.mark.anyio

CHAT = {"model": "llama3.2", "messages": [{"role": "user", "content": "hello big world"}]}


def lines(response: httpx.Response) -> list[dict[str, object]]:
    return [json.loads(line) for line in response.content.split(b"\n") if line]


async def test_chat_streams_ndjson_untouched(client: httpx.AsyncClient, fake: FakeOllama) -> None:
    response = await client.post("/api/chat", json=CHAT)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/x-ndjson"
    assert "content-length" not in response.headers
    chunks = lines(response)
    assert "".join(c["message"]["content"] for c in chunks) == "hello big world"  # type: ignore[index]
    assert chunks[-1]["done"] is True and chunks[-1]["done_reason"] == "stop"
    assert response.content.endswith(b"\n")
    assert fake.calls("/api/chat")[0].json == CHAT


async def test_non_streaming_chat(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/chat", json={**CHAT, "stream": False})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json; charset=utf-8"
    assert response.json()["message"] == {"role": "assistant", "content": "hello big world"}


async def test_unknown_fields_reach_ollama(client: httpx.AsyncClient, fake: FakeOllama) -> None:
    body = {**CHAT, "stream": False, "future_field": {"x": [1, 2]}, "options": {"num_ctx": 8192}}
    body["messages"] = [{"role": "user", "content": "hi", "new_message_field": True}]
    await client.post("/api/chat", json=body)
    assert fake.calls("/api/chat")[0].json == body


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        (b"", 400, "missing request body"),
        (b'{"model":', 400, "invalid JSON"),
        (b"[1, 2]", 400, "must be a JSON object"),
        (
            b'{"model": "m", "messages": [{"role": "user", "content": 2}]}',
            400,
            "messages.0.content",
        ),
        (b'{"model": "m", "stream": "yes"}', 400, "stream"),
        (b'{"model": 5}', 400, "model"),
        (b'{"model": "m", "options": [1]}', 400, "options"),
    ],
)
async def test_bad_bodies_get_400_before_upstream(
    client: httpx.AsyncClient, fake: FakeOllama, body: bytes, status: int, fragment: str
) -> None:
    response = await client.post("/api/chat", content=body)
    assert response.status_code == status
    assert fragment in response.json()["error"]
    assert fake.requests == []
    # and the proxy keeps serving
    assert (await client.post("/api/chat", json={**CHAT, "stream": False})).status_code == 200


async def test_generate_bad_type_names_field(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/generate", json={"model": "m", "prompt": ["a"]})
    assert response.status_code == 400
    assert response.json()["error"].startswith("invalid request body: prompt")


async def test_missing_model_passes_ollamas_404(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/chat", json={**CHAT, "model": "does-not-exist"})
    assert response.status_code == 404
    assert response.json() == {"error": "model 'does-not-exist' not found"}


@pytest.mark.parametrize(
    ("method", "path", "json_body", "status"),
    [
        ("GET", "/api/tags", None, 200),
        ("HEAD", "/api/tags", None, 200),
        ("GET", "/api/ps", None, 200),
        ("GET", "/api/version", None, 200),
        ("POST", "/api/show", {"model": "llama3.2"}, 200),
        ("POST", "/api/embed", {"model": "all-minilm", "input": "x"}, 200),
        ("POST", "/api/embeddings", {"model": "all-minilm", "prompt": "x"}, 200),
        ("POST", "/api/tags", {}, 405),
        ("GET", "/api/nope", None, 404),
        ("GET", "/", None, 200),
    ],
)
async def test_every_native_route_is_forwarded(
    client: httpx.AsyncClient,
    fake: FakeOllama,
    method: str,
    path: str,
    json_body: object,
    status: int,
) -> None:
    direct = httpx.AsyncClient(transport=httpx.ASGITransport(app=fake), base_url="http://o")
    expected = await direct.request(method, path, json=json_body)
    response = await client.request(method, path + "?x=1", json=json_body)
    assert response.status_code == status == expected.status_code
    assert response.headers.get("content-type") == expected.headers.get("content-type")
    if path not in ("/api/ps",):
        assert response.content == expected.content
    assert fake.requests[-1].query == "x=1"


async def test_hop_by_hop_and_host_headers_are_not_forwarded(
    client: httpx.AsyncClient, fake: FakeOllama
) -> None:
    await client.get(
        "/api/tags",
        headers={
            "host": "ollama-proxy.internal",
            "connection": "keep-alive, x-secret",
            "keep-alive": "timeout=5",
            "te": "trailers",
            "proxy-authorization": "Basic abc",
            "accept-encoding": "gzip",
            "x-secret": "named in Connection, so hop-by-hop",
            "x-custom": "kept",
        },
    )
    sent = fake.requests[-1].headers
    assert sent["host"] == "127.0.0.1:11434"  # the upstream's own, never the client's
    for name in ("keep-alive", "te", "proxy-authorization", "x-secret"):
        assert name not in sent
    assert sent.get("connection") in (None, "keep-alive")  # httpx's own, not the client's
    assert sent["accept-encoding"] == "identity"
    assert sent["x-custom"] == "kept"


async def test_upstream_unreachable_is_502() -> None:
    settings = Settings(upstream="http://127.0.0.1:9")
    async with SmartProxy(settings) as proxy:
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=proxy), base_url="http://p")
        for path, body in (("/api/chat", CHAT), ("/api/tags", None)):
            response = await client.request("POST" if body else "GET", path, json=body)
            assert response.status_code == 502
            assert "cannot reach Ollama at http://127.0.0.1:9" in response.json()["error"]


async def test_upstream_timeout_is_504(fake: FakeOllama) -> None:
    fake.script(FakeReply(content="late", first_delay=2))
    settings = Settings(upstream_timeout=0.2)
    async with SmartProxy(settings, transport=_TimeoutTransport(fake, 0.2)) as proxy:
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=proxy), base_url="http://p")
        with anyio.fail_after(5):
            response = await client.post("/api/chat", json=CHAT)
    assert response.status_code == 504
    assert "did not answer within 0.2s" in response.json()["error"]


class _TimeoutTransport(StreamingASGITransport):
    """Enforce the read timeout in-process the way a socket transport would."""

    def __init__(self, app: object, timeout: float) -> None:
        super().__init__(app)
        self.timeout = timeout

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            with anyio.fail_after(self.timeout):
                return await super().handle_async_request(request)
        except TimeoutError as exc:
            raise httpx.ReadTimeout("timed out", request=request) from exc


async def test_mid_stream_ollama_error_line_is_passed(
    client: httpx.AsyncClient, fake: FakeOllama
) -> None:
    fake.script(FakeReply(content="a b c d", error="model crashed", error_after=2))
    response = await client.post("/api/chat", json=CHAT)
    chunks = lines(response)
    assert response.status_code == 200
    assert chunks[-1] == {"error": "model crashed"}
    assert all(not c.get("done") for c in chunks)


async def test_upstream_dying_mid_stream_ends_with_error_line(fake: FakeOllama) -> None:
    fake.script(FakeReply(content="a b c d e", drop_after=2))
    async with SmartProxy(transport=upstream(fake)) as proxy:
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=proxy), base_url="http://p")
        response = await client.post("/api/chat", json=CHAT)
    chunks = lines(response)
    assert [c["message"]["content"] for c in chunks[:2]] == ["a", " b"]  # type: ignore[index]
    assert "Ollama closed the stream early" in str(chunks[-1]["error"])


async def test_upstream_error_status_passes_through(
    client: httpx.AsyncClient, fake: FakeOllama
) -> None:
    fake.fail_next(503, "server busy, please try again.  maximum pending requests exceeded")
    response = await client.post("/api/chat", json=CHAT)
    assert response.status_code == 503
    assert response.json() == {
        "error": "server busy, please try again.  maximum pending requests exceeded"
    }


async def test_body_limit_from_content_length(fake: FakeOllama) -> None:
    async with SmartProxy(Settings(max_body_bytes=100), transport=upstream(fake)) as proxy:
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=proxy), base_url="http://p")
        big = {**CHAT, "messages": [{"role": "user", "content": "x" * 200}]}
        for path in ("/api/chat", "/api/show"):
            response = await client.post(path, json=big)
            assert response.status_code == 413
            assert "larger than the limit of 100 bytes" in response.json()["error"]
    assert fake.requests == []


async def test_body_limit_counts_chunked_uploads(fake: FakeOllama) -> None:
    proxy = SmartProxy(Settings(max_body_bytes=100), transport=upstream(fake))
    sent: list[Message] = []
    parts = [b'{"model":"llama3.2","messages":[{"role":"user","content":"', b"x" * 80, b'"}]}']

    async def receive() -> Message:
        body = parts.pop(0) if parts else b""
        return {"type": "http.request", "body": body, "more_body": bool(parts)}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = _scope("POST", "/api/chat", headers=[(b"transfer-encoding", b"chunked")])
    await proxy(scope, receive, send)
    assert sent[0]["status"] == 413
    assert fake.requests == []


def _scope(method: str, path: str, headers: list[tuple[bytes, bytes]] | None = None) -> Scope:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": headers or [],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 11435),
        "scheme": "http",
    }


async def test_streaming_at_asgi_level_first_chunk_before_upstream_finishes() -> None:
    """The upstream sends half a stream and waits: the client must already have it."""
    release = anyio.Event()

    async def slow_ollama(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/x-ndjson")],
            }
        )
        await send({"type": "http.response.body", "body": b'{"a":1}\n{"b"', "more_body": True})
        await release.wait()
        await send({"type": "http.response.body", "body": b":2}\n", "more_body": False})

    proxy = SmartProxy(transport=upstream(slow_ollama))
    received: list[Message] = []
    first = anyio.Event()
    done = anyio.Event()

    async def receive() -> Message:
        if not received:
            received.append({"type": "http.request"})
            return {"type": "http.request", "body": b'{"model":"m"}', "more_body": False}
        await done.wait()
        return {"type": "http.disconnect"}

    bodies: list[bytes] = []

    async def send(message: Message) -> None:
        if message["type"] == "http.response.body":
            bodies.append(message.get("body", b""))
            if bodies[0]:
                first.set()
            if not message.get("more_body", False):
                done.set()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as group:
            group.start_soon(proxy, _scope("POST", "/api/chat"), receive, send)
            await first.wait()
            assert b"".join(bodies) == b'{"a":1}\n{"b"'  # fast path: bytes as they came
            release.set()
    assert b"".join(bodies) == b'{"a":1}\n{"b":2}\n'


async def test_client_disconnect_closes_upstream_in_process(fake: FakeOllama) -> None:
    fake.script(FakeReply(content=" ".join(["tok"] * 200), delay=0.01))
    async with SmartProxy(transport=upstream(fake)) as proxy:
        client = httpx.AsyncClient(transport=StreamingASGITransport(proxy), base_url="http://p")
        with anyio.fail_after(5):
            async with client.stream("POST", "/api/chat", json=CHAT) as response:
                async for _ in response.aiter_bytes():
                    break
            while not fake.disconnects:
                await anyio.sleep(0.01)
    assert fake.completed_streams == 0
    assert fake.disconnects[0].path == "/api/chat"


async def test_unknown_path_is_404_json(client: httpx.AsyncClient) -> None:
    response = await client.get("/nope")
    assert response.status_code == 404
    assert response.json() == {"error": "no route for GET /nope"}


async def test_unknown_v1_route_goes_to_ollama_unchanged(
    client: httpx.AsyncClient, fake: FakeOllama
) -> None:
    # Never hide a route Ollama has: any other /v1/... is Ollama's to answer.
    response = await client.post("/v1/audio/transcriptions?x=1", content=b"raw")
    assert response.status_code == 404
    assert response.text == "404 page not found"  # Ollama's (here the fake's) own answer
    assert fake.requests[-1].path == "/v1/audio/transcriptions"
    assert fake.requests[-1].query == "x=1"
    assert fake.requests[-1].body == b"raw"


async def test_client_gone_before_body_is_quiet(
    fake: FakeOllama, caplog: pytest.LogCaptureFixture
) -> None:
    proxy = SmartProxy(transport=upstream(fake))
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    for path in ("/api/chat", "/api/show", "/v1/chat/completions"):
        await proxy(_scope("POST", path), receive, send)
    assert sent == []
    assert fake.requests == []
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
