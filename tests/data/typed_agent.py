"""An agent typed as docs/agents.md shows it: checked with ``mypy --strict`` by the tests."""

from __future__ import annotations

from pydantic import BaseModel

from ollama_smart_proxy import standalone
from ollama_smart_proxy.agents import (
    Agent,
    Chunk,
    NativeRequest,
    Reply,
    SlashCall,
    chunk_text,
    with_text,
)
from ollama_smart_proxy.schemas import ChatRequest
from ollama_smart_proxy.testing import FakeOllama
from ollama_smart_proxy.types import ASGIApp


class Options(BaseModel):
    shout: bool = False


class Typed(Agent):
    name = "typed"
    summary = "A typed agent"
    Options = Options

    async def on_request(self, request: NativeRequest, call: SlashCall | None) -> Reply | None:
        if isinstance(request, ChatRequest) and request.messages:
            request.messages[-1].content = self.prompt.strip()
        if call is not None and not call.prompt:
            return Reply(f"{self.name} takes a prompt")
        request.options = {**(request.options or {}), "temperature": 0.1}
        if request.think is None:  # chat and generate requests both have it
            request.think = False
        return None

    async def on_chunk(self, chunk: Chunk) -> Chunk | None:
        options: Options = self.options
        text = chunk_text(chunk)
        return with_text(chunk, text.upper() if options.shout else text)


app: ASGIApp = standalone(Typed(FakeOllama(), shout=True))
