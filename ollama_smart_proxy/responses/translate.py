"""OpenAI Responses request bodies -> native ``/api/chat`` requests (``OLLAMA_API.md`` B.8).

Stateless, as Ollama serves the API: a request carries its whole conversation in ``input``.
What Codex and the OpenAI Agents SDK send is taken as it comes: ``developer`` turns, items
with ``id`` and ``status``, assistant ``output_text`` parts, ``reasoning`` items, function
calls and their outputs, ``namespace`` tool groups (flattened), and ``additional_tools``
items; tools that Ollama cannot call (``web_search``, ``custom``, ...) are dropped and logged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from .._translate import (
    FieldError,
    expect,
    function_tool,
    image_data,
    integer,
    json_arguments,
    json_type,
    number,
    think_level,
    validate,
)
from ..schemas import ChatRequest

logger = logging.getLogger("ollama_smart_proxy.responses")

#: Fields that ask for state a stateless server does not keep.
STATEFUL = ("previous_response_id", "conversation")


@dataclass
class ResponsesOptions:
    """What the encoders need to echo back about the request."""

    model: str
    stream: bool
    instructions: str | None = None
    tools: list[dict[str, Any]] = field(default_factory=list)
    tool_choice: Any = "auto"
    temperature: float | None = None
    top_p: float | None = None
    max_output_tokens: int | None = None
    reasoning: dict[str, Any] | None = None
    text: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None
    parallel_tool_calls: bool = True
    dropped_tools: list[str] = field(default_factory=list)


def _text_of(content: Any, where: str) -> tuple[str, list[str]]:
    """The text and images of a message's ``content`` (a string, or parts)."""
    if isinstance(content, str):
        return content, []
    if content is None:
        return "", []
    if not isinstance(content, list):
        raise FieldError(f"'{where}' must be a string or an array of parts", where)
    texts: list[str] = []
    images: list[str] = []
    for index, part in enumerate(content):
        at = f"{where}[{index}]"
        if isinstance(part, str):
            texts.append(part)
            continue
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text", "text", "summary_text", "reasoning_text"):
            texts.append(expect(part.get("text"), str, f"{at}.text", "a string"))
        elif kind == "input_image":
            url = part.get("image_url") or part.get("url")
            if url is None and part.get("file_id"):
                raise FieldError(
                    "images by file_id are not supported: send the image as a data URL",
                    f"{at}.file_id",
                )
            images.append(image_data(url, f"{at}.image_url"))
        elif kind == "refusal":
            texts.append(str(part.get("refusal") or ""))
        elif kind in ("input_file", "input_audio"):
            raise FieldError(f"content parts of type {kind!r} are not supported by Ollama", at)
        else:
            raise FieldError(f"unsupported content part type {kind!r}", at)
    return "\n".join(texts), images


def _tool(tool: Any, where: str, options: ResponsesOptions) -> list[dict[str, Any]]:
    """A Responses tool as native function tools (a namespace gives several; built-in tools
    Ollama cannot call give none)."""
    if not isinstance(tool, dict):
        raise FieldError(f"'{where}' must be an object", where)
    kind = tool.get("type", "function")
    if kind == "function":
        return [function_tool(tool, where, "parameters")]
    if kind == "namespace":
        inner = tool.get("tools") or []
        if not isinstance(inner, list):
            raise FieldError(f"'{where}.tools' must be an array", f"{where}.tools")
        flat: list[dict[str, Any]] = []
        for index, item in enumerate(inner):
            flat += _tool(item, f"{where}.tools[{index}]", options)
        return flat
    options.dropped_tools.append(str(tool.get("name") or kind))
    return []


def _tools(body: dict[str, Any], extra: list[Any], options: ResponsesOptions) -> list[Any]:
    tools = body.get("tools")
    if tools is None:
        tools = []
    if not isinstance(tools, list):
        raise FieldError("'tools' must be an array", "tools")
    options.tools = [tool for tool in tools if isinstance(tool, dict)]
    native: list[Any] = []
    for index, tool in enumerate([*tools, *extra]):
        native += _tool(tool, f"tools[{index}]", options)
    choice = body.get("tool_choice")
    options.tool_choice = choice if choice is not None else "auto"
    if choice in (None, "auto", "required"):
        return native
    if choice == "none":
        return []
    if isinstance(choice, dict):
        name = choice.get("name")
        if choice.get("type") in ("function", None) and isinstance(name, str):
            chosen = [tool for tool in native if tool["function"]["name"] == name]
            if not chosen:
                raise FieldError(
                    f"'tool_choice' names the function {name!r}, which is not in 'tools'",
                    "tool_choice",
                )
            return chosen
        return native  # a built-in tool or an allowed_tools list: leave the choice to the model
    raise FieldError("'tool_choice' must be none, auto, required or an object", "tool_choice")


def _messages(body: dict[str, Any], options: ResponsesOptions) -> tuple[list[Any], list[Any]]:
    """The native messages, and tools that came as ``additional_tools`` items."""
    messages: list[dict[str, Any]] = []
    extra_tools: list[Any] = []
    instructions = body.get("instructions")
    if instructions is not None:
        if isinstance(instructions, str):
            if instructions:
                messages.append({"role": "system", "content": instructions})
                options.instructions = instructions
        else:
            raise FieldError("'instructions' must be a string", "instructions")
    items = body.get("input")
    if isinstance(items, str):
        messages.append({"role": "user", "content": items})
        return messages, extra_tools
    if not isinstance(items, list):
        raise FieldError(
            f"'input' must be a string or an array of items, got {json_type(items)}", "input"
        )
    call_names: dict[str, str] = {}
    thinking: list[str] = []
    for index, item in enumerate(items):
        where = f"input[{index}]"
        if not isinstance(item, dict):
            raise FieldError(f"'{where}' must be an object", where)
        kind = item.get("type") or ("message" if "role" in item else None)
        if kind == "message":
            role = expect(item.get("role"), str, f"{where}.role", "a string").lower()
            if role == "developer":
                role = "system"
            text, images = _text_of(item.get("content"), f"{where}.content")
            message: dict[str, Any] = {"role": role, "content": text}
            if images:
                message["images"] = images
            if role == "assistant" and thinking:
                message["thinking"] = "\n".join(thinking)
                thinking = []
            messages.append(message)
        elif kind == "reasoning":
            summary = item.get("summary") or []
            text, _ = _text_of(summary, f"{where}.summary") if summary else ("", [])
            content = item.get("content")
            if not text and isinstance(content, list):
                text, _ = _text_of(content, f"{where}.content")
            if text:
                thinking.append(text)
        elif kind == "function_call":
            name = expect(item.get("name"), str, f"{where}.name", "a string")
            call_id = item.get("call_id") or item.get("id")
            arguments = json_arguments(item.get("arguments"), f"{where}.arguments")
            call: dict[str, Any] = {"function": {"name": name, "arguments": arguments}}
            if isinstance(call_id, str):
                call["id"] = call_id
                call_names[call_id] = name
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant" and "tool_calls" in last:
                call["function"]["index"] = len(last["tool_calls"])
                last["tool_calls"].append(call)
            else:
                call["function"]["index"] = 0
                assistant: dict[str, Any] = {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [call],
                }
                if thinking:
                    assistant["thinking"] = "\n".join(thinking)
                    thinking = []
                messages.append(assistant)
        elif kind == "function_call_output":
            call_id = item.get("call_id")
            output = item.get("output")
            text = output if isinstance(output, str) else _text_of(output, f"{where}.output")[0]
            tool: dict[str, Any] = {"role": "tool", "content": text}
            if isinstance(call_id, str):
                tool["tool_call_id"] = call_id
                if call_id in call_names:
                    tool["tool_name"] = call_names[call_id]
            messages.append(tool)
        elif kind == "additional_tools":
            tools = item.get("tools") or []
            if isinstance(tools, list):
                extra_tools += tools
        elif kind == "item_reference":
            raise FieldError(
                "item references need stored responses, which this proxy (like Ollama) does "
                "not keep: send the items themselves",
                f"{where}.id",
            )
        else:
            # Built-in tools' calls and their outputs (web search, shells, ...): nothing
            # Ollama can take part in.
            logger.debug("dropped a %r input item", kind)
    if not messages:
        raise FieldError("'input' holds no message", "input")
    return messages, extra_tools


def responses_request(
    body: dict[str, Any], default_max_output_tokens: int | None = None
) -> tuple[ChatRequest, ResponsesOptions]:
    """``/v1/responses`` body -> ``/api/chat`` request."""
    for name in STATEFUL:
        if body.get(name) is not None:
            raise FieldError(
                f"'{name}' needs responses stored on the server, which this proxy (like Ollama "
                "itself) does not keep: send the whole conversation in 'input'",
                name,
            )
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise FieldError("'model' must be a string", "model")
    stream = body.get("stream") or False
    expect(stream, bool, "stream", "a boolean")
    options = ResponsesOptions(model=model or "", stream=stream)
    messages, extra_tools = _messages(body, options)
    native: dict[str, Any] = {"messages": messages, "stream": stream}
    if model:
        native["model"] = model
    tools = _tools(body, extra_tools, options)
    if tools:
        native["tools"] = tools
    if options.dropped_tools:
        logger.info(
            "dropped tools Ollama cannot call: %s", ", ".join(sorted(set(options.dropped_tools)))
        )
    ollama_options: dict[str, Any] = {}
    extra = body.get("options")
    if isinstance(extra, dict):
        ollama_options.update(extra)
    temperature = number(body, "temperature")
    if temperature is not None:
        ollama_options["temperature"] = options.temperature = temperature
    top_p = number(body, "top_p")
    if top_p is not None:
        ollama_options["top_p"] = options.top_p = top_p
    limit = integer(body, "max_output_tokens")
    if limit is not None and limit <= 0:  # 0 or less would be unbounded at Ollama
        raise FieldError("'max_output_tokens' must be positive", "max_output_tokens")
    if limit is None:
        limit = default_max_output_tokens
    if limit is not None:
        ollama_options["num_predict"] = options.max_output_tokens = limit
    if ollama_options:
        native["options"] = ollama_options
    reasoning = body.get("reasoning")
    if isinstance(reasoning, dict):
        options.reasoning = reasoning
        if reasoning.get("effort") is not None:
            native["think"] = think_level(reasoning["effort"], "reasoning.effort")
    elif reasoning is not None:
        raise FieldError("'reasoning' must be an object", "reasoning")
    text = body.get("text")
    if isinstance(text, dict):
        options.text = text
        fmt = text.get("format")
        if isinstance(fmt, dict):
            kind = fmt.get("type")
            if kind == "json_schema":
                schema = fmt.get("schema")
                if not isinstance(schema, dict):
                    raise FieldError("'text.format.schema' must be an object", "text.format.schema")
                native["format"] = schema
            elif kind == "json_object":
                native["format"] = "json"
    elif text is not None:
        raise FieldError("'text' must be an object", "text")
    if isinstance(body.get("metadata"), dict):
        options.metadata = body["metadata"]
    if isinstance(body.get("parallel_tool_calls"), bool):
        options.parallel_tool_calls = body["parallel_tool_calls"]
    if body.get("keep_alive") is not None:
        native["keep_alive"] = body["keep_alive"]
    return validate(ChatRequest, native), options


__all__ = ["STATEFUL", "ResponsesOptions", "responses_request"]
