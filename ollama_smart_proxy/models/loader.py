"""``ModelLoader``: the model a request names simply works.

Every request that names a model passes through it (chat, generate, embed, embeddings, show,
and the translated dialects): an alias is replaced by its model, a request that names none
gets the default model, a ``keep_alive`` policy fills in what the client left out, and a
model that is not installed is pulled first when ``auto_pull`` allows it (one pull per model,
whoever asks). Answers name the model the client asked for.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from .._json import dumps, loads
from .._keys import ApiKey, request_key
from .._side import MAX_SIDE_ANSWER
from ..encoding import Chunk
from ..errors import PermissionDenied, ProxyError, UpstreamError
from ..exchange import Exchange, get_exchange
from ..kinds import CATALOGUE_CHANGES, COMPLETION_KINDS, PARSED_KINDS, RUN_KINDS
from ..names import Aliases, first_match
from ..routing import route_of
from ..types import ASGIApp, Message, Receive, Scope, Send
from .upstream_models import UpstreamModels

if TYPE_CHECKING:
    from ..shared import RedisState

AutoPull = Literal["off", "on"] | Sequence[str]


class NameAs:
    """A transform that names, in every chunk, the model the client asked for."""

    def __init__(self, name: str) -> None:
        self.name = name

    async def on_chunk(self, chunk: Chunk) -> Chunk | None:
        if "model" in chunk:
            chunk["model"] = self.name
        return chunk

    async def on_end(self) -> list[Chunk]:
        return []


#: Routes that list models: a key limited to some models sees only those.
LISTS = frozenset({"tags", "ps"})


def _listing_only(send: Send, key: ApiKey) -> Send:
    """``send`` for ``/api/tags`` and ``/api/ps``, keeping only the models ``key`` may use
    (what Open WebUI lists is then what the key can chat with)."""
    start: Message | None = None
    body = bytearray()

    async def filtering_send(message: Message) -> None:
        nonlocal start
        if message["type"] == "http.response.start":
            start = message
            return
        if start is None or message["type"] != "http.response.body":
            await send(message)
            return
        body.extend(message.get("body", b""))
        if len(body) > MAX_SIDE_ANSWER:
            raise UpstreamError("Ollama's list of models is too large")
        if message.get("more_body"):
            return
        data = bytes(body)
        if start["status"] == 200:
            try:
                listing = loads(data)
            except ValueError:
                raise UpstreamError("Ollama answered a list of models that is not JSON") from None
            if isinstance(listing, dict) and isinstance(listing.get("models"), list):
                listing["models"] = [
                    entry
                    for entry in listing["models"]
                    if isinstance(entry, dict)
                    and key.may_use(str(entry.get("model") or entry.get("name") or ""))
                ]
                data = dumps(listing)
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(data)).encode()))
        await send({**start, "headers": headers})
        await send({"type": "http.response.body", "body": data})

    return filtering_send


class ModelLoader:
    """``ModelLoader(app, *, aliases={}, default_model=None, auto_pull="off",
    keep_alive={}, preload=(), pull_timeout=1800, catalogue_ttl=10, on_pull=None,
    max_pulls=2, max_waiting_pulls=16, pull_grace=30, shared=None)``.

    ``auto_pull`` is ``"off"``, ``"on"`` or a list of shell-style name patterns a missing
    model must match to be pulled; ``keep_alive`` maps name patterns to an Ollama duration
    (the first match wins, and a client's own value wins over it); ``preload`` models are
    loaded in the background by :meth:`startup`; ``on_pull(model, "ok" | "failed")`` is told
    of every pull that ends (the metrics). It acts on an exchange made above it (by the
    proxy's entry, or, used on its own, by :func:`ollama_smart_proxy.standalone`). Its own
    requests to Ollama go to ``app``.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        aliases: Mapping[str, str] | None = None,
        default_model: str | None = None,
        auto_pull: AutoPull = "off",
        keep_alive: Mapping[str, Any] | None = None,
        preload: Sequence[str] = (),
        pull_timeout: float = 1800.0,
        catalogue_ttl: float = 10.0,
        on_pull: Callable[[str, str], None] | None = None,
        max_pulls: int = 2,
        max_waiting_pulls: int = 16,
        pull_grace: float = 30.0,
        shared: RedisState | None = None,
    ) -> None:
        if isinstance(auto_pull, str) and auto_pull not in ("off", "on"):
            raise ValueError("auto_pull must be 'off', 'on', or a list of name patterns")
        if pull_timeout <= 0 or catalogue_ttl < 0:
            raise ValueError("pull_timeout must be positive and catalogue_ttl not negative")
        self.app = app
        self.aliases = Aliases(aliases)
        self.default_model = default_model or None
        self.auto_pull = auto_pull if isinstance(auto_pull, str) else list(auto_pull)
        self.keep_alive = dict(keep_alive or {})
        self.preload = list(preload)
        self.models = UpstreamModels(
            app,
            catalogue_ttl=catalogue_ttl,
            pull_timeout=pull_timeout,
            on_pull=on_pull,
            max_pulls=max_pulls,
            max_waiting_pulls=max_waiting_pulls,
            pull_grace=pull_grace,
            shared=shared,
        )

    @property
    def rewrites(self) -> bool:
        """Whether any request needs the loader: an alias, a default model, auto-pull or a
        ``keep_alive`` policy is configured (the proxy leaves an idle loader out of its
        stack; a key limited to some models needs it too)."""
        return bool(
            self.aliases or self.default_model or self.auto_pull != "off" or self.keep_alive
        )

    # -- policy -------------------------------------------------------------------------

    def may_pull(self, model: str) -> bool:
        """Whether ``auto_pull`` lets the proxy pull ``model``."""
        if self.auto_pull == "off":
            return False
        if self.auto_pull == "on":
            return True
        return first_match(self.auto_pull, model) is not None

    def keep_alive_for(self, model: str) -> Any:
        """The ``keep_alive`` the policy gives ``model`` (``None``: Ollama's default)."""
        pattern = first_match(self.keep_alive, model)
        return self.keep_alive[pattern] if pattern is not None else None

    def _why_not(self, model: str) -> str:
        if self.auto_pull == "off":
            return ", and auto-pull is off (OSP_AUTO_PULL)"
        return (
            f", and auto-pull (OSP_AUTO_PULL) allows only {', '.join(self.auto_pull)}"
            if not isinstance(self.auto_pull, str)
            else ""
        )

    async def ensure(self, model: str) -> None:
        """Make sure ``model`` is installed: pulled if it is missing and may be."""
        await self.models.ensure(model, may_pull=self.may_pull(model), why_not=self._why_not(model))

    # -- lifecycle ----------------------------------------------------------------------

    async def startup(self) -> None:
        """Start loading the ``preload`` models in the background."""
        models = [self.aliases.resolve(model) for model in self.preload]
        self.models.start_preload(
            [(model, self.may_pull(model)) for model in models], self.keep_alive_for
        )

    def not_ready(self) -> str | None:
        """Why the proxy is not ready yet (preloading), or ``None``."""
        if not self.models.preloading:
            return None
        waiting = [p.model for p in self.models.preloads if p.status in ("pending", "loading")]
        return f"preloading {', '.join(waiting)}"

    async def aclose(self) -> None:
        await self.models.aclose()

    # -- ASGI ---------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        exchange = get_exchange(scope)
        if exchange is not None:
            await self._prepare(exchange)
            await self.app(scope, receive, send)
            return
        kind = route_of(scope).kind
        if kind in PARSED_KINDS and scope["method"] == "POST":
            raise ProxyError(
                "the model loader found no exchange: used on its own, wrap it as "
                "ollama_smart_proxy.standalone(loader)"
            )
        if kind in CATALOGUE_CHANGES:
            await self.app(scope, receive, self._invalidating(send))
            return
        key = request_key(scope)
        if kind in LISTS and key is not None and key.models is not None:
            await self.app(scope, receive, _listing_only(send, key))
        else:
            await self.app(scope, receive, send)

    def _invalidating(self, send: Send) -> Send:
        catalogue = self.models.catalogue

        async def watching_send(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] < 400:
                catalogue.invalidate()
            await send(message)

        return watching_send

    async def _prepare(self, exchange: Exchange) -> None:
        request = exchange.request
        key: ApiKey | None = exchange.key
        asked = exchange.model
        if not asked and exchange.kind in COMPLETION_KINDS:
            asked = self.default_model
        if not asked:
            return  # Ollama answers a request with no model as it does
        model = self.aliases.resolve(asked) if self.aliases else asked
        # A key's models are checked here, where the name is known and nothing is pulled yet.
        if key is not None and not key.may_use(asked, model):
            raise PermissionDenied(
                f"the key '{key.name}' may not use the model '{asked}' "
                f"(it may use {', '.join(key.models or ()) or 'no model'})"
            )
        if model != exchange.model:
            request.model = model
            if getattr(request, "name", None):
                request.name = model  # type: ignore[union-attr]
            exchange.changed()
        if model != asked:
            exchange.transforms.append(NameAs(asked))  # answers name what the client asked
        if exchange.kind not in RUN_KINDS:
            return
        if self.keep_alive and request.keep_alive is None:  # type: ignore[union-attr]
            keep_alive = self.keep_alive_for(model)
            if keep_alive is not None:
                request.keep_alive = keep_alive  # type: ignore[union-attr]
                exchange.changed()
        if self.auto_pull != "off":
            await self.ensure(model)


__all__ = ["AutoPull", "ModelLoader", "NameAs"]
