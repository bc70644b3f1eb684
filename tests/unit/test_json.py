"""The client-body parser: the ``jiter`` package answers every input as pydantic's own copy
of the same parser does (it is used because it reads long strings twice as fast)."""

from __future__ import annotations

import json
from typing import Any

import pydantic_core
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ollama_smart_proxy import _json

pytestmark = pytest.mark.skipif(_json.jiter is None, reason="jiter is in the server extra")

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


def reference(raw: bytes) -> Any:
    return pydantic_core.from_json(raw, allow_inf_nan=False, cache_strings="keys")


def outcome(parse: Any, raw: bytes) -> tuple[str, Any]:
    """The value, or the reason of the error (the column may differ by one: jiter counts
    the bad byte of invalid UTF-8 where the older copy counts the byte after it)."""
    try:
        return "value", parse(raw)
    except ValueError as exc:
        return "error", str(exc).partition(" at line ")[0]


@pytest.mark.slow
@given(values)
def test_valid_json_parses_to_the_same_value(value: Any) -> None:
    raw = json.dumps(value).encode()
    assert _json.parse_body(raw) == reference(raw) == value


@pytest.mark.slow
@given(st.binary(max_size=64) | values.map(lambda v: json.dumps(v).encode()[:-1]))
def test_any_bytes_give_the_same_value_or_the_same_error(raw: bytes) -> None:
    assert outcome(_json.parse_body, raw) == outcome(reference, raw)


@pytest.mark.parametrize(
    "raw",
    [
        b"[" * 250 + b"]" * 250,  # deeper than the parsers' recursion limit
        b'{"a":NaN}',
        b'{"a":"\\ud800"}',
        b'{"a":"\xff"}',
        b"\xef\xbb\xbf{}",
        b"{} x",
        b'{"a":1,"a":2}',
        b"123456789012345678901234567890",
        b'{"images":["' + b"A" * 1_000_000 + b'"]}',
    ],
)
def test_edge_cases_match(raw: bytes) -> None:
    assert outcome(_json.parse_body, raw) == outcome(reference, raw)
