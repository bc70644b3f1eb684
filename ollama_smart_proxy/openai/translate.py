"""OpenAI request bodies -> native Ollama requests (``OLLAMA_API.md`` Part B, and better).

Every function takes the decoded JSON object and returns a native request model, or raises
:class:`OpenAIRequestError` naming the offending ``param``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from .._translate import (
    FieldError,
    expect,
    image_data,
    integer,
    json_arguments,
    json_type,
    number,
    think_level,
    validate,
)
from ..schemas import ChatRequest, EmbedRequest, GenerateRequest

Unsupported = Literal["error", "ignore"]

#: A 400 in the OpenAI shape, with the ``param`` it is about.
OpenAIRequestError = FieldError


@dataclass
class ChatOptions:
    """What the encoders need to know about the client's request."""

    model: str
    stream: bool
    include_usage: bool


def _stop(body: dict[str, Any]) -> list[str] | None:
    stop = body.get("stop")
    if stop is None:
        return None
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, list) and all(isinstance(item, str) for item in stop):
        return list(stop)
    raise OpenAIRequestError("'stop' must be a string or an array of strings", "stop")


def _unsupported(body: dict[str, Any], policy: Unsupported, checks: dict[str, Any]) -> None:
    if policy == "ignore":
        return
    for name, is_bad in checks.items():
        if name in body and body[name] is not None and is_bad(body[name]):
            raise OpenAIRequestError(
                f"'{name}' is not supported by Ollama (value {body[name]!r}); remove it, or "
                "start the proxy with OSP_OPENAI_UNSUPPORTED=ignore to drop it silently",
                name,
                code="unsupported_parameter",
            )


_CHAT_UNSUPPORTED = {
    "n": lambda v: v != 1,
    "logprobs": lambda v: v is not False,
    "top_logprobs": lambda v: True,
    "logit_bias": lambda v: bool(v),
    "audio": lambda v: True,
    "modalities": lambda v: v != ["text"],
    "prediction": lambda v: True,
    "web_search_options": lambda v: True,
}


def _options(body: dict[str, Any], fields: dict[str, str]) -> dict[str, Any]:
    """Ollama ``options``: the client's own (``extra_body``), then the mapped OpenAI fields."""
    options = body.get("options")
    if options is None:
        options = {}
    elif not isinstance(options, dict):
        raise OpenAIRequestError("'options' must be an object of Ollama options", "options")
    options = dict(options)
    for openai_name, native_name in fields.items():
        value = number(body, openai_name)
        if value is not None:
            options[native_name] = value
    for name in ("max_completion_tokens", "max_tokens"):
        value = integer(body, name)
        if value is not None:
            options["num_predict"] = value
            break
    seed = integer(body, "seed")
    if seed is not None:
        options["seed"] = seed
    stop = _stop(body)
    if stop is not None:
        options["stop"] = stop
    return options


def _think(body: dict[str, Any]) -> bool | str | None:
    if "think" in body and body["think"] is not None:
        think = body["think"]
        if not isinstance(think, bool | str):
            raise OpenAIRequestError("'think' must be a boolean or a level string", "think")
        return think
    effort: Any = None
    param = "reasoning_effort"
    reasoning = body.get("reasoning")
    if isinstance(reasoning, dict) and reasoning.get("effort"):
        effort, param = reasoning["effort"], "reasoning.effort"
    elif body.get("reasoning_effort"):
        effort = body["reasoning_effort"]
    if effort is None:
        return None
    return think_level(effort, param)


def _format(body: dict[str, Any]) -> str | dict[str, Any] | None:
    response_format = body.get("response_format")
    if response_format is None:
        return None
    if not isinstance(response_format, dict):
        raise OpenAIRequestError("'response_format' must be an object", "response_format")
    kind = str(response_format.get("type", "")).strip().lower()
    if kind == "json_object":
        return "json"
    if kind == "json_schema":
        json_schema = response_format.get("json_schema")
        schema = json_schema.get("schema") if isinstance(json_schema, dict) else None
        if not isinstance(schema, dict):
            raise OpenAIRequestError(
                "'response_format.json_schema.schema' must be a JSON schema object",
                "response_format.json_schema.schema",
            )
        return schema
    if kind in ("text", ""):
        return None
    raise OpenAIRequestError(
        f"'response_format.type' must be text, json_object or json_schema, got {kind!r}",
        "response_format.type",
    )


def _tool_calls(calls: Any, param: str) -> list[dict[str, Any]]:
    if not isinstance(calls, list):
        raise OpenAIRequestError(f"'{param}' must be an array", param)
    native = []
    for index, call in enumerate(calls):
        where = f"{param}[{index}]"
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise OpenAIRequestError(f"'{where}.function.name' is required", f"{where}.function")
        arguments = json_arguments(function.get("arguments"), f"{where}.function.arguments")
        item: dict[str, Any] = {
            "function": {"index": index, "name": function["name"], "arguments": arguments}
        }
        call_id = call.get("id")
        if call_id is not None and not isinstance(call_id, str):
            raise OpenAIRequestError(f"'{where}.id' must be a string", f"{where}.id")
        if call_id:
            item["id"] = call_id
        native.append(item)
    return native


def _messages(messages: Any) -> list[dict[str, Any]]:
    if not isinstance(messages, list) or not messages:
        raise OpenAIRequestError("[] is too short - 'messages'", "messages")
    call_names: dict[str, str] = {}
    native: list[dict[str, Any]] = []
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise OpenAIRequestError(f"'{where}' must be an object", where)
        role = message.get("role")
        if not isinstance(role, str):
            raise OpenAIRequestError(f"'{where}.role' is required", f"{where}.role")
        role = role.lower()
        if role == "developer":
            role = "system"
        out: dict[str, Any] = {"role": role}
        content = message.get("content")
        if isinstance(content, str):
            out["content"] = content
        elif isinstance(content, list):
            texts: list[str] = []
            images: list[str] = []
            for part_index, part in enumerate(content):
                at = f"{where}.content[{part_index}]"
                kind = part.get("type") if isinstance(part, dict) else None
                if kind in ("text", "input_text") and isinstance(part.get("text"), str):
                    texts.append(part["text"])
                elif kind == "image_url":
                    images.append(image_data(part.get("image_url"), f"{at}.image_url"))
                else:
                    raise OpenAIRequestError(
                        f"invalid message format: unsupported content part {kind!r}", at
                    )
            out["content"] = "\n".join(texts)
            if images:
                out["images"] = images
        elif content is None:
            if not message.get("tool_calls"):
                raise OpenAIRequestError(
                    f"'{where}.content' is required unless the message has tool_calls",
                    f"{where}.content",
                )
            out["content"] = ""
        else:
            raise OpenAIRequestError(
                f"invalid message content type: {json_type(content)}", f"{where}.content"
            )
        reasoning = message.get("reasoning") or message.get("reasoning_content")
        if isinstance(reasoning, str) and reasoning:
            out["thinking"] = reasoning
        if message.get("tool_calls"):
            out["tool_calls"] = _tool_calls(message["tool_calls"], f"{where}.tool_calls")
            for call in out["tool_calls"]:
                if "id" in call:
                    call_names[call["id"]] = call["function"]["name"]
        if role == "tool":
            name = message.get("name")
            call_id = message.get("tool_call_id")
            if isinstance(call_id, str) and call_id:
                out["tool_call_id"] = call_id
            if isinstance(name, str) and name:
                out["tool_name"] = name
            elif isinstance(call_id, str) and call_id in call_names:
                out["tool_name"] = call_names[call_id]
        native.append(out)
    return native


def _tools(body: dict[str, Any]) -> list[dict[str, Any]] | None:
    tools = body.get("tools")
    choice = body.get("tool_choice")
    if choice is not None and not (
        isinstance(choice, dict) or choice in ("none", "auto", "required")
    ):
        raise OpenAIRequestError(
            '\'tool_choice\' must be none, auto, required or {"type": "function", ...}',
            "tool_choice",
        )
    if tools is None:
        return None
    if not isinstance(tools, list):
        raise OpenAIRequestError("'tools' must be an array", "tools")
    if choice in (None, "auto", "required"):
        return tools or None
    if choice == "none":
        return None
    if isinstance(choice, dict):
        function = choice.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(name, str):
            raise OpenAIRequestError(
                "'tool_choice.function.name' must name a function in 'tools'",
                "tool_choice.function.name",
            )
        chosen = [tool for tool in tools if _tool_name(tool) == name]
        if not chosen:
            raise OpenAIRequestError(
                f"'tool_choice' names the function {name!r}, which is not in 'tools'",
                "tool_choice",
            )
        return chosen
    raise OpenAIRequestError(
        '\'tool_choice\' must be none, auto, required or {"type": "function", ...}',
        "tool_choice",
    )


def _tool_name(tool: Any) -> str | None:
    function = tool.get("function") if isinstance(tool, dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    return name if isinstance(name, str) else None


def _common(body: dict[str, Any]) -> dict[str, Any]:
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise OpenAIRequestError("'model' must be a string", "model")
    native: dict[str, Any] = {}
    if model:
        native["model"] = model
    if body.get("keep_alive") is not None:
        keep_alive = body["keep_alive"]
        if isinstance(keep_alive, bool) or not isinstance(keep_alive, int | float | str):
            raise OpenAIRequestError("'keep_alive' must be a number or a duration", "keep_alive")
        native["keep_alive"] = keep_alive
    return native


def _stream(body: dict[str, Any]) -> tuple[bool, bool]:
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    expect(stream, bool, "stream", "a boolean")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise OpenAIRequestError("'stream_options' must be an object", "stream_options")
    return stream, bool(options.get("include_usage"))


_SAMPLING = {
    "temperature": "temperature",
    "top_p": "top_p",
    "frequency_penalty": "frequency_penalty",
    "presence_penalty": "presence_penalty",
}


def _sampling(body: dict[str, Any], native: dict[str, Any]) -> ChatOptions:
    """What chat and completions share: ``stream``, ``options`` and ``think``."""
    stream, include_usage = _stream(body)
    native["stream"] = stream
    options = _options(body, _SAMPLING)
    if options:
        native["options"] = options
    think = _think(body)
    if think is not None:
        native["think"] = think
    return ChatOptions(str(body.get("model") or ""), stream, include_usage)


def chat_request(
    body: dict[str, Any], unsupported: Unsupported = "error"
) -> tuple[ChatRequest, ChatOptions]:
    """``/v1/chat/completions`` body -> ``/api/chat`` request."""
    _unsupported(body, unsupported, _CHAT_UNSUPPORTED)
    native = _common(body)
    native["messages"] = _messages(body.get("messages"))
    options = _sampling(body, native)
    fmt = _format(body)
    if fmt is not None:
        native["format"] = fmt
    tools = _tools(body)
    if tools:
        native["tools"] = tools
    return validate(ChatRequest, native), options


_COMPLETION_UNSUPPORTED = {
    "n": lambda v: v != 1,
    "best_of": lambda v: v != 1,
    "echo": lambda v: v is not False,
    "logprobs": lambda v: v not in (0, False),
    "logit_bias": lambda v: bool(v),
}


def completion_request(
    body: dict[str, Any], unsupported: Unsupported = "error"
) -> tuple[GenerateRequest, ChatOptions]:
    """``/v1/completions`` body -> ``/api/generate`` request."""
    _unsupported(body, unsupported, _COMPLETION_UNSUPPORTED)
    native = _common(body)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise OpenAIRequestError("'prompt' must be a string (one prompt per request)", "prompt")
    native["prompt"] = prompt
    if body.get("suffix") is not None:
        native["suffix"] = expect(body["suffix"], str, "suffix", "a string")
    options = _sampling(body, native)
    return validate(GenerateRequest, native), options


def embedding_request(body: dict[str, Any]) -> tuple[EmbedRequest, str, str]:
    """``/v1/embeddings`` body -> ``/api/embed`` request, the model and the encoding format."""
    native = _common(body)
    raw = body.get("input")
    if raw == "":
        raw = [""]
    if isinstance(raw, str) or (
        isinstance(raw, list) and raw and all(isinstance(item, str) for item in raw)
    ):
        native["input"] = raw
    elif isinstance(raw, list) and raw:
        raise OpenAIRequestError(
            "'input' must be a string or an array of strings: Ollama does not take token arrays",
            "input",
        )
    else:
        raise OpenAIRequestError(
            "invalid input: 'input' must be a non-empty string or array", "input"
        )
    fmt = body.get("encoding_format") or "float"
    if not isinstance(fmt, str) or fmt.lower() not in ("float", "base64"):
        raise OpenAIRequestError(
            f"Invalid value for 'encoding_format' = {fmt}. Supported values: ['float', 'base64'].",
            "encoding_format",
        )
    dimensions = integer(body, "dimensions")
    if dimensions is not None:
        native["dimensions"] = dimensions
    options = body.get("options")
    if isinstance(options, dict):
        native["options"] = options
    return validate(EmbedRequest, native), str(body.get("model") or ""), fmt.lower()


__all__ = [
    "ChatOptions",
    "OpenAIRequestError",
    "Unsupported",
    "chat_request",
    "completion_request",
    "embedding_request",
]
