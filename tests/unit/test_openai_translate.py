"""Request translation: OLLAMA_API.md Part C (C.1-C.3, C.7), ported, plus our improvements."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ollama_smart_proxy.openai.translate import (
    OpenAIRequestError,
    chat_request,
    completion_request,
    embedding_request,
)
from ollama_smart_proxy.schemas import dump_request

IMG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNk+A8AAQUBAScY42YAAAAASUVORK5CYII="
PFX = "data:image/jpeg;base64,"
USER = [{"role": "user", "content": "Hello"}]
WEATHER_CALL = {
    "id": "id",
    "type": "function",
    "function": {
        "name": "get_current_weather",
        "arguments": '{"location": "Paris, France", "format": "celsius"}',
    },
}
NATIVE_CALL = {
    "id": "id",
    "function": {
        "index": 0,
        "name": "get_current_weather",
        "arguments": {"location": "Paris, France", "format": "celsius"},
    },
}


def chat(body: dict[str, Any]) -> dict[str, Any]:
    import json

    request, _ = chat_request({"model": "test-model", **body})
    return json.loads(dump_request(request))  # type: ignore[no-any-return]


def test_c1_basic_leaves_temperature_to_the_model() -> None:
    # Ollama's /v1 forces temperature=1, top_p=1; we send only what the client sent.
    assert chat({"messages": USER}) == {"model": "test-model", "messages": USER, "stream": False}


def test_c2_options() -> None:
    native = chat(
        {
            "messages": USER,
            "stream": True,
            "max_tokens": 999,
            "seed": 123,
            "stop": ["\n", "stop"],
            "temperature": 3.0,
            "frequency_penalty": 4.0,
            "presence_penalty": 5.0,
            "top_p": 6.0,
            "response_format": {"type": "json_object"},
        }
    )
    assert native["options"] == {
        "num_predict": 999,
        "seed": 123,
        "stop": ["\n", "stop"],
        "temperature": 3.0,
        "frequency_penalty": 4.0,
        "presence_penalty": 5.0,
        "top_p": 6.0,
    }
    assert native["format"] == "json"
    assert native["stream"] is True


def test_c3_stream_options_not_forwarded() -> None:
    request, options = chat_request(
        {"model": "m", "messages": USER, "stream": True, "stream_options": {"include_usage": True}}
    )
    assert "stream_options" not in dump_request(request).decode()
    assert options.include_usage is True


def test_c4_image_content_one_message() -> None:
    native = chat(
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "Hello"},
                        {"type": "image_url", "image_url": {"url": PFX + IMG}},
                    ],
                }
            ]
        }
    )
    # Ollama splits parts into one message each; we keep one user turn with its image.
    assert native["messages"] == [{"role": "user", "content": "Hello", "images": [IMG]}]


@pytest.mark.parametrize("content", [None, "", "Let's see what the weather is like in Paris"])
def test_c5_c6_c7_assistant_tool_calls(content: str | None) -> None:
    assistant: dict[str, Any] = {"role": "assistant", "tool_calls": [WEATHER_CALL]}
    if content is not None:
        assistant["content"] = content
    native = chat({"messages": [USER[0], assistant]})
    assert native["messages"][1] == {
        "role": "assistant",
        "content": content or "",
        "tool_calls": [NATIVE_CALL],
    }


def test_c8_reasoning_becomes_thinking() -> None:
    assistant = {"role": "assistant", "tool_calls": [WEATHER_CALL], "reasoning": "hmm"}
    assert chat({"messages": [USER[0], assistant]})["messages"][1]["thinking"] == "hmm"


def test_c9_tool_result_named_by_call_id() -> None:
    call = {**WEATHER_CALL, "id": "id_abc"}
    native = chat(
        {
            "messages": [
                USER[0],
                {"role": "assistant", "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "id_abc", "content": "20 degrees"},
            ]
        }
    )
    assert native["messages"][2] == {
        "role": "tool",
        "content": "20 degrees",
        "tool_name": "get_current_weather",
        "tool_call_id": "id_abc",
    }


def test_c10_tool_result_by_name() -> None:
    native = chat(
        {"messages": [USER[0], {"role": "tool", "name": "get_current_weather", "content": "20"}]}
    )
    assert native["messages"][1] == {
        "role": "tool",
        "content": "20",
        "tool_name": "get_current_weather",
    }


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the current weather",
            "parameters": {
                "type": "object",
                "required": ["location"],
                "properties": {
                    "location": {"type": "string", "description": "The city and state"},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                },
                "additionalProperties": False,
            },
        },
    },
    {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}},
]


def test_c11_tools_pass_whole() -> None:
    # Ollama's /v1 drops schema keywords like additionalProperties; we keep them.
    assert chat({"messages": USER, "stream": True, "tools": TOOLS})["tools"] == TOOLS


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("auto", TOOLS),
        ("required", TOOLS),
        ("none", None),
        ({"type": "function", "function": {"name": "get_time"}}, [TOOLS[1]]),
    ],
)
def test_tool_choice(choice: object, expected: object) -> None:
    assert chat({"messages": USER, "tools": TOOLS, "tool_choice": choice}).get("tools") == expected


@pytest.mark.parametrize(
    ("body", "param", "fragment"),
    [
        (
            {"messages": [{"role": "user", "content": 2}]},
            "messages[0].content",
            "invalid message content type: integer",
        ),
        ({"messages": []}, "messages", "[] is too short - 'messages'"),
        ({}, "messages", "too short"),
        ({"messages": USER, "n": 2}, "n", "'n' is not supported"),
        ({"messages": USER, "logprobs": True}, "logprobs", "not supported"),
        (
            {"messages": USER, "reasoning_effort": "extreme"},
            "reasoning_effort",
            'invalid reasoning value: "extreme"',
        ),
        ({"messages": USER, "temperature": "hot"}, "temperature", "must be a number"),
        ({"messages": USER, "stop": ["a", 1]}, "stop", "array of strings"),
        (
            {
                "messages": USER,
                "tools": TOOLS,
                "tool_choice": {"type": "function", "function": {"name": "x"}},
            },
            "tool_choice",
            "not in 'tools'",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}],
                    }
                ]
            },
            "messages[0].content[0].image_url",
            "does not fetch remote images",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "image_url", "image_url": "data:image/gif;base64,R0lG"}
                        ],
                    }
                ]
            },
            "messages[0].content[0].image_url",
            "invalid image input",
        ),
        (
            {
                "messages": [
                    {
                        "role": "assistant",
                        "tool_calls": [{"function": {"name": "f", "arguments": "[1]"}}],
                    }
                ]
            },
            "messages[0].tool_calls[0].function.arguments",
            "invalid tool call arguments",
        ),
        (
            {"messages": USER, "response_format": {"type": "xml"}},
            "response_format.type",
            "json_schema",
        ),
        ({"messages": USER, "model": 3}, "model", "must be a string"),
    ],
)
def test_c12_and_errors_name_the_param(body: dict[str, Any], param: str, fragment: str) -> None:
    full = {"model": "m", **body}
    with pytest.raises(OpenAIRequestError) as info:
        chat_request(full)
    assert info.value.param == param
    assert fragment in info.value.message
    assert info.value.status_code == 400


def test_unsupported_fields_can_be_ignored() -> None:
    request, _ = chat_request({"model": "m", "messages": USER, "n": 3, "logprobs": True}, "ignore")
    assert request.messages is not None


def test_data_url_forms_accepted() -> None:
    for url in ("data:;base64," + IMG, {"url": "data:image/png;base64," + IMG}):
        native = chat(
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": url}]}]}
        )
        assert native["messages"][0]["images"] == [IMG]


def test_d4_json_schema() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    fmt = {"type": "json_schema", "json_schema": {"name": "n", "schema": schema}}
    assert chat({"messages": USER, "response_format": fmt})["format"] == schema


@pytest.mark.parametrize(
    ("effort", "think"),
    [
        (None, None),
        ("high", "high"),
        ("medium", "medium"),
        ("low", "low"),
        ("max", "max"),
        ("minimal", "low"),
        ("xhigh", "max"),
        ("ultra", "max"),
        ("none", False),
    ],
)
def test_c52_reasoning_effort(effort: str | None, think: object) -> None:
    body: dict[str, Any] = {"messages": USER}
    if effort:
        body["reasoning_effort"] = effort
    assert chat(body).get("think") == think


def test_d5_reasoning_object_wins() -> None:
    body = {"messages": USER, "reasoning": {"effort": "high"}, "reasoning_effort": "none"}
    assert chat(body)["think"] == "high"


def test_better_max_completion_tokens_and_ollama_controls() -> None:
    native = chat(
        {
            "messages": USER,
            "max_completion_tokens": 64,
            "options": {"num_ctx": 8192, "temperature": 0.1},
            "temperature": 0.5,
            "keep_alive": "10m",
            "think": False,
            "reasoning_effort": "high",
        }
    )
    assert native["options"] == {"num_ctx": 8192, "temperature": 0.5, "num_predict": 64}
    assert native["keep_alive"] == "10m"
    assert native["think"] is False


def test_c13_completions() -> None:
    request, options = completion_request(
        {
            "model": "test-model",
            "prompt": "Hello",
            "temperature": 0.8,
            "stop": ["\n", "stop"],
            "suffix": "suffix",
            "stream": True,
        }
    )
    assert request.prompt == "Hello"
    assert request.suffix == "suffix"
    assert request.options == {"temperature": 0.8, "stop": ["\n", "stop"]}
    assert request.stream is True
    assert options.stream is True


def test_c16_completions_bad_stop() -> None:
    with pytest.raises(OpenAIRequestError, match="stop"):
        completion_request({"model": "m", "prompt": "x", "stop": [1, 2]})


@pytest.mark.parametrize(
    ("body", "expected_input"),
    [
        ({"input": "Hello"}, "Hello"),
        ({"input": ["Hello", "World"]}, ["Hello", "World"]),
        ({"input": ""}, [""]),
    ],
)
def test_c17_c18_d8_embeddings(body: dict[str, Any], expected_input: object) -> None:
    request, model, fmt = embedding_request({"model": "test-model", **body})
    assert request.input == expected_input
    assert (model, fmt) == ("test-model", "float")


@pytest.mark.parametrize("body", [{}, {"input": []}, {"input": [1, 2]}, {"input": None}])
def test_c19_embeddings_bad_input(body: dict[str, Any]) -> None:
    with pytest.raises(OpenAIRequestError) as info:
        embedding_request({"model": "m", **body})
    assert info.value.param == "input"


@pytest.mark.parametrize("fmt", ["float", "base64", "FLOAT", "BASE64", "Float", "Base64"])
def test_c24_encoding_format_ok(fmt: str) -> None:
    assert embedding_request({"model": "m", "input": "x", "encoding_format": fmt})[2] == fmt.lower()


@pytest.mark.parametrize("fmt", ["json", "hex", "invalid_format"])
def test_c30_encoding_format_bad(fmt: str) -> None:
    with pytest.raises(OpenAIRequestError, match="encoding_format"):
        embedding_request({"model": "m", "input": "x", "encoding_format": fmt})


text = st.text(max_size=30)
message = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "assistant", "system"]), "content": text}
)


@given(
    messages=st.lists(message, min_size=1, max_size=5),
    temperature=st.none() | st.floats(0, 2),
    top_p=st.none() | st.floats(0, 1),
    max_tokens=st.none() | st.integers(1, 4096),
    seed=st.none() | st.integers(0, 2**31),
    stop=st.none() | text | st.lists(text, max_size=3),
    stream=st.booleans(),
    extra_unknown=st.dictionaries(
        st.sampled_from(["user", "store", "metadata"]), st.text(max_size=5)
    ),
)
def test_random_chat_requests_lose_no_field(
    messages: list[dict[str, str]],
    temperature: float | None,
    top_p: float | None,
    max_tokens: int | None,
    seed: int | None,
    stop: str | list[str] | None,
    stream: bool,
    extra_unknown: dict[str, str],
) -> None:
    body: dict[str, Any] = {"model": "m", "messages": messages, "stream": stream, **extra_unknown}
    for name, value in (
        ("temperature", temperature),
        ("top_p", top_p),
        ("max_tokens", max_tokens),
        ("seed", seed),
        ("stop", stop),
    ):
        if value is not None:
            body[name] = value
    native = chat(body)
    assert native["messages"] == messages
    assert native["stream"] is stream
    options = native.get("options", {})
    assert options.get("temperature") == temperature
    assert options.get("top_p") == top_p
    assert options.get("num_predict") == max_tokens
    assert options.get("seed") == seed
    assert options.get("stop") == ([stop] if isinstance(stop, str) else stop)


def test_a_data_url_image_is_checked_at_its_ends_not_decoded() -> None:
    """A 64 MiB image held the event loop 0.7 s in base64.b64decode; Ollama decodes it."""
    from ollama_smart_proxy._translate import FieldError, image_data

    good = "QUJD" * 5000
    assert image_data(f"data:image/png;base64,{good}", "p") == good
    middle_bad = good[:8000] + "!!!!" + good[8004:]
    assert image_data(f"data:image/png;base64,{middle_bad}", "p") == middle_bad  # Ollama's 400
    for bad in ("QUJ", "!!!!" + good, good + "!!!!", "data:text/html;base64,QUJD"):
        url = bad if bad.startswith("data:") else f"data:image/png;base64,{bad}"
        with pytest.raises(FieldError):
            image_data(url, "p")
