"""Anthropic Messages request bodies -> native ``/api/chat`` requests.

What Claude Code sends is taken as it comes: ``system`` as blocks with ``cache_control``
(its first block, a per-prompt billing line, is dropped: it would defeat Ollama's prompt
cache), ``role: "system"`` turns inside ``messages``, tools whose schemas carry ``$schema``,
``thinking`` as ``enabled``, ``disabled`` or ``adaptive``, ``output_config.effort``, and fields
Ollama has no use for (``metadata``, ``context_management``, ``cache_control``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from .._json import dumps
from .._translate import (
    THINK_LEVELS,
    FieldError,
    base64_data,
    expect,
    function_tool,
    integer,
    json_type,
    number,
    validate,
)
from ..schemas import ChatRequest

logger = logging.getLogger("ollama_smart_proxy.anthropic")

#: The first system block Claude Code sends: a per-prompt line that changes every request.
BILLING_LINE = "x-anthropic-billing-header:"


@dataclass
class MessagesOptions:
    """What the encoder needs to know about the request."""

    model: str
    stream: bool
    stop_sequences: tuple[str, ...] = ()
    #: The prompt's tokens, estimated: what ``message_start`` says before Ollama counts.
    input_estimate: int = 0


def _text_blocks(value: Any, where: str, *, drop_billing: bool = False) -> str:
    """A string, or text blocks, as one text."""
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise FieldError(f"'{where}' must be a string or an array of text blocks", where)
    texts = []
    for index, block in enumerate(value):
        at = f"{where}[{index}]"
        if not isinstance(block, dict) or block.get("type", "text") != "text":
            raise FieldError(f"'{at}' must be a text block", at)
        text = expect(block.get("text"), str, f"{at}.text", "a string")
        if drop_billing and index == 0 and text.startswith(BILLING_LINE):
            continue
        texts.append(text)
    return "\n\n".join(texts)


def _tool_result_text(value: Any, where: str) -> tuple[str, list[str]]:
    if value is None:
        return "", []
    if isinstance(value, str):
        return value, []
    if not isinstance(value, list):
        raise FieldError(f"'{where}' must be a string or an array of blocks", where)
    texts: list[str] = []
    images: list[str] = []
    for index, block in enumerate(value):
        at = f"{where}[{index}]"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            texts.append(expect(block.get("text"), str, f"{at}.text", "a string"))
        elif kind == "image":
            images.append(_image(block, at))
        else:
            raise FieldError(f"unsupported block type {kind!r} in a tool result", at)
    return "\n".join(texts), images


def _image(block: dict[str, Any], where: str) -> str:
    source = block.get("source")
    if not isinstance(source, dict):
        raise FieldError(f"'{where}.source' must be an object", f"{where}.source")
    if source.get("type") != "base64":
        raise FieldError(
            "image sources other than base64 are not supported: the proxy does not fetch "
            "images; send {'type': 'base64', 'media_type': ..., 'data': ...}",
            f"{where}.source",
        )
    return base64_data(source.get("data"), f"{where}.source.data")


def _message(message: Any, where: str, names: dict[str, str], native: list[dict[str, Any]]) -> None:
    """One Anthropic message as native messages (a user turn with tool results gives one
    ``tool`` message per result)."""
    if not isinstance(message, dict):
        raise FieldError(f"'{where}' must be an object", where)
    role = expect(message.get("role"), str, f"{where}.role", "a string").lower()
    content = message.get("content")
    if role == "system":
        native.append({"role": "system", "content": _text_blocks(content, f"{where}.content")})
        return
    if role not in ("user", "assistant"):
        raise FieldError(f"'{where}.role' must be user or assistant, got {role!r}", f"{where}.role")
    if isinstance(content, str):
        native.append({"role": role, "content": content})
        return
    if not isinstance(content, list):
        raise FieldError(
            f"'{where}.content' must be a string or an array of blocks, got {json_type(content)}",
            f"{where}.content",
        )
    texts: list[str] = []
    images: list[str] = []
    thinking: list[str] = []
    calls: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    for index, block in enumerate(content):
        at = f"{where}.content[{index}]"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            texts.append(expect(block.get("text"), str, f"{at}.text", "a string"))
        elif kind == "image":
            images.append(_image(block, at))
        elif kind == "thinking":
            thinking.append(str(block.get("thinking") or ""))
        elif kind == "redacted_thinking":
            continue
        elif kind in ("tool_use", "server_tool_use"):
            name = expect(block.get("name"), str, f"{at}.name", "a string")
            arguments = block.get("input")
            if arguments is None:
                arguments = {}
            expect(arguments, dict, f"{at}.input", "an object")
            call: dict[str, Any] = {
                "function": {"index": len(calls), "name": name, "arguments": arguments}
            }
            if isinstance(block.get("id"), str):
                call["id"] = block["id"]
                names[block["id"]] = name
            calls.append(call)
        elif kind == "tool_result":
            tool_id = block.get("tool_use_id")
            text, result_images = _tool_result_text(block.get("content"), f"{at}.content")
            if block.get("is_error"):
                text = f"Error: {text}"
            result: dict[str, Any] = {"role": "tool", "content": text}
            if result_images:
                result["images"] = result_images
            if isinstance(tool_id, str):
                result["tool_call_id"] = tool_id
                if tool_id in names:
                    result["tool_name"] = names[tool_id]
            results.append(result)
        elif kind in ("document", "search_result", "web_search_tool_result", "container_upload"):
            logger.debug("dropped a %r block", kind)
        else:
            raise FieldError(f"unsupported content block type {kind!r}", at)
    native.extend(results)
    if texts or images or thinking or calls or not results:
        out: dict[str, Any] = {"role": role, "content": "\n".join(texts)}
        if images:
            out["images"] = images
        if thinking and role == "assistant":
            out["thinking"] = "\n".join(thinking)
        if calls:
            out["tool_calls"] = calls
        native.append(out)


def _tools(body: dict[str, Any]) -> list[dict[str, Any]]:
    tools = body.get("tools")
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise FieldError("'tools' must be an array", "tools")
    native: list[dict[str, Any]] = []
    dropped: list[str] = []
    for index, tool in enumerate(tools):
        where = f"tools[{index}]"
        if not isinstance(tool, dict):
            raise FieldError(f"'{where}' must be an object", where)
        kind = tool.get("type")
        if kind not in (None, "custom"):
            dropped.append(str(tool.get("name") or kind))  # server tools: web search, bash...
            continue
        native.append(function_tool(tool, where, "input_schema"))
    if dropped:
        logger.info("dropped tools Ollama cannot call: %s", ", ".join(sorted(set(dropped))))
    choice = body.get("tool_choice")
    if choice is None:
        return native
    if not isinstance(choice, dict):
        raise FieldError("'tool_choice' must be an object", "tool_choice")
    kind = choice.get("type")
    if kind in ("auto", "any"):
        return native
    if kind == "none":
        return []
    if kind == "tool":
        name = choice.get("name")
        chosen = [tool for tool in native if tool["function"]["name"] == name]
        if not chosen:
            raise FieldError(
                f"'tool_choice' names the tool {name!r}, which is not in 'tools'", "tool_choice"
            )
        return chosen
    raise FieldError("'tool_choice.type' must be auto, any, tool or none", "tool_choice.type")


def _think(body: dict[str, Any]) -> bool | str | None:
    thinking = body.get("thinking")
    effort = None
    config = body.get("output_config")
    if isinstance(config, dict) and isinstance(config.get("effort"), str):
        effort = config["effort"].lower()
    if thinking is None:
        return THINK_LEVELS.get(effort) if effort else None
    if not isinstance(thinking, dict):
        raise FieldError("'thinking' must be an object", "thinking")
    kind = thinking.get("type")
    if kind == "disabled":
        return False
    if kind == "enabled":
        level = THINK_LEVELS.get(effort) if effort else None
        return level if level not in (None, False) else True
    if kind == "adaptive":
        return THINK_LEVELS.get(effort) if effort else None  # the model decides
    raise FieldError("'thinking.type' must be enabled, disabled or adaptive", "thinking.type")


def messages_request(body: dict[str, Any]) -> tuple[ChatRequest, MessagesOptions]:
    """``/v1/messages`` body -> ``/api/chat`` request."""
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise FieldError("'model' must be a string", "model")
    max_tokens = integer(body, "max_tokens")
    if max_tokens is None or max_tokens <= 0:  # 0 or less would be unbounded at Ollama
        raise FieldError("'max_tokens' is required and must be positive", "max_tokens")
    stream = body.get("stream") or False
    expect(stream, bool, "stream", "a boolean")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise FieldError("'messages' must be an array with at least one message", "messages")
    native_messages: list[dict[str, Any]] = []
    system = body.get("system")
    if system is not None:
        text = _text_blocks(system, "system", drop_billing=True)
        if text:
            native_messages.append({"role": "system", "content": text})
    names: dict[str, str] = {}
    for index, message in enumerate(messages):
        _message(message, f"messages[{index}]", names, native_messages)
    native: dict[str, Any] = {"messages": native_messages, "stream": stream}
    if model:
        native["model"] = model
    options: dict[str, Any] = {"num_predict": max_tokens}
    for name in ("temperature", "top_p"):
        value = number(body, name)
        if value is not None:
            options[name] = value
    top_k = integer(body, "top_k")
    if top_k is not None:
        options["top_k"] = top_k
    stops = body.get("stop_sequences")
    if stops is not None:
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise FieldError("'stop_sequences' must be an array of strings", "stop_sequences")
        options["stop"] = stops
    native["options"] = options
    tools = _tools(body)
    if tools:
        native["tools"] = tools
    think = _think(body)
    if think is not None:
        native["think"] = think
    if body.get("keep_alive") is not None:
        native["keep_alive"] = body["keep_alive"]
    request = validate(ChatRequest, native)
    return request, MessagesOptions(model or "", stream, tuple(stops or ()))


def estimate_tokens(request: ChatRequest) -> int:
    """A token estimate for ``count_tokens``: about four characters a token, as a rule of
    thumb for the BPE vocabularies of local models (Ollama counts nothing before a run)."""
    characters = 0
    for message in request.messages or []:
        characters += len(message.content) + len(message.role) + 4
        for call in message.tool_calls or []:
            characters += len(call.function.name) + len(str(call.function.arguments))
    for tool in request.tools or []:
        characters += len(dumps(tool))
    return max(1, (characters + 3) // 4)


__all__ = ["BILLING_LINE", "MessagesOptions", "estimate_tokens", "messages_request"]
