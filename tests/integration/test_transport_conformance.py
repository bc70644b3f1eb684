"""The upstream transports against a raw scripted upstream: framing, reuse, hostile bytes.

Every transport we ship runs the same table. Each case says what the client of the proxy
sees (status and body, or the end of its stream) and how many connections the upstream
saw, which tells whether one was reused. Each case is named by what it proves.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field

import anyio
import httpx
import pytest

from ollama_smart_proxy import Settings, SmartProxy
from tests.scripted import chunked, ok, scripted

pytestmark = pytest.mark.anyio

#: The transport the proxy ships, and httpcore's (httpx's default), run for comparison: it
#: is why the proxy no longer offers it (see docs/performance.md, "Transports").
TRANSPORTS = ["http11", "httpcore"]


def make_transport(name: str) -> httpx.AsyncBaseTransport | None:
    if name == "httpcore":
        return httpx.AsyncHTTPTransport(limits=httpx.Limits(max_connections=16))
    return None  # the proxy's own


A = b'{"a":1}'
B = b'{"b":2}'
HEAD_OK = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"


@dataclass
class Case:
    name: str
    answers: list[list[bytes | float | str]]
    #: What the client gets for each request: (status, body) (body None: any).
    expect: list[tuple[int, bytes | None]]
    #: Connections the upstream saw (None: any).
    connections: int | None = None
    method: str = "GET"
    path: str = "/api/tags"
    #: Requests the upstream received (None: as many as the client sent).
    received: int | None = None
    #: transport -> different expectations, where a library differs and both are safe.
    per_transport: dict[str, dict[str, object]] = field(default_factory=dict)
    #: transport -> why it fails this case (an unsafe difference: xfail, strict).
    fails_on: dict[str, str] = field(default_factory=dict)
    #: Seconds between the client's requests.
    pause: float = 0.0


CASES = [
    Case("keep-alive: two answers on one connection", [[ok(A)], [ok(B)]], [(200, A), (200, B)], 1),
    Case(
        "chunked, twice, one connection",
        [[chunked(A, B)], [chunked(B)]],
        [(200, A + B), (200, B)],
        1,
    ),
    Case(
        "100 Continue is skipped, not taken as the answer",
        [[b"HTTP/1.1 100 Continue\r\n\r\n" + ok(A)], [ok(B)]],
        [(200, A), (200, B)],
        1,
    ),
    Case(
        "103 Early Hints is skipped",
        [[b"HTTP/1.1 103 Early Hints\r\nlink: </x>\r\n\r\n" + ok(A)], [ok(B)]],
        [(200, A), (200, B)],
        1,
    ),
    Case(
        "101 Switching Protocols is refused",
        [[b"HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\n\r\n"]],
        [(502, None)],
    ),
    Case(
        "bytes after a complete answer poison nothing",
        [[ok(A) + ok(b'{"alice":"secret"}')], [ok(B)]],
        [(200, A), (200, B)],
        2,
        fails_on={"httpcore": "h11 keeps the extra bytes and answers the next request with them"},
    ),
    Case(
        "bytes that arrive while idle close the connection",
        [[ok(A), 0.05, ok(b'{"alice":"secret"}')], [ok(B)]],
        [(200, A), (200, B)],
        2,
        pause=0.3,
    ),
    Case(
        "conflicting Content-Length",
        [[HEAD_OK + b"content-length: 2\r\ncontent-length: 3\r\n\r\nabc"]],
        [(502, None)],
    ),
    Case(
        "signed Content-Length",
        [[HEAD_OK + b"content-length: -1\r\n\r\nab"]],
        [(502, None)],
    ),
    Case(
        "Content-Length 1_0",
        [[HEAD_OK + b"content-length: 1_0\r\n\r\nab"]],
        [(502, None)],
    ),
    Case(
        "non-numeric Content-Length is not re-sent",
        [[HEAD_OK + b"content-length: x\r\n\r\nab"]],
        [(502, None)],
        method="POST",
        path="/api/copy",
        received=1,
    ),
    Case(
        "Content-Length and chunked together",
        [
            [
                HEAD_OK
                + b"content-length: 3\r\ntransfer-encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n"
            ]
        ],
        [(502, None)],
        fails_on={"httpcore": "h11 accepts a smuggling-shaped answer"},
    ),
    Case(
        "status 2_00",
        [[b"HTTP/1.1 2_00 OK\r\ncontent-length: 0\r\n\r\n"]],
        [(502, None)],
    ),
    Case(
        "status 99999",
        [[b"HTTP/1.1 99999 OK\r\ncontent-length: 0\r\n\r\n"]],
        [(502, None)],
    ),
    Case(
        "header line without a colon",
        [[b"HTTP/1.1 200 OK\r\nno colon here\r\ncontent-length: 0\r\n\r\n"]],
        [(502, None)],
    ),
    Case(
        "obs-fold is not a new header",
        [[b"HTTP/1.1 200 OK\r\nx-a: 1\r\n x-injected: 2\r\ncontent-length: 0\r\n\r\n"]],
        [(502, None)],
        per_transport={"httpcore": {"expect": [(200, b"")]}},
    ),
    Case(
        "control bytes in a header",
        [[b"HTTP/1.1 200 OK\r\nx-a: a\x01b\r\ncontent-length: 0\r\n\r\n"]],
        [(502, None)],
        per_transport={"httpcore": {"expect": [(200, b"")]}},
    ),
    Case(
        "bare LF answers fail at once instead of hanging",
        [[b"HTTP/1.1 200 OK\ncontent-length: 2\n\nab", 5.0]],
        [(502, None)],
        per_transport={"httpcore": {"expect": [(200, b"ab")]}},
    ),
    Case(
        "HTTP/1.0 with a length is not pooled",
        [[b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nab"], [ok(B)]],
        [(200, b"ab"), (200, B)],
        2,
    ),
    Case(
        "Transfer-Encoding: xchunked is read until close, never chunked",
        [[HEAD_OK + b"transfer-encoding: xchunked\r\n\r\n5\r\nhello", "close"], [ok(B)]],
        [(200, b"5\r\nhello"), (200, B)],
        2,
        per_transport={"httpcore": {"expect": [(502, None), (200, B)]}},
    ),
    Case(
        "a POST the upstream may have read is never re-sent",
        [["close"]],
        [(502, None)],
        method="POST",
        path="/api/copy",
        received=1,
    ),
    Case(
        "an idempotent GET on a kept-alive connection Ollama closed is retried once",
        [[ok(A), 0.01, "close"], [ok(B)]],
        [(200, A), (200, B)],
        per_transport={"httpcore": {"expect": [(200, A), (502, None)]}},
    ),
    Case(
        "trailers are accepted and dropped",
        [[HEAD_OK + b"transfer-encoding: chunked\r\n\r\n2\r\nab\r\n0\r\nx-t: 1\r\n\r\n"], [ok(B)]],
        [(200, b"ab"), (200, B)],
        1,
    ),
    Case(
        "a head over 64 KiB",
        [[b"HTTP/1.1 200 OK\r\n" + b"x-big: " + b"a" * 70_000 + b"\r\ncontent-length: 0\r\n\r\n"]],
        [(502, None)],
        per_transport={"httpcore": {"expect": [(200, b"")]}},
    ),
    Case(
        "slow drip: an answer a byte at a time",
        [[*(bytes([b]) for b in ok(A)), "eof"]],
        [(200, A)],
    ),
    Case(
        "upstream header names reach the client lower-cased; Connection-named headers are dropped",
        [
            [
                b"HTTP/1.1 200 OK\r\nX-Custom: 1\r\nConnection: x-hop\r\nx-hop: 2\r\n"
                b"content-length: 2\r\n\r\nab"
            ]
        ],
        [(200, b"ab")],
    ),
]


def _expectation(case: Case, transport: str) -> Case:
    override = case.per_transport.get(transport, {})
    return Case(**{**case.__dict__, **override}) if override else case


def proxy_for(url: str, transport: str, **settings: object) -> SmartProxy:
    return SmartProxy(
        Settings(upstream=url, **settings),  # type: ignore[arg-type]
        transport=make_transport(transport),
    )


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_conformance(case: Case, transport: str) -> None:
    if transport in case.fails_on:
        pytest.xfail(case.fails_on[transport])
    case = _expectation(case, transport)
    async with scripted(*case.answers) as upstream:
        async with proxy_for(upstream.url, transport, upstream_timeout=2.0) as proxy:
            client = httpx.AsyncClient(
                transport=httpx.ASGITransport(app=proxy), base_url="http://p"
            )
            for index, (status, body) in enumerate(case.expect):
                if index:
                    await anyio.sleep(case.pause)
                with anyio.fail_after(4):
                    response = await client.request(case.method, case.path)
                assert response.status_code == status, response.text
                if body is not None:
                    assert response.content == body
                if status == 502:
                    assert "Ollama" in response.json()["error"]
                if case.name.startswith("upstream header names"):
                    assert response.headers["x-custom"] == "1"
                    assert "x-hop" not in response.headers
        if case.connections is not None:
            assert upstream.connections == case.connections
        if case.received is not None:
            assert len(upstream.received) == case.received


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_one_clients_answer_never_reaches_another(transport: str) -> None:
    """Alice's answer is followed by bytes that echo her credentials; Bob gets his own."""
    if transport == "httpcore":
        pytest.xfail("h11 answers Bob with the bytes that followed Alice's answer")
    alice = ok(b'{"for":"alice","authorization":"Bearer alice-key"}')
    smuggled = ok(b'{"for":"bob?","authorization":"Bearer alice-key"}')
    async with scripted([alice + smuggled], [ok(b'{"for":"bob"}')]) as upstream:
        async with proxy_for(upstream.url, transport) as proxy:
            client = httpx.AsyncClient(
                transport=httpx.ASGITransport(app=proxy), base_url="http://p"
            )
            first = await client.get("/api/tags", headers={"authorization": "Bearer alice-key"})
            second = await client.get("/api/tags")
    assert first.json()["for"] == "alice"
    assert second.json() == {"for": "bob"}
    assert b"alice-key" not in upstream.received[0].head  # credentials never go upstream


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_negative_chunk_size_ends_the_stream(transport: str) -> None:
    answer = HEAD_OK.replace(b"json", b"x-ndjson") + b"transfer-encoding: chunked\r\n\r\n"
    async with scripted([answer + b"8\r\n" + A + b"\n\r\n-2\r\nab\r\n", 5.0]) as upstream:
        async with proxy_for(upstream.url, transport) as proxy:
            client = httpx.AsyncClient(
                transport=httpx.ASGITransport(app=proxy), base_url="http://p"
            )
            with anyio.fail_after(3):
                response = await client.get("/api/tags")
    lines = response.content.splitlines()
    assert lines[0] == A
    assert "error" in json.loads(lines[-1])


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_an_unterminated_chunk_size_line_is_bounded(transport: str) -> None:
    answer = HEAD_OK + b"transfer-encoding: chunked\r\n\r\n" + b"1" * (4 * 1024 * 1024)
    async with scripted([answer, 5.0]) as upstream:
        async with proxy_for(upstream.url, transport) as proxy:
            client = httpx.AsyncClient(
                transport=httpx.ASGITransport(app=proxy), base_url="http://p"
            )
            with anyio.fail_after(3):
                response = await client.get("/api/tags")
    assert response.status_code == 200  # the head was fine; the body's end says what failed
    assert "error" in json.loads(response.content.splitlines()[-1])


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_an_early_answer_to_an_upload_is_relayed(transport: str) -> None:
    """Ollama answers a blob upload at once (400) and closes without reading the body."""
    if transport == "httpcore":
        pytest.xfail("httpcore writes the whole body before it reads an answer")
    refusal = ok(b'{"error":"digest mismatch"}', status=b"400 Bad Request")
    async with scripted([refusal, "close"], read_body=False) as upstream:
        async with proxy_for(upstream.url, transport) as proxy:
            sent = 0

            async def body() -> object:
                nonlocal sent
                for _ in range(4096):  # 256 MiB if it were all read
                    sent += 1
                    yield b"x" * 65536
                    await asyncio.sleep(0)

            client = httpx.AsyncClient(
                transport=httpx.ASGITransport(app=proxy), base_url="http://p"
            )
            with anyio.fail_after(10):
                response = await client.post("/api/blobs/sha256:" + "0" * 64, content=body())
    assert response.status_code == 400
    assert response.json() == {"error": "digest mismatch"}


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_header_values_cannot_smuggle_lines(transport: str) -> None:
    """The proxy's transport refuses CR/LF/NUL in a header value it would write."""
    if transport != "http11":
        pytest.skip("httpcore validates headers itself (h11)")
    from ollama_smart_proxy.transports import HTTP11Transport

    async with scripted([ok(A)]) as upstream:
        transport_ = HTTP11Transport()
        for bad in (b"a\r\nx-smuggled: 1", b"a\nb", b"a\x00b"):
            request = httpx.Request("GET", upstream.url + "/api/tags", headers=[(b"x-v", bad)])
            with pytest.raises(httpx.LocalProtocolError):
                await transport_.handle_async_request(request)
        await transport_.aclose()
    assert upstream.received == []
