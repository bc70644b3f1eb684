"""Slash commands: parsing the latest user message and cleaning the history (DESIGN.md §4).

A command is the prefix followed by a *registered* word, then whitespace or the end, at the
start of a user message. Each command says how much of the text it takes (its ``arity``:
that many words, or the rest of the first line); what follows is the prompt. Only the
latest user message is acted on; earlier messages are cleaned the same way, and earlier
*session* commands are re-applied, so the proxy stays stateless.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from ..schemas import ChatRequest, GenerateRequest, Message


@dataclass
class SlashCall:
    """One parsed command.

    ``name`` is the registered word (``"set"``), ``args`` the words it took, ``prompt`` the
    text after it (``""`` for a command-only message), ``replay`` is true for a session
    command found earlier in the history and applied again.
    """

    name: str
    args: list[str] = field(default_factory=list)
    prompt: str = ""
    text: str = ""
    replay: bool = False

    @property
    def arg(self) -> str:
        """The arguments as one string."""
        return " ".join(self.args)


#: How a command splits its text: ``(args, prompt)``.
Splitter = Callable[[str], tuple[list[str], str]]


@dataclass(frozen=True)
class CommandSpec:
    """What the parser needs to know of a registered command."""

    name: str
    split: Splitter
    session: bool = False


def split_words(count: int | None) -> Splitter:
    """A splitter taking ``count`` words (``None``: the rest of the first line as one arg)."""

    def split(text: str) -> tuple[list[str], str]:
        line, newline, after = text.partition("\n")
        if count is None:
            rest = line.strip()
            return ([rest] if rest else []), after.strip() if newline else ""
        words = line.split(None, count)
        args, tail = words[:count], words[count:]
        prompt = tail[0] if tail else ""
        if newline:
            prompt = f"{prompt}\n{after}" if prompt else after
        return args, prompt.strip()

    return split


def parse(text: str, prefix: str, commands: Mapping[str, CommandSpec]) -> SlashCall | None:
    """Parse ``text`` if it starts with a registered command, else ``None``."""
    stripped = text.lstrip()
    if not stripped.startswith(prefix):
        return None
    body = stripped[len(prefix) :]
    end = 0
    while end < len(body) and not body[end].isspace():
        end += 1
    word = body[:end]
    spec = commands.get(word) or commands.get(word.lower())
    if spec is None:
        return None
    args, prompt = spec.split(body[end:].lstrip(" \t"))
    consumed = len(stripped) - len(prompt) if prompt else len(stripped)
    return SlashCall(spec.name, args, prompt, stripped[:consumed].rstrip())


def prepare(
    request: ChatRequest | GenerateRequest,
    prefix: str,
    commands: Mapping[str, CommandSpec],
) -> tuple[SlashCall | None, list[SlashCall]]:
    """Parse the latest user message and clean the history, in place.

    Returns the current command (or ``None``) and the session commands to re-apply, in
    history order. Command text is removed from every user message; a command-only message
    and the assistant acknowledgement after it are dropped; ``/clear`` drops what came before.
    """
    current, replays, _ = prepare_request(request, prefix, commands)
    return current, replays


def prepare_request(
    request: ChatRequest | GenerateRequest,
    prefix: str,
    commands: Mapping[str, CommandSpec],
) -> tuple[SlashCall | None, list[SlashCall], bool]:
    """:func:`prepare`, also saying whether the request was changed."""
    if isinstance(request, GenerateRequest):
        call = parse(request.prompt or "", prefix, commands)
        if call is not None:
            request.prompt = call.prompt
        return call, [], call is not None
    messages = request.messages or []
    last_user = max((i for i, m in enumerate(messages) if m.role == "user"), default=-1)
    if last_user < 0:
        return None, [], False
    kept: list[Message] = []
    replays: list[SlashCall] = []
    touched = False
    skip_ack = False
    current: SlashCall | None = None
    for index, message in enumerate(messages):
        if skip_ack and message.role == "assistant":
            skip_ack = False
            continue
        skip_ack = False
        if message.role != "user":
            kept.append(message)
            continue
        call = parse(message.content, prefix, commands)
        if call is None:
            kept.append(message)
            continue
        touched = True
        if index == last_user:
            current = call
        elif call.name == "clear":
            kept = [m for m in kept if m.role == "system"]
            replays = []
        elif commands[call.name].session:
            call.replay = True
            replays.append(call)
        if call.prompt or index == last_user:
            message.content = call.prompt
            kept.append(message)
        else:
            skip_ack = True
    if current is not None and current.name == "clear":
        kept = [m for m in kept if m.role == "system" or m is messages[last_user]]
        replays = []
    if touched:
        request.messages = kept
    return current, replays, touched
