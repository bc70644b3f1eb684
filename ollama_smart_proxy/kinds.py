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
    "/api/status": "status",
    "/api/me": "me",
    "/api/signout": "signout",
    "/api/experimental/web_search": "web_search",
    "/api/experimental/web_fetch": "web_fetch",
    "/api/experimental/model-recommendations": "model_recommendations",
}
#: Native routes whose last segment is a parameter, by prefix.
NATIVE_PREFIX_KINDS = {"/api/blobs/": "blobs", "/api/user/keys/": "user_keys"}
#: OpenAI endpoints, served under ``/v1`` and bare.
OPENAI_KINDS = {
    "/chat/completions": "openai.chat",
    "/completions": "openai.completions",
    "/embeddings": "openai.embeddings",
    "/models": "openai.models",
}
#: OpenAI routes Ollama serves that the proxy passes through as they are (under ``/v1``).
OPENAI_PASSTHROUGH_KINDS = {
    "/v1/images/generations": "openai.images.generations",
    "/v1/images/edits": "openai.images.edits",
    "/v1/audio/transcriptions": "openai.audio.transcriptions",
}
#: The proxy's own endpoints.
PROXY_KINDS = {
    "/health": "health",
    "/health/ready": "health.ready",
    "/health/live": "health.live",
    "/plugins": "plugins",
    "/metrics": "metrics",
    "/usage": "usage",
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

#: What a route does, for the route policy: ``generation`` runs a model (admission, the
#: key's models); ``read`` only reads; ``admin`` changes what the server holds; ``account``
#: acts with, or on, the credentials of the server's ollama.com account; ``proxy`` is ours.
RouteClass = Literal["generation", "read", "admin", "account", "proxy"]

#: Ollama's routes by method and kind, as ``GenerateRoutes`` in Ollama's
#: ``server/routes.go`` declares them (read at commit 00188139f12f, 2026), with the proxy's
#: own. A method and route not here is unknown: admin-only when keys are in use.
ROUTE_TABLE: dict[tuple[str, str], RouteClass] = {
    ("GET", "root"): "read",
    ("HEAD", "root"): "read",
    ("GET", "version"): "read",
    ("HEAD", "version"): "read",
    ("GET", "status"): "read",
    ("POST", "pull"): "admin",
    ("POST", "push"): "admin",
    ("GET", "tags"): "read",
    ("HEAD", "tags"): "read",
    ("POST", "show"): "read",
    ("DELETE", "delete"): "admin",
    ("POST", "me"): "account",
    ("POST", "signout"): "account",
    ("DELETE", "user_keys"): "account",
    ("POST", "create"): "admin",
    ("POST", "blobs"): "admin",
    ("HEAD", "blobs"): "read",
    ("POST", "copy"): "admin",
    ("POST", "web_search"): "account",
    ("POST", "web_fetch"): "account",
    ("GET", "model_recommendations"): "read",
    ("GET", "ps"): "read",
    ("POST", "generate"): "generation",
    ("POST", "chat"): "generation",
    ("POST", "embed"): "generation",
    ("POST", "embeddings"): "generation",
    ("POST", "openai.chat"): "generation",
    ("POST", "openai.completions"): "generation",
    ("POST", "openai.embeddings"): "generation",
    ("GET", "openai.models"): "read",
    ("HEAD", "openai.models"): "read",
    ("GET", "openai.model"): "read",
    ("HEAD", "openai.model"): "read",
    ("POST", "responses"): "generation",
    ("POST", "openai.images.generations"): "generation",
    ("POST", "openai.images.edits"): "generation",
    ("POST", "openai.audio.transcriptions"): "generation",
    ("POST", "messages"): "generation",
    ("POST", "count_tokens"): "read",
    **{(method, kind): "proxy" for kind in PROXY_KINDS.values() for method in ("GET", "HEAD")},
}


def route_class(method: str, kind: str) -> RouteClass | None:
    """The class of a route (``None``: a route the table does not know)."""
    return ROUTE_TABLE.get((method, kind))


#: Route kinds that make Ollama run a model, in any dialect (admission, tokens, metrics).
GENERATION_KINDS: frozenset[str] = frozenset(
    kind for (_, kind), what in ROUTE_TABLE.items() if what == "generation"
)
#: Generation routes the proxy passes through without reading their body (no exchange).
UNPARSED_GENERATION_KINDS: frozenset[str] = frozenset(OPENAI_PASSTHROUGH_KINDS.values())
#: Native route kinds that change what the server holds (models, blobs).
ADMIN_KINDS: frozenset[str] = frozenset(
    kind for (_, kind), what in ROUTE_TABLE.items() if what == "admin"
)
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
    "NATIVE_PREFIX_KINDS",
    "OPENAI_KINDS",
    "OPENAI_PASSTHROUGH_KINDS",
    "OPEN_KINDS",
    "PARSED_KINDS",
    "PROXY_KINDS",
    "ROUTE_TABLE",
    "RUN_KINDS",
    "UNPARSED_GENERATION_KINDS",
    "ExchangeKind",
    "RouteClass",
    "route_class",
]
