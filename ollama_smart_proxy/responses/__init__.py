"""OpenAI's Responses API (what Codex and the OpenAI Agents SDK speak), over Ollama."""

from __future__ import annotations

from .middleware import ResponsesCompat
from .render import ResponsesEncoder
from .translate import ResponsesOptions, responses_request

__all__ = ["ResponsesCompat", "ResponsesEncoder", "ResponsesOptions", "responses_request"]
