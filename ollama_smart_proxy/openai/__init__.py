"""The OpenAI-compatible API: ``OpenAICompat`` middleware, translation and rendering."""

from __future__ import annotations

from .middleware import OpenAICompat
from .translate import OpenAIRequestError, chat_request, completion_request, embedding_request

__all__ = [
    "OpenAICompat",
    "OpenAIRequestError",
    "chat_request",
    "completion_request",
    "embedding_request",
]
