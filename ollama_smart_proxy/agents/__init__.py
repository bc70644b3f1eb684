"""Agents: request-rewriting ASGI middleware activated by slash commands.

What a plugin author needs, in one place::

    from ollama_smart_proxy.agents import Agent, Reply, SlashCall, chunk_text, with_text

The built-in commands are in :mod:`.builtins`; discovery and ordering in :mod:`.registry`.
"""

from __future__ import annotations

from ..commands import SlashCall
from ..encoding import Chunk
from ..exchange import text_chunk
from ..schemas import ChatRequest, GenerateRequest, Message, NativeRequest
from .base import Agent, NoOptions, Reply, chunk_text, with_text
from .builtins import set_system, unset

__all__ = [
    "Agent",
    "ChatRequest",
    "Chunk",
    "GenerateRequest",
    "Message",
    "NativeRequest",
    "NoOptions",
    "Reply",
    "SlashCall",
    "chunk_text",
    "set_system",
    "text_chunk",
    "unset",
    "with_text",
]
