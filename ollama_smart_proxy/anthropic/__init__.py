"""Anthropic's Messages API (what Claude Code and the Anthropic SDKs speak), over Ollama."""

from __future__ import annotations

from .middleware import AnthropicCompat
from .render import MessagesEncoder
from .translate import MessagesOptions, estimate_tokens, messages_request

__all__ = [
    "AnthropicCompat",
    "MessagesEncoder",
    "MessagesOptions",
    "estimate_tokens",
    "messages_request",
]
