"""`/redact`: mask e-mail addresses and secret-looking numbers and keys in the answer.

A response-side plugin. It works per chunk while the answer streams and stays correct when
a match is split across chunks: it holds back only what follows the last white space that
no secret can span, until the next chunk shows whether it is part of one.
"""

from __future__ import annotations

import re

from pydantic import BaseModel

from ollama_smart_proxy.agents import (
    Agent,
    Chunk,
    NativeRequest,
    Reply,
    SlashCall,
    chunk_text,
    with_text,
)

SECRET = re.compile(
    r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+"  # e-mail addresses
    r"|\b(?:sk|pk|rk|ghp|gho|ghs|xox[abprs])[-_][A-Za-z0-9_-]{12,}"  # API keys
    r"|(?<![\w-])\d(?:[ -]?\d){11,}(?![\w-])"  # 12+ digits, maybe grouped: cards, accounts
)


class Options(BaseModel):
    mask: str = "[redacted]"


def redact(text: str, mask: str = "[redacted]") -> str:
    return SECRET.sub(mask, text)


def safe_end(text: str) -> int:
    """Where ``text`` can be cut without changing what matches: after the last white space
    that no match can span (one not preceded by a digit, since only digit groups contain
    spaces). Everything after it may still grow into a secret and is held back."""
    for index in range(len(text) - 1, -1, -1):
        if text[index].isspace() and (index == 0 or not text[index - 1].isdigit()):
            return index + 1
    return 0


class Redact(Agent):
    name = "redact"
    summary = "Mask e-mail addresses, keys and long numbers in the answers"
    usage = "/redact"
    priority = 60
    session = True  # `/redact` alone turns it on for the rest of the conversation
    Options = Options

    async def on_request(self, request: NativeRequest, call: SlashCall | None) -> Reply | None:
        self.pending = ""
        if call is not None and not call.prompt and not call.replay:
            return Reply("Redaction is on: e-mail addresses, keys and long numbers are masked.")
        return None

    async def on_chunk(self, chunk: Chunk) -> Chunk | None:
        if chunk.get("done"):
            return chunk
        text = self.pending + chunk_text(chunk)
        cut = safe_end(text)
        self.pending = text[cut:]
        emitted = redact(text[:cut], self.options.mask)
        message = chunk.get("message") or {}
        if not emitted and not (message.get("thinking") or message.get("tool_calls")):
            return None  # nothing to show yet: the tail is held back
        return with_text(chunk, emitted)

    async def on_end(self, text: str | None) -> str | None:
        rest, self.pending = self.pending, ""
        return redact(rest, self.options.mask) if rest else None
