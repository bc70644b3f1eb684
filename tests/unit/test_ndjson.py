from __future__ import annotations

import itertools
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ollama_smart_proxy._ndjson import LineSplitter, LineTooLong

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=8,
)
tricky_text = st.text(
    alphabet=st.sampled_from(
        ["a", "é", "\u2028", "\u2029", "\u0085", "\r", "\x1c", " ", "{", "字"]
    ),
    max_size=20,
)


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


@pytest.mark.slow
@given(
    values=st.lists(
        st.one_of(json_values, st.fixed_dictionaries({"content": tricky_text})), min_size=1
    ),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=30),
    ensure_ascii=st.booleans(),
)
def test_any_chunking_gives_back_exactly_the_lines(
    values: list[object], cuts: list[int], ensure_ascii: bool
) -> None:
    lines = [json.dumps(v, ensure_ascii=ensure_ascii).encode() for v in values]
    data = b"".join(line + b"\n" for line in lines)
    splitter = LineSplitter()
    out: list[bytes] = []
    for piece in split_at(data, cuts):
        out.extend(splitter.feed(piece))
    out.extend(splitter.flush())
    assert out == lines
    assert [json.loads(line) for line in out] == values


def test_unterminated_last_line_is_flushed() -> None:
    splitter = LineSplitter()
    assert splitter.feed(b'{"a":1}\n{"b"') == [b'{"a":1}']
    assert splitter.feed(b":2}") == []
    assert splitter.flush() == [b'{"b":2}']
    assert splitter.flush() == []


def test_line_size_is_bounded() -> None:
    splitter = LineSplitter(max_line_bytes=8)
    assert splitter.feed(b"1234\n") == [b"1234"]
    with pytest.raises(LineTooLong, match="longer than 8 bytes"):
        splitter.feed(b"123456789")


def test_blank_lines_are_skipped_and_crlf_trimmed() -> None:
    assert LineSplitter().feed(b'{"a":1}\r\n\n\n{"b":2}\n') == [b'{"a":1}', b'{"b":2}']


def test_max_line_bytes_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        LineSplitter(0)
