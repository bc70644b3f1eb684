"""The response pipeline alone: a ResponseWriter over a recording send, fed plain Ollama."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ollama_smart_proxy._pipeline import ResponseWriter
from ollama_smart_proxy.encoding import Chunk, NativeEncoder, merge_chunks
from ollama_smart_proxy.errors import UpstreamError, UpstreamStatusError
from ollama_smart_proxy.exchange import Exchange
from ollama_smart_proxy.openai.render import ChatCompletionEncoder
from ollama_smart_proxy.schemas import ChatRequest
from ollama_smart_proxy.types import Message

pytestmark = pytest.mark.anyio

NDJSON = [(b"content-type", b"application/x-ndjson")]
JSON = [(b"content-type", b"application/json; charset=utf-8")]


def exchange(*transforms: Any) -> Exchange:
    ex = Exchange("chat", ChatRequest(model="m", messages=[]))
    ex.transforms.extend(transforms)
    return ex


class Recorder:
    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def __call__(self, message: Message) -> None:
        self.messages.append(message)

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.messages if m["type"].endswith("body"))


async def feed(writer: ResponseWriter, headers: list[tuple[bytes, bytes]], *parts: bytes) -> None:
    await writer({"type": "http.response.start", "status": 200, "headers": headers})
    for part in parts:
        await writer({"type": "http.response.body", "body": part, "more_body": True})
    await writer({"type": "http.response.body", "body": b"", "more_body": False})


class Upper:
    async def on_chunk(self, chunk: Chunk) -> Chunk | None:
        message = chunk.get("message")
        if isinstance(message, dict) and message.get("content"):
            chunk = {**chunk, "message": {**message, "content": message["content"].upper()}}
        return chunk

    async def on_end(self) -> list[Chunk]:
        return []


class Suffix:
    """Appends text at the end of the answer (a stateful transform)."""

    def __init__(self) -> None:
        self.seen = 0

    async def on_chunk(self, chunk: Chunk) -> Chunk | None:
        self.seen += 1
        return chunk

    async def on_end(self) -> list[Chunk]:
        return [{"model": "m", "message": {"role": "assistant", "content": "!"}, "done": False}]


async def test_passthrough_sends_the_very_same_messages() -> None:
    send = Recorder()
    writer = ResponseWriter(send, exchange(), NativeEncoder())
    start = {"type": "http.response.start", "status": 200, "headers": NDJSON}
    body = {"type": "http.response.body", "body": b'{"a"', "more_body": True}
    await writer(start)
    await writer(body)
    assert send.messages[0] is start and send.messages[1] is body


async def test_native_error_status_passes_through_untouched() -> None:
    send = Recorder()
    writer = ResponseWriter(send, exchange(Upper()), NativeEncoder())
    await writer({"type": "http.response.start", "status": 404, "headers": JSON})
    await writer({"type": "http.response.body", "body": b'{"error":"model \'x\' not found"}'})
    assert send.messages[0]["status"] == 404
    assert send.body == b'{"error":"model \'x\' not found"}'


async def test_lines_split_anywhere_are_decoded_once_and_transformed() -> None:
    send = Recorder()
    writer = ResponseWriter(send, exchange(Upper()), NativeEncoder())
    stream = b'{"message":{"role":"assistant","content":"ab"},"done":false}\n{"done":true}\n'
    await feed(writer, NDJSON, *[stream[i : i + 7] for i in range(0, len(stream), 7)])
    lines = [json.loads(line) for line in send.body.splitlines()]
    assert lines[0]["message"]["content"] == "AB"
    assert lines[-1] == {"done": True}


async def test_an_error_status_for_a_translated_client_is_raised() -> None:
    writer = ResponseWriter(Recorder(), exchange(), ChatCompletionEncoder("m", stream=False))
    await writer({"type": "http.response.start", "status": 404, "headers": JSON})
    with pytest.raises(UpstreamStatusError) as caught:
        await writer({"type": "http.response.body", "body": b'{"error":"model \'x\' not found"}'})
    assert caught.value.status_code == 404
    assert caught.value.message == "model 'x' not found"
    assert caught.value.code == "model_not_found"


async def test_ollamas_error_line_is_raised_for_the_boundary() -> None:
    writer = ResponseWriter(Recorder(), exchange(Upper()), NativeEncoder())
    await writer({"type": "http.response.start", "status": 200, "headers": NDJSON})
    with pytest.raises(UpstreamStatusError, match="model crashed"):
        await writer({"type": "http.response.body", "body": b'{"error":"model crashed"}\n'})


@pytest.mark.parametrize("line", [b"not json\n", b"[1,2]\n"])
async def test_junk_lines_from_ollama_are_an_upstream_error(line: bytes) -> None:
    writer = ResponseWriter(Recorder(), exchange(Upper()), NativeEncoder())
    await writer({"type": "http.response.start", "status": 200, "headers": NDJSON})
    with pytest.raises(UpstreamError, match="Ollama sent"):
        await writer({"type": "http.response.body", "body": line, "more_body": True})


# -- the property: streaming and not streaming give the same answer, whatever transforms ----

tokens = st.lists(st.text(min_size=1, max_size=6), min_size=0, max_size=8)
thinking = st.lists(st.text(min_size=1, max_size=6), max_size=3)
TRANSFORMS = {"none": list, "upper": lambda: [Upper()], "suffix": lambda: [Suffix()]}


def native_stream(think: list[str], content: list[str]) -> list[Chunk]:
    chunks: list[Chunk] = [
        {
            "model": "m",
            "message": {"role": "assistant", "content": "", "thinking": t},
            "done": False,
        }
        for t in think
    ]
    chunks += [
        {"model": "m", "message": {"role": "assistant", "content": c}, "done": False}
        for c in content
    ]
    chunks.append(
        {
            "model": "m",
            "message": {"role": "assistant", "content": ""},
            "done": True,
            "done_reason": "stop",
            "eval_count": len(content),
        }
    )
    return chunks


async def run(
    chunks: list[Chunk], transforms: list[Any], *, stream: bool, encoder: Any = None
) -> bytes:
    send = Recorder()
    writer = ResponseWriter(send, exchange(*transforms), encoder or NativeEncoder())
    if stream:
        await feed(writer, NDJSON, *[json.dumps(c).encode() + b"\n" for c in chunks])
    else:
        await feed(writer, JSON, json.dumps(merge_chunks(chunks)).encode())
    return send.body


@settings(max_examples=60, deadline=None)
@given(think=thinking, content=tokens, name=st.sampled_from(sorted(TRANSFORMS)))
async def test_merged_stream_equals_the_non_stream_answer(
    think: list[str], content: list[str], name: str
) -> None:
    chunks = native_stream(think, content)
    streamed = await run(chunks, TRANSFORMS[name](), stream=True)
    whole = await run(chunks, TRANSFORMS[name](), stream=False)
    merged = merge_chunks([json.loads(line) for line in streamed.splitlines()])
    assert merged["message"] == json.loads(whole)["message"]
    # and the OpenAI encoder says the same, streaming or not
    sse = await run(
        chunks, TRANSFORMS[name](), stream=True, encoder=ChatCompletionEncoder("m", True)
    )
    frames = [json.loads(f[6:]) for f in sse.decode().split("\n\n") if f and f != "data: [DONE]"]
    text = "".join(f["choices"][0]["delta"].get("content") or "" for f in frames if f["choices"])
    one = await run(
        chunks, TRANSFORMS[name](), stream=False, encoder=ChatCompletionEncoder("m", False)
    )
    assert (
        text == json.loads(one)["choices"][0]["message"]["content"] == merged["message"]["content"]
    )
