"""``DropUnsupportedTools``: a small local model that cannot call tools (or think) still
answers.

Claude Code and Codex send every request with tools, and Claude Code asks for thinking;
Ollama refuses both for a model whose capabilities lack them (400 "does not support tools",
"does not support thinking"), and the CLIs stop there. With this agent
(``OSP_DROP_UNSUPPORTED_TOOLS=true``), the tools and the thinking request of such a request
are dropped and the model answers in plain text; the log says so.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from ..commands import SlashCall
from ..schemas import ChatRequest, GenerateRequest, NativeRequest
from ..types import ASGIApp
from .base import Agent, Reply
from .builtins import unset

logger = logging.getLogger("ollama_smart_proxy.agents")

#: Seconds a model's capabilities are remembered.
CAPABILITIES_TTL = 60.0


class DropUnsupportedTools(Agent):
    summary = "Drop tools and thinking from requests for models that cannot do them"
    priority = 90
    activation = "always"
    #: The capabilities cache serves every request.
    shared = frozenset({"_known"})

    def __init__(self, app: ASGIApp, **options: Any) -> None:
        super().__init__(app, **options)
        #: model -> (when it was asked, its capabilities); shared by this agent's requests.
        self._known: dict[str, tuple[float, frozenset[str] | None]] = {}

    async def on_request(self, request: NativeRequest, call: SlashCall | None) -> Reply | None:
        if not isinstance(request, ChatRequest | GenerateRequest) or not request.model:
            return None
        tools = request.tools if isinstance(request, ChatRequest) else None
        thinks = request.think not in (None, False)
        if not tools and not thinks:
            return None
        capabilities = await self._capabilities(request.model)
        if capabilities is None:
            return None
        if tools and "tools" not in capabilities:
            unset(request, "tools")
            logger.info(
                "dropped %d tool(s) from a request for %s: the model cannot call tools",
                len(tools),
                request.model,
            )
        if thinks and "thinking" not in capabilities:
            unset(request, "think")
            logger.info(
                "dropped 'think' from a request for %s: the model cannot think", request.model
            )
        return None

    async def _capabilities(self, model: str) -> frozenset[str] | None:
        known = self._known.get(model)
        if known is not None and time.monotonic() - known[0] < CAPABILITIES_TTL:
            return known[1]
        status, shown = await self.call_ollama("POST", "/api/show", {"model": model})
        capabilities = None
        if (
            status == 200
            and isinstance(shown, dict)
            and isinstance(shown.get("capabilities"), list)
        ):
            capabilities = frozenset(str(c) for c in shown["capabilities"])
        if len(self._known) > 1024:
            self._known.clear()
        self._known[model] = (time.monotonic(), capabilities)
        return capabilities


__all__ = ["DropUnsupportedTools"]
