"""Responses and Anthropic translation, with hypothesis: requests lose no field we claim to
support, and any native stream encodes to events the official SDKs parse into the same
answer as the non-streaming one."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import httpx2
import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ollama_smart_proxy.anthropic import MessagesEncoder, MessagesOptions, messages_request
from ollama_smart_proxy.encoding import Chunk
from ollama_smart_proxy.errors import RequestError
from ollama_smart_proxy.responses import ResponsesEncoder, ResponsesOptions, responses_request

text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12)
names = st.from_regex(r"[a-z][a-z_]{0,10}", fullmatch=True)
schema = st.fixed_dictionaries({"type": st.just("object"), "properties": st.just({})})


# -- requests: no claimed field lost ----------------------------------------------------------


@pytest.mark.slow
@given(
    instructions=st.none() | text,
    turns=st.lists(st.tuples(st.sampled_from(["user", "assistant", "developer"]), text), min_size=1, max_size=5),
    temperature=st.none() | st.floats(0, 2),
    top_p=st.none() | st.floats(0, 1),
    limit=st.none() | st.integers(1, 4096),
    effort=st.none() | st.sampled_from(["low", "medium", "high", "minimal"]),
    tools=st.lists(st.tuples(names, text, schema), max_size=3, unique_by=lambda t: t[0]),
    stream=st.booleans(),
)  # fmt: skip
def test_responses_requests_lose_nothing(
    instructions: str | None,
    turns: list[tuple[str, str]],
    temperature: float | None,
    top_p: float | None,
    limit: int | None,
    effort: str | None,
    tools: list[tuple[str, str, dict[str, Any]]],
    stream: bool,
) -> None:
    body: dict[str, Any] = {
        "model": "m",
        "input": [
            {"role": role, "content": [{"type": "input_text", "text": t}]} for role, t in turns
        ],
        "stream": stream,
        "tools": [
            {"type": "function", "name": n, "description": d, "parameters": p} for n, d, p in tools
        ],
    }
    if instructions is not None:
        body["instructions"] = instructions
    for key, value in (
        ("temperature", temperature),
        ("top_p", top_p),
        ("max_output_tokens", limit),
    ):
        if value is not None:
            body[key] = value
    if effort:
        body["reasoning"] = {"effort": effort}
    request, options = responses_request(body)
    messages = request.messages or []
    expected = ([("system", instructions)] if instructions else []) + [
        ("system" if role == "developer" else role, t) for role, t in turns
    ]
    assert [(m.role, m.content) for m in messages] == expected
    assert request.stream is stream and options.stream is stream
    sent_options = request.options or {}
    assert sent_options.get("temperature") == temperature
    assert sent_options.get("top_p") == top_p
    assert sent_options.get("num_predict") == limit
    assert [t["function"]["name"] for t in request.tools or []] == [n for n, _, _ in tools]
    assert [t["function"]["parameters"] for t in request.tools or []] == [p for _, _, p in tools]
    assert request.think == ({"minimal": "low"}.get(effort, effort) if effort else None)


@pytest.mark.slow
@given(
    system=st.none() | text,
    turns=st.lists(st.tuples(st.sampled_from(["user", "assistant"]), text), min_size=1, max_size=5),
    max_tokens=st.integers(1, 64000),
    temperature=st.none() | st.floats(0, 1),
    top_k=st.none() | st.integers(1, 100),
    stops=st.lists(text, max_size=3),
    tools=st.lists(st.tuples(names, text, schema), max_size=3, unique_by=lambda t: t[0]),
    thinking=st.sampled_from([None, "enabled", "disabled"]),
)  # fmt: skip
def test_anthropic_requests_lose_nothing(
    system: str | None,
    turns: list[tuple[str, str]],
    max_tokens: int,
    temperature: float | None,
    top_k: int | None,
    stops: list[str],
    tools: list[tuple[str, str, dict[str, Any]]],
    thinking: str | None,
) -> None:
    body: dict[str, Any] = {
        "model": "m",
        "max_tokens": max_tokens,
        "messages": [{"role": role, "content": [{"type": "text", "text": t}]} for role, t in turns],
        "tools": [{"name": n, "description": d, "input_schema": p} for n, d, p in tools],
    }
    if system is not None:
        body["system"] = [{"type": "text", "text": system, "cache_control": {"type": "ephemeral"}}]
    if temperature is not None:
        body["temperature"] = temperature
    if top_k is not None:
        body["top_k"] = top_k
    if stops:
        body["stop_sequences"] = stops
    if thinking:
        body["thinking"] = {"type": thinking, "budget_tokens": 1024}
    request, _ = messages_request(body)
    expected = ([("system", system)] if system else []) + list(turns)
    assert [(m.role, m.content) for m in request.messages or []] == expected
    options = request.options or {}
    assert options["num_predict"] == max_tokens
    assert options.get("temperature") == temperature
    assert options.get("top_k") == top_k
    assert options.get("stop") == (stops or None)
    assert [(t["function"]["name"], t["function"]["description"]) for t in request.tools or []] == [
        (n, d) for n, d, _ in tools
    ]
    assert request.think == {None: None, "enabled": True, "disabled": False}[thinking]


@pytest.mark.parametrize(
    "body",
    [
        {"model": "m", "input": "x", "previous_response_id": "resp_1"},
        {"model": "m", "input": "x", "conversation": "conv_1"},
        {"model": "m", "input": [{"type": "item_reference", "id": "msg_1"}]},
        {"model": "m", "input": 7},
        {"model": "m", "input": [{"role": "user", "content": [{"type": "input_image", "image_url": "https://x/y.png"}]}]},
        {"model": "m", "input": "x", "tool_choice": {"type": "function", "name": "nope"}},
        {"model": "m", "input": "x", "reasoning": {"effort": "extreme"}},
    ],
)  # fmt: skip
def test_responses_requests_refused_with_a_reason(body: dict[str, Any]) -> None:
    with pytest.raises(RequestError) as caught:
        responses_request(body)
    assert caught.value.status_code == 400 and caught.value.message


# -- streams: the SDK parses the same answer streamed or not -----------------------------------

pieces = st.lists(text, max_size=6)
calls = st.lists(
    st.tuples(names, st.dictionaries(names, st.integers() | text, max_size=3)), max_size=2
)


def native(
    thinking: list[str], content: list[str], tool_calls: list[tuple[str, dict[str, Any]]]
) -> list[Chunk]:
    chunks: list[Chunk] = [
        {
            "model": "m",
            "message": {"role": "assistant", "content": "", "thinking": t},
            "done": False,
        }
        for t in thinking
    ]
    chunks += [
        {"model": "m", "message": {"role": "assistant", "content": c}, "done": False}
        for c in content
    ]
    if tool_calls:
        message = {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"id": f"call_{i}", "function": {"index": i, "name": n, "arguments": a}}
                for i, (n, a) in enumerate(tool_calls)
            ],
        }
        chunks.append({"model": "m", "message": message, "done": False})
    chunks.append(
        {
            "model": "m",
            "message": {"role": "assistant", "content": ""},
            "done": True,
            "done_reason": "stop",
            "prompt_eval_count": 3,
            "eval_count": len(content),
        }
    )
    return chunks


#: What the mock server answers: [the stream, the whole answer].
ANSWERS: list[bytes] = [b"", b""]


def _answer(request: httpx2.Request) -> httpx2.Response:
    if json.loads(request.content).get("stream"):
        return httpx2.Response(
            200, content=ANSWERS[0], headers={"content-type": "text/event-stream"}
        )
    return httpx2.Response(200, content=ANSWERS[1], headers={"content-type": "application/json"})


# The official SDKs, parsing what the encoders wrote (one client each: making one is slow).
OPENAI = openai.OpenAI(
    base_url="http://p/v1",
    api_key="x",
    http_client=httpx2.Client(transport=httpx2.MockTransport(_answer)),
)
ANTHROPIC = anthropic.Anthropic(
    base_url="http://p",
    api_key="x",
    http_client=httpx2.Client(transport=httpx2.MockTransport(_answer)),
)


def encode(encoder: Any, chunks: list[Chunk]) -> bytes:
    encoder.begin("application/x-ndjson")
    return b"".join(encoder.encode(chunk) for chunk in chunks) + encoder.end()


def responses_both(chunks: list[Chunk]) -> tuple[Any, Any]:
    """What the openai SDK parses from the chunks encoded streaming, and not streaming (the
    encoder folds the same chunks into one answer itself)."""
    ANSWERS[:] = [
        encode(ResponsesEncoder(ResponsesOptions(model="m", stream=True)), chunks),
        encode(ResponsesEncoder(ResponsesOptions(model="m", stream=False)), chunks),
    ]
    with OPENAI.responses.stream(model="m", input="x") as stream:
        final = stream.get_final_response()
    return final, OPENAI.responses.create(model="m", input="x")


def anthropic_both(chunks: list[Chunk]) -> tuple[Any, Any]:
    """The same for the anthropic SDK."""
    ANSWERS[:] = [
        encode(MessagesEncoder(MessagesOptions(model="m", stream=True)), chunks),
        encode(MessagesEncoder(MessagesOptions(model="m", stream=False)), chunks),
    ]
    args: dict[str, Any] = {
        "model": "m",
        "max_tokens": 5,
        "messages": [{"role": "user", "content": "x"}],
    }
    with ANTHROPIC.messages.stream(**args) as stream:
        final = stream.get_final_message()
    return final, ANTHROPIC.messages.create(**args)


def anthropic_answer(message: Any) -> tuple[str, str, list[Any]]:
    texts = "".join(b.text for b in message.content if b.type == "text")
    thoughts = "".join(b.thinking for b in message.content if b.type == "thinking")
    uses = [(b.name, b.input) for b in message.content if b.type == "tool_use"]
    return texts, thoughts, uses


@pytest.mark.slow
@settings(max_examples=40, deadline=None)
@given(thinking=pieces, content=pieces, tool_calls=calls)
def test_responses_stream_and_whole_parse_alike(
    thinking: list[str], content: list[str], tool_calls: list[tuple[str, dict[str, Any]]]
) -> None:
    final, once = responses_both(native(thinking, content, tool_calls))
    assert final.output_text == once.output_text == "".join(content)
    streamed_calls = [
        (i.name, json.loads(i.arguments)) for i in final.output if i.type == "function_call"
    ]
    whole_calls = [
        (i.name, json.loads(i.arguments)) for i in once.output if i.type == "function_call"
    ]
    assert streamed_calls == whole_calls == tool_calls


@pytest.mark.slow
@settings(max_examples=40, deadline=None)
@given(thinking=pieces, content=pieces, tool_calls=calls)
def test_anthropic_stream_and_whole_parse_alike(
    thinking: list[str], content: list[str], tool_calls: list[tuple[str, dict[str, Any]]]
) -> None:
    final, once = anthropic_both(native(thinking, content, tool_calls))
    expected = ("".join(content), "".join(thinking), tool_calls)
    assert anthropic_answer(final) == anthropic_answer(once) == expected
    assert final.stop_reason == once.stop_reason == ("tool_use" if tool_calls else "end_turn")


# Chunks as an upstream other than Ollama may send them: text, thinking and tool calls in any
# mix within one message, the role sometimes left out. Nothing may be lost on any path.
mixed = st.lists(
    st.fixed_dictionaries(
        {"content": st.just("") | text, "thinking": st.just("") | text},
        optional={
            "role": st.just("assistant"),
            "tool_calls": st.lists(
                st.tuples(names, st.dictionaries(names, st.integers() | text, max_size=3)),
                min_size=1,
                max_size=2,
            ),
        },
    ),
    max_size=6,
)


def mixed_chunks(messages: list[dict[str, Any]]) -> list[Chunk]:
    chunks: list[Chunk] = []
    for message in messages:
        if "tool_calls" in message:
            message = {
                **message,
                "tool_calls": [
                    {"id": f"call_{len(chunks)}_{i}", "function": {"name": n, "arguments": a}}
                    for i, (n, a) in enumerate(message["tool_calls"])
                ],
            }
        chunks.append({"model": "m", "message": message, "done": False})
    chunks.append({"model": "m", "message": {"role": "assistant", "content": ""}, "done": True})
    return chunks


def expected(messages: list[dict[str, Any]]) -> tuple[str, str, list[Any]]:
    return (
        "".join(m["content"] for m in messages),
        "".join(m["thinking"] for m in messages),
        [call for m in messages for call in m.get("tool_calls", [])],
    )


@pytest.mark.slow
@settings(max_examples=40, deadline=None)
@given(messages=mixed)
def test_responses_mixed_chunks_lose_nothing(messages: list[dict[str, Any]]) -> None:
    final, once = responses_both(mixed_chunks(messages))

    def answer(response: Any) -> tuple[str, str, list[Any]]:
        thoughts = "".join(
            part.text for i in response.output if i.type == "reasoning" for part in i.summary
        )
        uses = [
            (i.name, json.loads(i.arguments)) for i in response.output if i.type == "function_call"
        ]
        return response.output_text, thoughts, uses

    assert answer(final) == answer(once) == expected(messages)


@pytest.mark.slow
@settings(max_examples=40, deadline=None)
@given(messages=mixed)
def test_anthropic_mixed_chunks_lose_nothing(messages: list[dict[str, Any]]) -> None:
    final, once = anthropic_both(mixed_chunks(messages))
    assert anthropic_answer(final) == anthropic_answer(once) == expected(messages)
