"""Built-in commands, following the Ollama REPL: /set, /load, /show, /clear, /help."""

from __future__ import annotations

import re
from collections.abc import Hashable
from typing import Any

from pydantic import BaseModel, ConfigDict

from ..commands import SlashCall, split_words
from ..errors import ProxyError
from ..schemas import ChatRequest, GenerateRequest, Message, NativeRequest
from .base import Agent, Reply

INT_OPTIONS = frozenset(
    {
        "num_keep", "seed", "num_predict", "top_k", "repeat_last_n", "num_ctx", "num_batch",
        "num_gpu", "main_gpu", "num_thread", "draft_num_predict",
    }
)  # fmt: skip
FLOAT_OPTIONS = frozenset(
    {
        "top_p", "min_p", "typical_p", "temperature", "repeat_penalty", "presence_penalty",
        "frequency_penalty",
    }
)  # fmt: skip
BOOL_OPTIONS = frozenset({"use_mmap", "numa", "penalize_newline"})
LIST_OPTIONS = frozenset({"stop"})
ALL_OPTIONS = sorted(INT_OPTIONS | FLOAT_OPTIONS | BOOL_OPTIONS | LIST_OPTIONS)


def typed_value(name: str, raw: str) -> Any:
    """``"0.2"`` -> 0.2 for a float option, ``"42"`` -> 42, ``"true"`` -> True; else ValueError."""
    if name in INT_OPTIONS:
        try:
            return int(raw)
        except ValueError:
            raise ValueError(f"'{name}' takes a whole number, like 42; got '{raw}'") from None
    if name in FLOAT_OPTIONS:
        try:
            return float(raw)
        except ValueError:
            raise ValueError(f"'{name}' takes a number, like 0.7; got '{raw}'") from None
    if name in BOOL_OPTIONS:
        if raw.lower() in ("true", "1", "yes", "on"):
            return True
        if raw.lower() in ("false", "0", "no", "off"):
            return False
        raise ValueError(f"'{name}' takes true or false; got '{raw}'")
    return [raw]


def unset(request: NativeRequest, field: str) -> None:
    """Remove a field so it is not sent at all (``null`` is not the same to Ollama)."""
    setattr(request, field, None)
    request.__pydantic_fields_set__.discard(field)


def set_system(request: NativeRequest, text: str) -> None:
    """Exactly one system message, just before the last user message (one pass)."""
    if isinstance(request, GenerateRequest):
        request.system = text
        return
    if not isinstance(request, ChatRequest):
        return
    messages = [m for m in request.messages or [] if m.role != "system"]
    last_user = max((i for i, m in enumerate(messages) if m.role == "user"), default=len(messages))
    messages.insert(last_user, Message(role="system", content=text))
    request.messages = messages


class SetCommand(Agent):
    name = "set"
    summary = "Set a session variable: parameter, system, format, think"
    usage = (
        "/set parameter NAME VALUE | /set system TEXT | /set format json | /set noformat | "
        "/set think | /set nothink"
    )
    priority = 10
    session = True

    @classmethod
    def split(cls, text: str) -> tuple[list[str], str]:
        words = text.split(None, 1)
        sub = words[0].lower() if words else ""
        if sub == "system":
            return _system_split(text)
        count = {"parameter": 3, "format": 2}.get(sub, 1)
        return split_words(count)(text)

    @classmethod
    def replay_key(cls, call: SlashCall) -> Hashable | None:
        # A later /set of the same thing overrides an earlier one, so only the last is
        # applied again; stop sequences add up, so each is.
        sub = call.args[0].lower() if call.args else ""
        if sub == "parameter":
            name = call.args[1] if len(call.args) > 1 else ""
            return None if name in LIST_OPTIONS else ("parameter", name)
        return {"noformat": "format", "nothink": "think"}.get(sub, sub)

    async def on_request(self, request: NativeRequest, call: SlashCall | None) -> Reply | None:
        if call is None:
            return None
        try:
            message = self.apply(request, call)
        except ValueError as exc:
            if call.replay:
                return None
            return Reply(f"{exc}\n\nUsage: {self.usage}")
        if call.prompt or call.replay:
            return None
        return Reply(message)

    def apply(self, request: NativeRequest, call: SlashCall) -> str:
        if not call.args:
            raise ValueError("What should I set?")
        sub = call.args[0].lower()
        if sub == "parameter":
            if len(call.args) < 3:
                raise ValueError("/set parameter needs a NAME and a VALUE")
            name, raw = call.args[1], call.args[2]
            if name not in ALL_OPTIONS:
                raise ValueError(
                    f"Unknown parameter '{name}'. Parameters: {', '.join(ALL_OPTIONS)}"
                )
            value = typed_value(name, raw)
            options = request.options if request.options is not None else {}
            current = options.get(name)
            if name in LIST_OPTIONS and isinstance(current, list):
                current.extend(value)  # in place: many replayed stops stay linear
            else:
                options[name] = value
            request.options = options
            return f"Set parameter '{name}' to '{raw}'"
        if sub == "system":
            text = call.args[1] if len(call.args) > 1 else ""
            if not text:
                raise ValueError("/set system needs the text of the system message")
            set_system(request, text)
            return "Set system message."
        if sub == "format":
            if len(call.args) < 2 or call.args[1].lower() != "json":
                raise ValueError("Only /set format json is supported")
            request.format = "json"
            return "Set format to 'json' mode."
        if sub == "noformat":
            unset(request, "format")
            return "Disabled format."
        if sub in ("think", "nothink"):
            request.think = sub == "think"
            return "Set 'think' mode." if sub == "think" else "Set 'nothink' mode."
        raise ValueError(f"Unknown /set option '{sub}'")


def _system_split(text: str) -> tuple[list[str], str]:
    """``/set system`` takes the rest of the first line; the next lines are the prompt."""
    line, newline, after = text.partition("\n")
    rest = line.split(None, 1)
    return ["system", rest[1].strip() if len(rest) > 1 else ""], after.strip() if newline else ""


class LoadCommand(Agent):
    name = "load"
    summary = "Switch to another model for this conversation (pulled if allowed)"
    usage = "/load MODEL"
    priority = 20
    session = True
    arity = 1

    @classmethod
    def replay_key(cls, call: SlashCall) -> Hashable | None:
        return "model"  # the last /load wins

    @classmethod
    def took_effect(cls, answer: str) -> bool:
        return answer.startswith("Loaded '")  # not "Could not load", not "Usage:"

    async def on_request(self, request: NativeRequest, call: SlashCall | None) -> Reply | None:
        if call is None:
            return None
        if not call.args:
            return None if call.replay else Reply(f"Usage: {self.usage}")
        model = call.args[0]
        if call.replay:
            request.model = model  # loaded when the command was typed: the model is used
            return None
        # Load it for real, the way any request would reach it: through the model loader
        # below (alias, auto-pull, keep_alive policy), with an empty generate request.
        try:
            status, answer = await self.call_ollama("POST", "/api/generate", {"model": model})
        except ProxyError as exc:
            return Reply(_not_loaded(model, exc.message))
        if status == 400 and "does not support generate" in str(answer):
            status, answer = await self.call_ollama("POST", "/api/embed", {"model": model})
        if status != 200:  # the answer names the model the request had, not this one
            error = answer.get("error") if isinstance(answer, dict) else answer
            return Reply(_not_loaded(model, str(error or f"HTTP {status}")))
        request.model = model
        if call.prompt:
            return None
        return Reply(f"Loaded '{model}'")


def _not_loaded(model: str, reason: str) -> str:
    if "auto-pull" in reason and "not installed" in reason:
        return f"'{model}' is not installed and auto-pull does not allow it."
    return f"Could not load '{model}': {reason}"


class ShowCommand(Agent):
    name = "show"
    summary = "Show information about the current model"
    usage = "/show [info|parameters|template|system|license|modelfile]"
    priority = 30
    arity = 1

    async def on_request(self, request: NativeRequest, call: SlashCall | None) -> Reply | None:
        if call is None or call.replay:
            return None
        what = (call.args[0] if call.args else "info").lower()
        model = request.model or ""
        status, shown = await self.call_ollama("POST", "/api/show", {"model": model})
        if status != 200 or not isinstance(shown, dict):
            error = shown.get("error") if isinstance(shown, dict) else shown
            return Reply(f"Could not show '{model}': {error or f'HTTP {status}'}")
        if what == "info":
            details = shown.get("details") or {}
            lines = [f"Model: {model}"]
            for key, label in (
                ("family", "architecture"),
                ("parameter_size", "parameters"),
                ("quantization_level", "quantization"),
            ):
                if details.get(key):
                    lines.append(f"  {label:<14}{details[key]}")
            if shown.get("capabilities"):
                lines.append(f"  {'capabilities':<14}{', '.join(shown['capabilities'])}")
            return Reply("\n".join(lines))
        if what in ("parameters", "template", "system", "license", "modelfile"):
            value = shown.get(what)
            return Reply(str(value) if value else f"No {what} is set for '{model}'.")
        return Reply(f"Usage: {self.usage}")


class ClearCommand(Agent):
    name = "clear"
    summary = "Forget the conversation before this message"
    usage = "/clear"
    priority = 5

    async def on_request(self, request: NativeRequest, call: SlashCall | None) -> Reply | None:
        if call is None or call.prompt:
            return None
        return Reply("Cleared session context.")


class CommandInfo(BaseModel):
    """One line of ``/help``."""

    name: str
    summary: str = ""
    usage: str = ""


class HelpOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    #: The commands to list (the proxy sets every enabled agent's; alone: only /help).
    commands: list[CommandInfo] | None = None


class HelpCommand(Agent):
    name = "help"
    aliases = ("?",)
    summary = "List the available commands"
    usage = "/help"
    priority = 0
    Options = HelpOptions

    async def on_request(self, request: NativeRequest, call: SlashCall | None) -> Reply | None:
        if call is None or call.replay:
            return None
        listed = self.options.commands or [
            CommandInfo(name=self.name, summary=self.summary, usage=self.usage)
        ]
        lines = ["Available commands:"]
        for info in listed:
            name, summary, usage = info.name, info.summary, info.usage
            lines.append(f"  {self.prefix}{name:<12} {summary}")
            usage = re.sub(r"(^|\| )/", lambda m: m.group(1) + self.prefix, usage)
            if usage and usage != f"{self.prefix}{name}":
                lines.append(f"  {'':<13} usage: {usage}")
        lines.append("")
        lines.append("Commands start a message; the rest of the message goes to the model.")
        return Reply("\n".join(lines))


BUILTIN_AGENTS: tuple[type[Agent], ...] = (
    HelpCommand,
    ClearCommand,
    SetCommand,
    LoadCommand,
    ShowCommand,
)


__all__ = [
    "ALL_OPTIONS",
    "BUILTIN_AGENTS",
    "ClearCommand",
    "CommandInfo",
    "HelpCommand",
    "LoadCommand",
    "SetCommand",
    "ShowCommand",
    "set_system",
    "typed_value",
    "unset",
]
