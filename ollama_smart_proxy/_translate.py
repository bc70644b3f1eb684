"""What every dialect's translation shares: typed field access that fails with a 400 naming
the field, and the values several APIs spell alike (reasoning effort, data-URL images,
arguments as JSON)."""

from __future__ import annotations

import re
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from ._json import json_type, parse_body
from .errors import FieldError
from .schemas import describe_validation_error

_Model = TypeVar("_Model", bound=BaseModel)

_DATA_URL_HEAD = re.compile(r"data:(image/(?:jpeg|jpg|png|webp))?;base64", re.I)
_BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")
#: How much of each end of a base64 string is checked here; Ollama decodes all of it (and
#: answers a 400 for a bad byte, passed on in the client's dialect).
_CHECKED = 4096

#: reasoning effort (OpenAI's, Anthropic's) -> native ``think``.
THINK_LEVELS: dict[str, bool | str] = {
    "none": False,
    "minimal": "low",
    "low": "low",
    "medium": "medium",
    "high": "high",
    "max": "max",
    "xhigh": "max",
    "ultra": "max",
}


def expect(value: Any, kind: type | tuple[type, ...], param: str, what: str) -> Any:
    """``value`` if it is of ``kind`` (a bool is not a number), else a 400 naming ``param``."""
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        if isinstance(kind, tuple) and bool in kind and isinstance(value, bool):
            return value
        raise FieldError(f"'{param}' must be {what}, got {json_type(value)}", param)
    return value


def number(body: dict[str, Any], name: str, param: str | None = None) -> float | int | None:
    """A number field (``None`` when absent or null)."""
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        param = param or name
        raise FieldError(f"'{param}' must be a number, got {json_type(value)}", param)
    return value


def integer(body: dict[str, Any], name: str, param: str | None = None) -> int | None:
    """An integer field (``None`` when absent or null)."""
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        param = param or name
        raise FieldError(f"'{param}' must be an integer, got {json_type(value)}", param)
    return value


def think_level(effort: Any, param: str) -> bool | str:
    """A reasoning effort as native ``think``."""
    if not isinstance(effort, str) or effort.lower() not in THINK_LEVELS:
        raise FieldError(
            f'invalid reasoning value: "{effort}" (must be "minimal", "low", "medium", '
            '"high", "xhigh", "ultra", "max", or "none")',
            param,
        )
    return THINK_LEVELS[effort.lower()]


def image_data(url: Any, param: str) -> str:
    """The base64 data of an image given as a data URL (``{"url": ...}`` too)."""
    if isinstance(url, dict):
        url = url.get("url")
    if not isinstance(url, str):
        raise FieldError("invalid message format: an image needs a url string", param)
    if url.startswith(("http://", "https://")):
        raise FieldError(
            "image URLs are not supported: send the image inline as a base64 data URL "
            "(data:image/png;base64,...); the proxy does not fetch remote images",
            param,
        )
    comma = url.find(",", 0, 64)
    if comma < 0 or _DATA_URL_HEAD.fullmatch(url, 0, comma) is None:
        raise FieldError(
            "invalid image input: use a data:image/{jpeg,png,webp};base64,... URL", param
        )
    return base64_data(url[comma + 1 :].strip(), param)  # the one copy: the native string


def base64_data(data: Any, param: str) -> str:
    """``data`` if it looks like base64, else a 400.

    Its length and both ends are checked here, without decoding a 64 MiB image (which held
    the event loop 0.7 s): Ollama decodes it, and a bad byte inside is its 400, passed on.
    """
    if not isinstance(data, str):
        raise FieldError(f"'{param}' must be base64 data (a string)", param)
    if len(data) <= 2 * _CHECKED:
        ends_ok = _BASE64.fullmatch(data) is not None
    else:
        ends_ok = (
            _BASE64.fullmatch(data, 0, _CHECKED) is not None
            and _BASE64.fullmatch(data, len(data) - _CHECKED) is not None
        )
    if not ends_ok or len(data) % 4 or not data.isascii():
        raise FieldError("invalid image input: the base64 data is malformed", param)
    return data


def function_tool(tool: dict[str, Any], where: str, schema_key: str) -> dict[str, Any]:
    """A native function tool from a dialect's flat one: ``name``, ``description`` and its
    JSON schema under ``schema_key`` (``parameters``, ``input_schema``)."""
    name = expect(tool.get("name"), str, f"{where}.name", "a string")
    function: dict[str, Any] = {"name": name}
    if isinstance(tool.get("description"), str):
        function["description"] = tool["description"]
    schema = tool.get(schema_key)
    if schema is not None:
        function["parameters"] = expect(schema, dict, f"{where}.{schema_key}", "an object")
    return {"type": "function", "function": function}


def json_arguments(arguments: Any, param: str) -> dict[str, Any]:
    """Tool-call arguments (a JSON object, or one encoded as a string) as an object."""
    if arguments is None or arguments == "":
        return {}
    if isinstance(arguments, str):
        try:
            arguments = parse_body(arguments.encode())
        except ValueError:
            arguments = None
    if not isinstance(arguments, dict):
        raise FieldError(
            "invalid tool call arguments: must be a JSON object encoded as a string", param
        )
    return arguments


def validate(model: type[_Model], native: dict[str, Any]) -> _Model:
    """The native request a translation built, validated (a 400 naming the field)."""
    try:
        return model.model_validate(native)
    except ValidationError as exc:
        raise FieldError(describe_validation_error(exc)) from None


__all__ = [
    "THINK_LEVELS",
    "FieldError",
    "base64_data",
    "expect",
    "function_tool",
    "image_data",
    "integer",
    "json_arguments",
    "json_type",
    "number",
    "think_level",
    "validate",
]
