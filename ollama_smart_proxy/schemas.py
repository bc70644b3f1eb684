"""Typed native request bodies for ``/api/chat``, ``/api/generate`` and ``/api/embed``.

The models are strict where Ollama is strict (a string stays a string) and keep every
field they do not know (``extra="allow"``), so nothing a newer Ollama adds is lost on the
way through. Serialise with :func:`dump_request`, which writes back only what was set.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ._json import parse_body
from .errors import RequestError

_CONFIG = ConfigDict(extra="allow", strict=True, populate_by_name=True)

Think = bool | str
Format = str | dict[str, Any]
KeepAlive = int | float | str


class ToolCallFunction(BaseModel):
    model_config = _CONFIG

    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)
    index: int | None = None


class ToolCall(BaseModel):
    model_config = _CONFIG

    function: ToolCallFunction
    id: str | None = None


class Message(BaseModel):
    """One chat message, as Ollama's ``api.Message``."""

    model_config = _CONFIG

    role: str
    content: str = ""
    thinking: str | None = None
    images: list[str] | None = None
    tool_calls: list[ToolCall] | None = None
    tool_name: str | None = None
    tool_call_id: str | None = None


class _ModelRequest(BaseModel):
    model_config = _CONFIG

    model: str | None = None
    options: dict[str, Any] | None = None
    keep_alive: KeepAlive | None = None


class _CompletionRequest(_ModelRequest):
    stream: bool | None = None
    format: Format | None = None
    think: Think | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None

    @property
    def streaming(self) -> bool:
        """Whether Ollama will stream: an absent ``stream`` means true."""
        return self.stream is not False


class ChatRequest(_CompletionRequest):
    """Body of ``POST /api/chat``."""

    messages: list[Message] | None = None
    tools: list[dict[str, Any]] | None = None


class GenerateRequest(_CompletionRequest):
    """Body of ``POST /api/generate``."""

    prompt: str | None = None
    suffix: str | None = None
    system: str | None = None
    template: str | None = None
    images: list[str] | None = None
    raw: bool | None = None
    context: list[int] | None = None


class EmbedRequest(_ModelRequest):
    """Body of ``POST /api/embed``."""

    input: str | list[str] | None = None
    truncate: bool | None = None
    dimensions: int | None = None


class EmbeddingsRequest(_ModelRequest):
    """Body of ``POST /api/embeddings`` (the legacy endpoint)."""

    prompt: str | None = None


class ShowRequest(BaseModel):
    """Body of ``POST /api/show`` (``name`` is the deprecated spelling of ``model``)."""

    model_config = _CONFIG

    model: str | None = None
    name: str | None = None
    verbose: bool | None = None


#: What agents see: a chat or a generate request.
NativeRequest = ChatRequest | GenerateRequest
#: Every body the proxy parses: each names a model.
ModelRequest = ChatRequest | GenerateRequest | EmbedRequest | EmbeddingsRequest | ShowRequest

REQUEST_TYPES: dict[str, type[ModelRequest]] = {
    "chat": ChatRequest,
    "generate": GenerateRequest,
    "embed": EmbedRequest,
    "embeddings": EmbeddingsRequest,
    "show": ShowRequest,
}


def describe_validation_error(exc: ValidationError) -> str:
    """One readable sentence that names the first bad field."""
    errors = exc.errors(include_url=False)
    parts = []
    for error in errors[:3]:
        if error["type"] == "json_invalid":
            return f"invalid JSON in request body: {error['ctx'].get('error', error['msg'])}"
        loc = ".".join(str(item) for item in error["loc"] if not _is_union_tag(item))
        msg = error["msg"]
        parts.append(f"{loc}: {msg}" if loc else msg)
    more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
    return "invalid request body: " + "; ".join(dict.fromkeys(parts)) + more


def _is_union_tag(item: object) -> bool:
    # pydantic puts the union member tried into the location ("str", "dict[str,any]").
    return isinstance(item, str) and (
        item in {"str", "int", "float", "bool"} or item.startswith(("dict[", "list["))
    )


def go_fold(name: str) -> str:
    """``name`` as Go's ``encoding/json`` folds an object key to match it to a struct field:
    ASCII letters upper-cased, any other letter replaced by the smallest of its simple case
    folds (the long s, U+017F, is ``S``; the Kelvin sign, U+212A, is ``K``). Ollama matches keys to fields so."""
    return "".join(_fold_char(char) for char in name)


def _fold_char(char: str) -> str:
    if char < "\x80":
        return char.upper()
    orbit = {char}
    todo = [char]
    while todo:
        current = todo.pop()
        for other in (current.upper(), current.lower(), current.casefold()):
            if len(other) == 1 and other not in orbit:
                orbit.add(other)
                todo.append(other)
    return min(orbit)


_FOLDED_FIELDS: dict[type[BaseModel], dict[str, str]] = {}


def _folded_fields(model: type[BaseModel]) -> dict[str, str]:
    folded = _FOLDED_FIELDS.get(model)
    if folded is None:
        folded = _FOLDED_FIELDS[model] = {go_fold(name): name for name in model.model_fields}
    return folded


def _colliding_key(item: BaseModel) -> tuple[str, str] | None:
    extra = item.__pydantic_extra__
    if not extra:
        return None
    fields = _folded_fields(type(item))
    for key in extra:
        field = fields.get(go_fold(key))
        if field is not None:
            return key, field
    return None


def check_ollama_reads_what_we_read(request: BaseModel) -> None:
    """400 for a body in which Ollama would read a field other than the one we checked.

    Go's decoder matches object keys to fields without regard to case (and the last match
    wins), so ``{"model": "llama3.2", "MODEL": "qwen3"}`` is ``llama3.2`` to us and
    ``qwen3`` to Ollama. Any key that folds to a field of ours but is not spelled as it is
    refused, in the request and in each message and tool call. (Keys spelled twice the same
    way agree: both take the last.)
    """
    found = _colliding_key(request)
    if found is None and isinstance(request, ChatRequest) and request.messages:
        for message in request.messages:
            if message.__pydantic_extra__:
                found = _colliding_key(message)
            for call in message.tool_calls or ():
                found = found or _colliding_key(call) or _colliding_key(call.function)
            if found is not None:
                break
    if found is not None:
        key, field = found
        raise RequestError(
            f"the request body has the key {key!r}, which Ollama reads as {field!r} (it "
            f"matches keys without regard to case): send {field!r} once, spelled so",
            param=key,
        )


def parse_json_body(body: bytes) -> Any:
    """Parse a client's JSON body once; 400 for bad JSON."""
    try:
        return parse_body(body)
    except ValueError as exc:
        raise RequestError(f"invalid JSON in request body: {exc}") from None


def dump_request(request: BaseModel) -> bytes:
    """Serialise a request once, with only the fields that were set (extras included)."""
    return request.model_dump_json(exclude_unset=True, by_alias=True).encode()


__all__ = [
    "REQUEST_TYPES",
    "ChatRequest",
    "EmbedRequest",
    "EmbeddingsRequest",
    "GenerateRequest",
    "Message",
    "ModelRequest",
    "NativeRequest",
    "ShowRequest",
    "ToolCall",
    "ToolCallFunction",
    "check_ollama_reads_what_we_read",
    "describe_validation_error",
    "dump_request",
    "go_fold",
    "parse_json_body",
]
