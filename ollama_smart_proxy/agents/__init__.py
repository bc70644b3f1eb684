"""Agents: request-rewriting ASGI middleware activated by slash commands.

from ollama_smart_proxy.agents import Agent, SlashCall, Reply
"""

from __future__ import annotations

from ._commands import CommandSpec, SlashCall, parse, prepare, split_words
from .base import Agent, NoOptions, Reply, chunk_text, send_reply, text_chunk, with_text
from .builtins import (
    BUILTIN_AGENTS,
    ClearCommand,
    HelpCommand,
    LoadCommand,
    SetCommand,
    ShowCommand,
)
from .registry import ENTRY_POINT_GROUP, AgentRegistry, AgentSpec, CommandParser, LoadError

__all__ = [
    "BUILTIN_AGENTS",
    "ENTRY_POINT_GROUP",
    "Agent",
    "AgentRegistry",
    "AgentSpec",
    "ClearCommand",
    "CommandParser",
    "CommandSpec",
    "HelpCommand",
    "LoadCommand",
    "LoadError",
    "NoOptions",
    "Reply",
    "SetCommand",
    "ShowCommand",
    "SlashCall",
    "chunk_text",
    "parse",
    "prepare",
    "send_reply",
    "split_words",
    "text_chunk",
    "with_text",
]
