"""Response encoding: OLLAMA_API.md C.6 / C.7 ported, and random streams through the SDK."""

from __future__ import annotations

import base64
import json
import struct
from typing import Any

import httpx2
import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ollama_smart_proxy._pipeline import error_message
from ollama_smart_proxy.errors import UpstreamStatusError, render_error
from ollama_smart_proxy.openai.render import (
    ChatCompletionEncoder,
    CompletionEncoder,
    EmbeddingEncoder,
    models_list,
    unix_time,
)


def frames(chunks: list[dict[str, Any]], include_usage: bool = False) -> list[Any]:
    encoder = ChatCompletionEncoder("test-model", stream=True, include_usage=include_usage)
    encoder.begin("application/x-ndjson")
    data = b"".join(encoder.encode(c) for c in chunks) + encoder.end()
    out: list[Any] = []
    for frame in data.decode().split("\n\n"):
        if frame:
            assert frame.startswith("data: ")
            payload = frame[len("data: ") :]
            out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


def delta(frame: Any) -> dict[str, Any]:
    return frame["choices"][0]["delta"]  # type: ignore[no-any-return]


def test_c40_mixed_thinking_and_content_split() -> None:
    out = frames(
        [
            {
                "model": "m",
                "message": {"thinking": "reasoning", "content": "final answer"},
                "done": True,
                "done_reason": "stop",
                "prompt_eval_count": 3,
                "eval_count": 2,
            }
        ],
        include_usage=True,
    )
    assert len(out) == 5
    assert delta(out[0]) == {"role": "assistant", "reasoning": "reasoning"}
    assert delta(out[1]) == {"content": "final answer"}
    assert out[1]["choices"][0]["finish_reason"] is None
    assert delta(out[2]) == {}
    assert out[2]["choices"][0]["finish_reason"] == "stop"
    assert out[3]["choices"] == []
    assert out[3]["usage"]["total_tokens"] == 5
    assert out[4] == "[DONE]"


def test_c44_role_only_on_first_chunk_and_c45_one_timestamp() -> None:
    out = frames(
        [
            {"created_at": "2023-11-14T22:13:20Z", "message": {"content": "Hello"}, "done": False},
            {"created_at": "2023-11-14T22:13:30Z", "message": {"content": " world"}, "done": False},
            {
                "created_at": "2023-11-14T22:13:40.123456789Z",
                "message": {"content": "!"},
                "done": True,
                "done_reason": "stop",
            },
        ]
    )
    assert len(out) == 5
    assert delta(out[0])["role"] == "assistant"
    assert all("role" not in delta(f) for f in out[1:4])
    assert {f["created"] for f in out[:4]} == {1700000000}
    assert out[3]["choices"][0]["finish_reason"] == "stop"
    assert len({f["id"] for f in out[:4]}) == 1


def test_c46_length_and_c47_tool_calls_finish_reason() -> None:
    assert (
        frames([{"message": {"content": "partial"}, "done": True, "done_reason": "length"}])[1][
            "choices"
        ][0]["finish_reason"]
        == "length"
    )
    out = frames(
        [
            {
                "message": {
                    "tool_calls": [
                        {
                            "id": "call_abc",
                            "function": {
                                "index": 0,
                                "name": "get_weather",
                                "arguments": {"city": "Paris"},
                            },
                        }
                    ]
                },
                "done": True,
                "done_reason": "stop",
            }
        ]
    )
    assert delta(out[0])["tool_calls"] == [
        {
            "id": "call_abc",
            "index": 0,
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
        }
    ]
    assert out[1]["choices"][0]["finish_reason"] == "tool_calls"
    assert out[2] == "[DONE]"


def test_c48_metrics_trailer_skips_empty_chunk() -> None:
    out = frames(
        [
            {"message": {"content": "Hi"}},
            {"done": True, "done_reason": "stop", "prompt_eval_count": 3, "eval_count": 1},
        ],
        include_usage=True,
    )
    assert len(out) == 4
    assert delta(out[1]) == {}
    assert out[2]["choices"] == []


def test_c50_empty_completion_still_emits_role_chunk() -> None:
    out = frames([{"model": "test-model", "done": True, "done_reason": "stop"}])
    assert delta(out[0]) == {"role": "assistant", "content": ""}
    assert out[1]["choices"][0]["finish_reason"] == "stop"


def test_non_stream_completion_c10_and_usage() -> None:
    encoder = ChatCompletionEncoder("m", stream=False)
    encoder.begin("application/json")
    encoder.encode(
        {
            "created_at": "2023-11-14T22:13:20Z",
            "message": {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {"id": "call_1", "function": {"index": 0, "name": "f", "arguments": {"a": 1}}}
                ],
            },
            "done": True,
            "done_reason": "stop",
            "prompt_eval_count": 10,
            "eval_count": 20,
        }
    )
    body = json.loads(encoder.end())
    assert body["object"] == "chat.completion"
    assert body["id"].startswith("chatcmpl-")
    assert body["created"] == 1700000000
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] == ""
    assert choice["message"]["tool_calls"][0]["function"]["arguments"] == '{"a":1}'
    assert body["usage"] == {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30}


def test_ids_are_unique() -> None:
    assert len({ChatCompletionEncoder("m", False).id for _ in range(1000)}) == 1000


def test_completion_stream() -> None:
    encoder = CompletionEncoder("m", stream=True, include_usage=True)
    data = (
        encoder.encode({"response": "Hi", "done": False})
        + encoder.encode({"response": "", "done": True, "done_reason": "length", "eval_count": 1})
        + encoder.end()
    )
    parts = [
        json.loads(f[6:]) if f[6:] != "[DONE]" else "[DONE]"
        for f in data.decode().split("\n\n")
        if f
    ]
    assert parts[0]["choices"][0]["text"] == "Hi"
    assert parts[1]["choices"][0]["finish_reason"] == "length"
    assert parts[2]["usage"]["completion_tokens"] == 1
    assert parts[3] == "[DONE]"


def test_c102_c108_embeddings_float_and_base64() -> None:
    native = {"model": "test-model", "embeddings": [[0.1, -0.2, 0.3]], "prompt_eval_count": 5}
    encoder = EmbeddingEncoder("test-model", "base64")
    encoder.encode(native)
    body = json.loads(encoder.end())
    assert body["data"][0]["embedding"] == "zczMPc3MTL6amZk+"
    assert body["usage"] == {"prompt_tokens": 5, "total_tokens": 5}
    batch = EmbeddingEncoder("test-model", "base64")
    batch.encode({"embeddings": [[0.1, 0.2], [0.3, 0.4], [0.5, 0.6]]})
    data = json.loads(batch.end())["data"]
    assert [d["embedding"] for d in data] == ["zczMPc3MTD4=", "mpmZPs3MzD4=", "AAAAP5qZGT8="]
    assert [d["index"] for d in data] == [0, 1, 2]
    floats = EmbeddingEncoder("test-model", "float")
    floats.encode(native)
    assert json.loads(floats.end())["data"][0]["embedding"] == [0.1, -0.2, 0.3]
    values = struct.unpack("<3f", base64.b64decode("zczMPc3MTL6amZk+"))
    assert [round(v, 6) for v in values] == [0.1, -0.2, 0.3]


def test_c33_c72_models_list() -> None:
    listed = models_list(
        {
            "models": [
                {
                    "name": "legacy-name:latest",
                    "model": "namespace/exposed-model:latest",
                    "modified_at": "2009-02-13T23:31:30Z",
                },
                {"name": "fallback-name:latest", "modified_at": "2009-02-13T23:31:31Z"},
            ]
        }
    )
    assert listed == {
        "object": "list",
        "data": [
            {
                "id": "namespace/exposed-model:latest",
                "object": "model",
                "created": 1234567890,
                "owned_by": "namespace",
            },
            {
                "id": "fallback-name:latest",
                "object": "model",
                "created": 1234567891,
                "owned_by": "library",
            },
        ],
    }
    assert models_list({"models": None}) == {"object": "list", "data": []}


def openai_error(status: int, body: bytes) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """An upstream error answer, as the error boundary writes it for an OpenAI client."""
    message = error_message(body, status)
    return render_error("openai", UpstreamStatusError(message, status_code=status))


def test_c36_error_shapes() -> None:
    status, _, body = openai_error(400, b'{"error":"model not found"}')
    assert status == 400
    assert json.loads(body) == {
        "error": {
            "message": "model not found",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
    }
    _status, _, body = openai_error(404, b'{"error":"model \'x\' not found"}')
    assert json.loads(body)["error"]["code"] == "model_not_found"
    assert json.loads(body)["error"]["type"] == "not_found_error"
    assert json.loads(openai_error(503, b"busy")[2])["error"]["type"] == "api_error"


def test_unix_time_parses_nanoseconds() -> None:
    assert unix_time("2026-11-27T06:40:39.704198521Z") == unix_time("2026-11-27T06:40:39Z")


tool_call = st.fixed_dictionaries(
    {
        "function": st.fixed_dictionaries(
            {
                "name": st.from_regex(r"[a-z_]{1,8}", fullmatch=True),
                "arguments": st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
            }
        )
    }
)
piece = st.fixed_dictionaries(
    {"content": st.text(max_size=10), "thinking": st.text(max_size=6)},
    # Ollama always names the role; an upstream that does not must lose nothing either.
    optional={
        "role": st.just("assistant"),
        "tool_calls": st.lists(tool_call, min_size=1, max_size=2),
    },
)


@pytest.mark.slow
@settings(max_examples=60, deadline=None)
@given(
    pieces=st.lists(piece, max_size=8), prompt=st.integers(0, 500), completion=st.integers(0, 500)
)
def test_random_native_streams_parse_back_through_the_sdk(
    pieces: list[dict[str, Any]], prompt: int, completion: int
) -> None:
    chunks: list[dict[str, Any]] = [
        {
            "model": "m",
            "created_at": "2026-01-01T00:00:00Z",
            "message": p,
            "done": False,
        }
        for p in pieces
    ]
    chunks.append(
        {
            "model": "m",
            "created_at": "2026-01-01T00:00:01Z",
            "message": {"role": "assistant", "content": ""},
            "done": True,
            "done_reason": "stop",
            "prompt_eval_count": prompt,
            "eval_count": completion,
        }
    )
    encoder = ChatCompletionEncoder("m", stream=True, include_usage=True)
    body = b"".join(encoder.encode(c) for c in chunks) + encoder.end()

    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, content=body, headers={"content-type": "text/event-stream"})

    client = openai.OpenAI(
        api_key="x",
        base_url="http://proxy/v1",
        http_client=httpx2.Client(transport=httpx2.MockTransport(handler)),
    )
    text, thinking, calls, usage, reasons = [], [], [], None, []
    for chunk in client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "x"}], stream=True
    ):
        if chunk.usage:
            usage = chunk.usage
        for choice in chunk.choices:
            text.append(choice.delta.content or "")
            thinking.append(getattr(choice.delta, "reasoning", None) or "")
            calls.extend(choice.delta.tool_calls or [])
            if choice.finish_reason:
                reasons.append(choice.finish_reason)
    assert "".join(text) == "".join(p["content"] for p in pieces)
    assert "".join(thinking) == "".join(p["thinking"] for p in pieces)
    expected_calls = [c for p in pieces for c in p.get("tool_calls", [])]
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        (c["function"]["name"], c["function"]["arguments"]) for c in expected_calls
    ]
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (prompt, completion)
    assert reasons == ["tool_calls" if expected_calls else "stop"]
