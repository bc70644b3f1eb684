"""The llhttp pool alone: parsing under any packet boundary, and what needs a clock or a
cancellation rather than scripted bytes (slots freed, idle watchdog, write timeout)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator

import anyio
import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ollama_smart_proxy.transports import HTTP11Transport
from ollama_smart_proxy.transports._pool import _Connection, _Pool
from tests.scripted import ok, scripted


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def connection(loop: asyncio.AbstractEventLoop) -> _Connection:
    conn = _Connection(_Pool("127.0.0.1", 1, None, 10, 30.0, loop))
    conn.begin("GET")
    return conn


def feed(conn: _Connection, data: bytes, cuts: list[int]) -> bytes:
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    for start, end in itertools.pairwise(points):
        conn.data_received(data[start:end])
    return b"".join(conn.body)


def chunked(pieces: list[bytes], extension: bool, trailer: bool) -> bytes:
    body = b"".join(
        b"%x%s\r\n%s\r\n" % (len(p), b";ext=1" if extension else b"", p) for p in pieces if p
    )
    return body + b"0\r\n" + (b"x-trailer: 1\r\n" if trailer else b"") + b"\r\n"


HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n"
)


@given(
    pieces=st.lists(st.binary(min_size=0, max_size=40), max_size=12),
    cuts=st.lists(st.integers(0, 2000), max_size=30),
    extension=st.booleans(),
    trailer=st.booleans(),
    informational=st.booleans(),
)
def test_chunked_body_under_any_split(
    loop: asyncio.AbstractEventLoop,
    pieces: list[bytes],
    cuts: list[int],
    extension: bool,
    trailer: bool,
    informational: bool,
) -> None:
    conn = connection(loop)
    first = b"HTTP/1.1 100 Continue\r\n\r\n" if informational else b""
    body = feed(conn, first + HEAD + chunked(pieces, extension, trailer), cuts)
    assert body == b"".join(pieces)
    assert conn.done and conn.error is None and conn.keep_alive
    assert conn.status == 200
    assert (b"content-type", b"application/x-ndjson") in conn.headers  # names lower-cased
    assert not any(name == b"x-trailer" for name, _ in conn.headers)


@given(payload=st.binary(max_size=300), cuts=st.lists(st.integers(0, 1000), max_size=20))
def test_content_length_body_under_any_split(
    loop: asyncio.AbstractEventLoop, payload: bytes, cuts: list[int]
) -> None:
    conn = connection(loop)
    head = b"HTTP/1.1 404 Not Found\r\nContent-Length: %d\r\n\r\n" % len(payload)
    assert feed(conn, head + payload, cuts) == payload
    assert conn.done and conn.status == 404


def test_no_body_for_head_and_204(loop: asyncio.AbstractEventLoop) -> None:
    conn = _Connection(_Pool("127.0.0.1", 1, None, 10, 30.0, loop))
    conn.begin("HEAD")
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 17\r\n\r\n")
    assert conn.done and conn.keep_alive
    conn = connection(loop)
    conn.data_received(b"HTTP/1.1 204 No Content\r\n\r\n")
    assert conn.done


def test_malformed_answers_fail_cleanly(loop: asyncio.AbstractEventLoop) -> None:
    conn = connection(loop)
    conn.data_received(b"garbage\r\n\r\n")
    assert isinstance(conn.error, httpx.RemoteProtocolError)
    conn = connection(loop)
    conn.data_received(HEAD + b"zz\r\nhello\r\n")
    assert "chunk size" in str(conn.error)


# -- what needs time or cancellation ------------------------------------------------------


@pytest.mark.anyio
async def test_a_client_that_leaves_during_connect_frees_its_slot() -> None:
    pool = _Pool("127.0.0.1", 9, None, 1, 30.0, asyncio.get_running_loop())
    started = asyncio.Event()

    async def slow_connect(*args: object, **kwargs: object) -> object:
        started.set()
        await asyncio.sleep(60)
        raise AssertionError("unreachable")

    pool.loop.create_connection = slow_connect  # type: ignore[method-assign, assignment]
    task = asyncio.ensure_future(pool.acquire(5.0, 5.0))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert pool.open == set()  # before the fix, the slot stayed taken for good


@pytest.mark.anyio
async def test_the_pool_recovers_after_clients_gave_up() -> None:
    """Three clients leave during slow connects to a 3-connection pool; later requests work."""
    async with scripted([ok(b"1")], [ok(b"2")]) as upstream:
        transport = HTTP11Transport(limits=httpx.Limits(max_connections=3))
        pool = transport._pool(httpx.URL(upstream.url))
        real = pool.loop.create_connection
        slow = True

        async def connect(*args: object, **kwargs: object) -> object:
            if slow:
                await asyncio.sleep(60)
            return await real(*args, **kwargs)  # type: ignore[arg-type]

        pool.loop.create_connection = connect  # type: ignore[method-assign, assignment]
        url = upstream.url + "/api/tags"
        leaving = [asyncio.ensure_future(_get(transport, url)) for _ in range(3)]
        await asyncio.sleep(0.05)
        for task in leaving:
            task.cancel()
        await asyncio.gather(*leaving, return_exceptions=True)
        slow = False
        with anyio.fail_after(3):
            assert await _get(transport, url) == b"1"
            assert await _get(transport, url) == b"2"
        await transport.aclose()


async def _get(transport: HTTP11Transport, url: str) -> bytes:
    request = httpx.Request(
        "GET", url, extensions={"timeout": {"connect": 5, "read": 5, "write": 5, "pool": 1}}
    )
    response = await transport.handle_async_request(request)
    try:
        return b"".join([piece async for piece in response.stream])  # type: ignore[union-attr]
    finally:
        await response.aclose()


@pytest.mark.slow
@pytest.mark.anyio
async def test_the_idle_watchdog_sleeps_while_the_client_is_slow() -> None:
    """A slow client holds the stream far longer than the upstream timeout: the watchdog
    does not fire for that time (it used to reschedule itself in a busy loop)."""
    body = b"x" * (3 * 1024 * 1024)
    async with scripted([ok(body)]) as upstream:
        transport = HTTP11Transport()
        request = httpx.Request(
            "GET",
            upstream.url + "/api/tags",
            extensions={"timeout": {"connect": 5, "read": 0.05, "write": 5, "pool": 5}},
        )
        response = await transport.handle_async_request(request)
        connection = response.stream._connection  # type: ignore[union-attr]
        fired = 0
        check = connection._check_idle

        def counting() -> None:
            nonlocal fired
            fired += 1
            check()

        connection._check_idle = counting  # type: ignore[method-assign]
        received = 0
        async for piece in response.stream:  # type: ignore[union-attr]
            received += len(piece)
            await asyncio.sleep(0.3)  # the client is six upstream timeouts slow per read
        await response.aclose()
        await transport.aclose()
    assert received == len(body)
    assert fired <= 8  # a few wake-ups, not the hundreds of thousands of a busy loop


@pytest.mark.anyio
async def test_the_write_timeout_applies() -> None:
    """An upstream that reads nothing of an upload and answers nothing: a write timeout."""
    async with scripted([30.0], read_body=False) as upstream:
        transport = HTTP11Transport()

        async def body() -> object:
            for _ in range(2048):
                yield b"x" * 65536

        request = httpx.Request(
            "POST",
            upstream.url + "/api/blobs/sha256:" + "0" * 64,
            content=body(),
            extensions={"timeout": {"connect": 5, "read": 0.3, "write": 0.3, "pool": 5}},
        )
        with anyio.fail_after(5), pytest.raises(httpx.WriteTimeout):
            await transport.handle_async_request(request)
        await transport.aclose()
