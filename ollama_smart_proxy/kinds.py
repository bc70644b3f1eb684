"""The one vocabulary of request kinds, which every layer reads.

A request has a **route kind** (what its path is: ``"chat"``, ``"openai.chat"``,
``"messages"``, ``"health.live"``...), decided once by :mod:`~ollama_smart_proxy.routing`, and,
when it is a model request, an **exchange kind** (what Ollama is asked to do: ``"chat"``,
``"generate"``, ``"embed"``, ``"embeddings"``, ``"show"``). A translated request keeps its
route kind for the client (errors, metrics) and is moved to the native route of its exchange
kind below the entry (``openai.chat`` runs as ``chat``). Agents and the model loader look at
the exchange kind only, so they behave the same whichever dialect the client speaks.
"""

from __future__ import annotations

from typing import Literal

#: What Ollama is asked to do by a model request, in any dialect.
ExchangeKind = Literal["chat", "generate", "embed", "embeddings", "show"]

#: Native endpoints by path (the rest of ``/api/...`` is kind ``"api"``, or ``"blobs"``).
NATIVE_KINDS = {
    "/": "root",
    "/api/chat": "chat",
    "/api/generate": "generate",
    "/api/embed": "embed",
    "/api/embeddings": "embeddings",
    "/api/show": "show",
    "/api/tags": "tags",
    "/api/ps": "ps",
    "/api/version": "version",
    "/api/pull": "pull",
    "/api/push": "push",
    "/api/create": "create",
    "/api/copy": "copy",
    "/api/delete": "delete",
}
#: OpenAI endpoints, served under ``/v1`` and bare.
OPENAI_KINDS = {
    "/chat/completions": "openai.chat",
    "/completions": "openai.completions",
    "/embeddings": "openai.embeddings",
    "/models": "openai.models",
}
#: The proxy's own endpoints.
PROXY_KINDS = {
    "/health": "health",
    "/health/ready": "health.ready",
    "/health/live": "health.live",
    "/plugins": "plugins",
    "/metrics": "metrics",
}

#: Native route kinds whose bodies are parsed into an exchange (each names a model).
PARSED_KINDS: dict[str, ExchangeKind] = {
    "chat": "chat",
    "generate": "generate",
    "embed": "embed",
    "embeddings": "embeddings",
    "show": "show",
}
#: Exchange kinds agents and slash commands act on: a conversation or a prompt.
COMPLETION_KINDS: frozenset[str] = frozenset({"chat", "generate"})
#: Exchange kinds that make Ollama run the model: a missing one is pulled for them.
RUN_KINDS: frozenset[str] = frozenset({"chat", "generate", "embed", "embeddings"})
#: Route kinds that make Ollama run a model, in any dialect (admission, tokens, metrics).
GENERATION_KINDS: frozenset[str] = frozenset(
    {
        "chat",
        "generate",
        "embed",
        "embeddings",
        "openai.chat",
        "openai.completions",
        "openai.embeddings",
        "responses",
        "messages",
    }
)
#: Native route kinds that change what the server holds (models, blobs): admin routes.
ADMIN_KINDS: frozenset[str] = frozenset({"pull", "push", "create", "copy", "delete", "blobs"})
#: Native route kinds after which the list of installed models is different.
CATALOGUE_CHANGES: frozenset[str] = frozenset({"pull", "push", "create", "copy", "delete"})
#: Route kinds anyone may call, keys or not: an orchestrator's probes send no credentials.
OPEN_KINDS: frozenset[str] = frozenset({"health.live", "health.ready"})


__all__ = [
    "ADMIN_KINDS",
    "CATALOGUE_CHANGES",
    "COMPLETION_KINDS",
    "GENERATION_KINDS",
    "NATIVE_KINDS",
    "OPENAI_KINDS",
    "OPEN_KINDS",
    "PARSED_KINDS",
    "PROXY_KINDS",
    "RUN_KINDS",
    "ExchangeKind",
]
