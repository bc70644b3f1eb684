"""The OpenAI API as a dialect of the model entry, and ``OpenAICompat``, that entry alone."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Unpack

from .._json import dumps, loads
from .._pipeline import error_message
from .._side import side_request
from ..entry import BodyLimits, Dialect, Endpoint, LimitOptions, ModelEntry, Translation
from ..errors import UpstreamError, UpstreamStatusError
from ..exchange import Exchange
from ..names import Aliases
from ..routing import route_of
from ..types import ASGIApp, Scope
from .render import (
    ChatCompletionEncoder,
    CompletionEncoder,
    EmbeddingEncoder,
    alias_object,
    model_object,
    models_list,
)
from .translate import Unsupported, chat_request, completion_request, embedding_request


def openai_dialect(
    *, unsupported: Unsupported = "error", aliases: Mapping[str, str] | Aliases | None = None
) -> Dialect:
    """``/v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings`` (translated to
    ``/api/chat``, ``/api/generate``, ``/api/embed``) and ``/v1/models[/{model}]`` (answered
    from ``/api/tags`` and ``/api/show``, with the ``aliases``), also without ``/v1``.

    ``unsupported`` is what happens to OpenAI fields Ollama cannot honour (a 400 naming the
    field, or ``"ignore"``). ``aliases`` is best the model loader's own :class:`Aliases`, so
    one table resolves every spelling on every route.
    """
    if unsupported not in ("error", "ignore"):
        raise ValueError("unsupported must be 'error' or 'ignore'")
    names = aliases if isinstance(aliases, Aliases) else Aliases(aliases)

    def chat(raw: bytes, limits: BodyLimits) -> Translation:
        body = limits.parse_object(raw)
        limits.check_messages(body.get("messages"))
        request, options = chat_request(body, unsupported)
        encoder = ChatCompletionEncoder(options.model, options.stream, options.include_usage)
        return Translation(Exchange("chat", request, dialect="openai"), encoder, "/api/chat")

    def completions(raw: bytes, limits: BodyLimits) -> Translation:
        request, options = completion_request(limits.parse_object(raw), unsupported)
        encoder = CompletionEncoder(options.model, options.stream, options.include_usage)
        exchange = Exchange("generate", request, dialect="openai")
        return Translation(exchange, encoder, "/api/generate")

    def embeddings(raw: bytes, limits: BodyLimits) -> Translation:
        request, model, fmt = embedding_request(limits.parse_object(raw))
        exchange = Exchange("embed", request, dialect="openai")
        return Translation(exchange, EmbeddingEncoder(model, fmt), "/api/embed")

    async def list_models(scope: Scope, raw: bytes, limits: BodyLimits, app: ASGIApp) -> bytes:
        tags = await _native_json(app, scope, "GET", "/api/tags")
        if not isinstance(tags, dict):
            raise UpstreamError("Ollama answered /api/tags with something that is not an object")
        return dumps(models_list(tags, names.mapping))

    async def retrieve_model(scope: Scope, raw: bytes, limits: BodyLimits, app: ASGIApp) -> bytes:
        model = route_of(scope).path.split("/models/", 1)[1]
        if model in names:
            return dumps(alias_object(model))
        shown = await _native_json(app, scope, "POST", "/api/show", {"model": model})
        modified = shown.get("modified_at") if isinstance(shown, dict) else None
        return dumps(model_object(model, modified))

    read = ("GET", "HEAD")
    return Dialect(
        "openai",
        "openai",
        {
            "openai.chat": Endpoint(("POST",), translate=chat),
            "openai.completions": Endpoint(("POST",), translate=completions),
            "openai.embeddings": Endpoint(("POST",), translate=embeddings),
            "openai.models": Endpoint(read, serve=list_models),
            "openai.model": Endpoint(read, serve=retrieve_model),
        },
    )


async def _native_json(
    app: ASGIApp, scope: Scope, method: str, path: str, body: dict[str, Any] | None = None
) -> Any:
    status, data = await side_request(app, scope, method, path, body)
    if status != 200:
        raise UpstreamStatusError(error_message(data, status), status_code=status)
    try:
        return loads(data)
    except ValueError:
        raise UpstreamError(f"Ollama answered {path} with a body that is not JSON") from None


class OpenAICompat(ModelEntry):
    """Serve the OpenAI API in front of an ASGI app that speaks Ollama's native API.

    Each request is translated into one native exchange (so agents and the model loader
    below see a canonical native request), and the native answer is encoded back as OpenAI
    JSON or SSE; other paths pass through to ``app``.

    ``OpenAICompat(app, *, unsupported="error", aliases={}, max_body_bytes=64 MiB,
    max_messages=None, max_json_objects=None, max_line_bytes=16 MiB)``: see
    :func:`openai_dialect`.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        unsupported: Unsupported = "error",
        aliases: Mapping[str, str] | Aliases | None = None,
        **limits: Unpack[LimitOptions],
    ) -> None:
        dialect = openai_dialect(unsupported=unsupported, aliases=aliases)
        super().__init__(app, dialects=[dialect], **limits)


__all__ = ["OpenAICompat", "openai_dialect"]
