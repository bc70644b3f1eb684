"""Slash commands: parsing the latest user message and cleaning the history (DESIGN.md §4).

A command is the prefix followed by a *registered* word, then whitespace or the end, at the
start of a user message. Each command says how much of the text it takes (its arity: that
many words, or the rest of the first line); what follows is the prompt. Only the latest
user message is acted on; earlier messages are cleaned the same way, and earlier *session*
commands are re-applied, so the proxy stays stateless.

Everything here is linear in the number of messages: one pass over the history, ``/clear``
remembered as a position, and replays that override each other (``/set system`` twice)
collapsed to the last one before any agent sees them.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field, replace

from .schemas import ChatRequest, GenerateRequest, Message, ModelRequest


@dataclass(frozen=True)
class SlashCall:
    """One parsed command, as it was typed (read-only).

    ``name`` is the registered word (``"set"``), ``args`` the words it took, ``prompt`` the
    text after it (``""`` for a command-only message), ``text`` the command as typed,
    ``replay`` is true for a session command found earlier in the history and applied again.
    What the model will see is the request's own text, which an agent reads and changes as
    ``self.prompt``.
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
#: What a replayed command overrides: later replays with the same key replace earlier ones
#: (``None``: the replay never replaces another).
ReplayKey = Callable[[SlashCall], Hashable | None]


@dataclass(frozen=True)
class CommandSpec:
    """What the parser needs to know of a registered command."""

    name: str
    split: Splitter
    session: bool = False
    replay_key: ReplayKey | None = None
    #: Whether a session command took effect, from the proxy's answer to it (the assistant
    #: message after a command-only message): one that did not is not replayed.
    took_effect: Callable[[str], bool] | None = None


@dataclass
class ParsedCommands:
    """What :func:`parse_commands` found: the current command, the replays, and whether the
    request changed."""

    current: SlashCall | None = None
    replays: list[SlashCall] = field(default_factory=list)
    changed: bool = False


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


def parse_commands(
    request: ModelRequest, prefix: str, commands: Mapping[str, CommandSpec]
) -> ParsedCommands:
    """Parse the latest user message and clean the history, in place.

    Command text is removed from every user message; a command-only message and the
    assistant acknowledgement after it are dropped; ``/clear`` drops what came before (but
    system messages). Returns the current command and the session commands to re-apply, in
    history order.
    """
    if isinstance(request, GenerateRequest):
        call = parse(request.prompt or "", prefix, commands)
        if call is not None:
            request.prompt = call.prompt
        return ParsedCommands(call, [], call is not None)
    if not isinstance(request, ChatRequest) or not request.messages:
        return ParsedCommands()
    messages = request.messages
    last_user = -1
    for index in range(len(messages) - 1, -1, -1):
        if messages[index].role == "user":
            last_user = index
            break
    if last_user < 0:
        return ParsedCommands()
    for message in messages:
        if message.role == "user" and message.content.lstrip().startswith(prefix):
            break
    else:
        return ParsedCommands()  # no message holds a command: nothing to clean
    kept: list[Message] = []
    replays: list[SlashCall] = []
    found = ParsedCommands()
    cleared_at = -1  # kept[:cleared_at] was before the last /clear: only system messages stay
    skip_ack = False
    acked: SlashCall | None = None  # the session command the next assistant message answers
    for index, message in enumerate(messages):
        if skip_ack and message.role == "assistant":
            skip_ack = False
            check = commands[acked.name].took_effect if acked is not None else None
            if acked is not None and check is not None and not check(message.content):
                replays = [r for r in replays if r is not acked]  # it failed: not replayed
            acked = None
            continue
        skip_ack = False
        acked = None
        if message.role != "user":
            kept.append(message)
            continue
        call = parse(message.content, prefix, commands)
        if call is None:
            kept.append(message)
            continue
        found.changed = True
        if index == last_user:
            found.current = call
        elif call.name == "clear":
            cleared_at = len(kept)
            replays = []
        elif commands[call.name].session:
            replays.append(replace(call, replay=True))
            acked = replays[-1]
        if call.prompt or index == last_user:
            message.content = call.prompt
            kept.append(message)
            acked = None
        else:
            skip_ack = True
    if found.current is not None and found.current.name == "clear":
        current = messages[last_user]
        kept = [m for m in kept if m.role == "system" or m is current]
        replays = []
    elif cleared_at >= 0:
        kept = [m for m in kept[:cleared_at] if m.role == "system"] + kept[cleared_at:]
    if found.changed:
        request.messages = kept
    found.replays = _collapse(replays, commands) if replays else []
    return found


def _collapse(replays: list[SlashCall], commands: Mapping[str, CommandSpec]) -> list[SlashCall]:
    """Keep only the last replay of each key, in history order."""
    last: dict[Hashable, int] = {}
    for index, call in enumerate(replays):
        key_of = commands[call.name].replay_key
        key = key_of(call) if key_of is not None else None
        if key is not None:
            last[(call.name, key)] = index
    if not last:
        return replays
    keep = set(last.values())
    out = []
    for index, call in enumerate(replays):
        key_of = commands[call.name].replay_key
        key = key_of(call) if key_of is not None else None
        if key is None or index in keep:
            out.append(call)
    return out


__all__ = [
    "CommandSpec",
    "ParsedCommands",
    "ReplayKey",
    "SlashCall",
    "Splitter",
    "parse",
    "parse_commands",
    "split_words",
]
