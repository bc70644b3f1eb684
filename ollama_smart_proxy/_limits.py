"""``BodyLimits``: what every entry bounds in a model request, checked in one place.

The body's bytes and its JSON objects and arrays are counted as the body arrives; its
messages (or input items) once it is parsed, before the (much dearer) validation; the
longest line of the answer is the response pipeline's bound.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypedDict

from pydantic import ValidationError

from ._http import DEFAULT_MAX_BODY, read_body
from ._json import json_type
from ._ndjson import DEFAULT_MAX_LINE_BYTES
from .errors import RequestError
from .schemas import (
    REQUEST_TYPES,
    ModelRequest,
    count_containers,
    describe_validation_error,
    parse_json_body,
    too_many_messages,
    too_many_objects,
)
from .types import Message, Receive, Scope

#: The fewest bytes a message takes in a JSON array: ``{"role":""},``.
_MIN_MESSAGE_BYTES = 12


class LimitOptions(TypedDict, total=False):
    """The keyword options every entry layer takes (``**limits``)."""

    max_body_bytes: int
    max_messages: int | None
    max_json_objects: int | None
    max_line_bytes: int


@dataclass(frozen=True, slots=True)
class BodyLimits:
    """The body's bytes, its messages, its JSON objects and arrays, and the longest line
    the answer may carry."""

    max_body_bytes: int = DEFAULT_MAX_BODY
    max_messages: int | None = None
    max_json_objects: int | None = None
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES

    def __post_init__(self) -> None:
        if self.max_body_bytes <= 0 or self.max_line_bytes <= 0:
            raise ValueError("limits must be positive")
        for name in ("max_messages", "max_json_objects"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive (or None: no limit)")

    async def read(self, scope: Scope, receive: Receive) -> bytes:
        """Read the whole body, refusing (413) more bytes than ``max_body_bytes`` and more
        JSON objects and arrays than ``max_json_objects``.

        The objects are counted on each piece as it arrives, so counting never holds the
        event loop for more than one read, and a flood is refused before the rest of it is
        read.
        """
        limit = self.max_json_objects
        if limit is None:
            return await read_body(scope, receive, self.max_body_bytes)
        counted = 0

        async def counting() -> Message:
            nonlocal counted
            message = await receive()
            counted += count_containers(message.get("body", b""))
            if counted > limit:
                raise too_many_objects(limit)
            return message

        return await read_body(scope, counting, self.max_body_bytes)

    def parse_object(self, raw: bytes) -> dict[str, Any]:
        """A dialect's JSON object body, parsed once, or a 400 that says what is wrong."""
        if not raw.strip():
            raise RequestError("the request body is empty; send a JSON object")
        body = parse_json_body(raw)
        if not isinstance(body, dict):
            raise RequestError("the request body must be a JSON object")
        return body

    def check_messages(self, items: object, param: str = "messages") -> None:
        """413 for a list of messages (or input items) longer than ``max_messages``."""
        limit = self.max_messages
        if limit is not None and isinstance(items, list) and len(items) > limit:
            raise too_many_messages(len(items), limit, param)

    def parse_native(self, kind: str, raw: bytes) -> ModelRequest:
        """A native request body (``kind``: chat, generate, embed, embeddings, show), parsed
        and validated once; a 400 (413) that names what is wrong."""
        model = REQUEST_TYPES[kind]
        limit = self.max_messages
        if raw[:1] == b"{" and (limit is None or len(raw) < _MIN_MESSAGE_BYTES * limit):
            # A body too small to break a limit: pydantic parses and validates in one pass.
            try:
                return model.model_validate_json(raw)
            except ValidationError as exc:
                raise RequestError(describe_validation_error(exc)) from None
        if not raw.strip():
            raise RequestError("missing request body")
        value = parse_json_body(raw)
        if value is None:  # Ollama reads `null` as an empty object
            return model()
        if not isinstance(value, dict):
            raise RequestError(f"request body must be a JSON object, not {json_type(value)}")
        self.check_messages(value.get("messages"))
        try:
            return model.model_validate(value)
        except ValidationError as exc:
            raise RequestError(describe_validation_error(exc)) from None


__all__ = ["BodyLimits", "LimitOptions"]
