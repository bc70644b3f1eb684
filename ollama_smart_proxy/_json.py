"""The proxy's one JSON serialiser and its two parsers (client bodies, upstream lines)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pydantic_core

try:  # orjson (in the ``server`` extra) is 3-5x faster on the per-chunk path
    import orjson
except ImportError:  # pragma: no cover - exercised where orjson is not installed
    orjson = None  # type: ignore[assignment]

try:  # jiter (in the ``server`` extra) reads long strings (images) twice as fast
    import jiter
except ImportError:  # pragma: no cover - exercised where jiter is not installed
    jiter = None  # type: ignore[assignment]


def _std_dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def dumps(value: Any) -> bytes:
    """Compact JSON, UTF-8, no ASCII escaping: the proxy's one serialiser."""
    if orjson is not None:
        try:
            return orjson.dumps(value)
        except TypeError:  # integers past 64 bits, exotic keys, deep nesting: the stdlib copes
            pass
    try:
        return _std_dumps(value)
    except RecursionError:
        raise ValueError("value is nested too deeply to serialise") from None


#: Parse one upstream NDJSON line (raises ``ValueError`` on bad JSON, as ``json.loads`` does).
loads = orjson.loads if orjson is not None else json.loads


def parse_body(raw: bytes) -> Any:
    """Parse a client's JSON body; ``ValueError`` with the reason for bad JSON.

    jiter (pydantic's parser) is the fastest here on bodies made of many small objects, and
    refuses nesting deeper than about 200 levels, so no body can exhaust the stack of the
    serialiser or of a translation later. The ``jiter`` package is the same parser, newer:
    it reads a 64 MiB base64 image in half the time of the copy inside ``pydantic_core``
    (``benchmarks/worst_case.py``), and answers every input as that copy does
    (``tests/unit/test_json.py``).
    """
    if jiter is not None:
        return jiter.from_json(raw, allow_inf_nan=False, cache_mode="keys")
    return pydantic_core.from_json(raw, allow_inf_nan=False, cache_strings="keys")


def now_rfc3339() -> str:
    """The current time as Ollama writes ``created_at``."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def json_type(value: Any) -> str:
    """The JSON name of a value's type, for messages."""
    return {
        type(None): "null",
        bool: "boolean",
        int: "integer",
        float: "number",
        str: "string",
        list: "array",
        dict: "object",
    }.get(type(value), type(value).__name__)


__all__ = ["dumps", "json_type", "loads", "now_rfc3339", "parse_body"]
