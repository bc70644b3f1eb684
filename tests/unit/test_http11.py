"""The lean HTTP/1.1 transport's response parser under arbitrary packet boundaries."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ollama_smart_proxy._http11 import _Connection, _Pool


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def connection(loop: asyncio.AbstractEventLoop) -> _Connection:
    return _Connection(_Pool("127.0.0.1", 1, 10, 30.0, loop))


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
)
def test_chunked_body_under_any_split(
    loop: asyncio.AbstractEventLoop,
    pieces: list[bytes],
    cuts: list[int],
    extension: bool,
    trailer: bool,
) -> None:
    conn = connection(loop)
    body = feed(conn, HEAD + chunked(pieces, extension, trailer), cuts)
    assert body == b"".join(pieces)
    assert conn.done
    assert conn.error is None
    assert conn.head is not None
    assert conn.head[0] == 200
    assert (b"Content-Type", b"application/x-ndjson") in conn.head[1]


@given(payload=st.binary(max_size=300), cuts=st.lists(st.integers(0, 1000), max_size=20))
def test_content_length_body_under_any_split(
    loop: asyncio.AbstractEventLoop, payload: bytes, cuts: list[int]
) -> None:
    conn = connection(loop)
    head = b"HTTP/1.1 404 Not Found\r\nContent-Length: %d\r\n\r\n" % len(payload)
    assert feed(conn, head + payload, cuts) == payload
    assert conn.done
    assert conn.head is not None
    assert conn.head[0] == 404


def test_no_body_for_head_and_204(loop: asyncio.AbstractEventLoop) -> None:
    conn = connection(loop)
    conn.expect_body = False
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 17\r\n\r\n")
    assert conn.done
    conn = connection(loop)
    conn.data_received(b"HTTP/1.1 204 No Content\r\n\r\n")
    assert conn.done


def test_malformed_responses_fail_cleanly(loop: asyncio.AbstractEventLoop) -> None:
    conn = connection(loop)
    conn.data_received(b"garbage\r\n\r\n")
    assert conn.error is not None
    conn = connection(loop)
    conn.data_received(HEAD + b"zz\r\nhello\r\n")
    assert "chunk size" in str(conn.error)
