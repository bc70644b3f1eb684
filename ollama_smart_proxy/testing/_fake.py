"""``FakeOllama``: an ASGI app that behaves like Ollama's HTTP API.

Faithful to the shapes, statuses and exact error strings of a real Ollama (see
``OLLAMA_API.md`` and the recorded transcripts): NDJSON streaming with one object per
line, ``done_reason`` load/unload, per-route "model not found" messages, pull progress,
and mid-stream errors. Replies echo the prompt, or follow a script.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
import string
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from typing import Any

import anyio

from .._json import now_rfc3339 as _now
from ..types import Message, Receive, Scope, Send

Chunk = dict[str, Any]

_TOKEN = re.compile(r"\s*\S+|\s+")
VERSION = "0.32.15"


def _dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def normalize_name(name: str) -> str:
    """``Llama3.2`` or ``registry.ollama.ai/library/llama3.2`` -> ``llama3.2:latest``: the
    short, lower-case form, as Ollama matches names (its own rules, written out again here
    so the fake is an independent check of the proxy's)."""
    name = name.strip().lower()
    for prefix in ("registry.ollama.ai/", "library/"):
        if name.startswith(prefix) and name.count("/") >= 1:
            name = name[len(prefix) :]
    last = name.rsplit("/", 1)[-1]
    return name if ":" in last else f"{name}:latest"


def tokenize(text: str) -> list[str]:
    """Split text into word-ish tokens that join back to exactly ``text``."""
    return _TOKEN.findall(text)


@dataclass
class FakeModel:
    """A model the fake has installed."""

    name: str
    capabilities: tuple[str, ...] = ("completion", "tools")
    family: str = "llama"
    parameter_size: str = "3.2B"
    quantization_level: str = "Q4_K_M"
    size: int = 2_019_393_189
    context_length: int = 4096
    modified_at: str = "2026-11-27T06:35:12.938944992Z"

    def __post_init__(self) -> None:
        self.name = normalize_name(self.name)

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.name.encode()).hexdigest()

    def tag(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "model": self.name,
            "modified_at": self.modified_at,
            "size": self.size,
            "digest": self.digest,
            "details": self.details(),
        }

    def details(self) -> dict[str, Any]:
        return {
            "parent_model": "",
            "format": "gguf",
            "family": self.family,
            "families": [self.family],
            "parameter_size": self.parameter_size,
            "quantization_level": self.quantization_level,
        }


DEFAULT_MODELS = (
    FakeModel("llama3.2:latest"),
    FakeModel(
        "qwen3:latest",
        capabilities=("completion", "tools", "thinking"),
        family="qwen3",
        parameter_size="8.2B",
    ),
    FakeModel(
        "llava:latest", capabilities=("completion", "vision"), family="llama", parameter_size="7B"
    ),
    FakeModel(
        "all-minilm:latest",
        capabilities=("embedding",),
        family="bert",
        parameter_size="23M",
        quantization_level="F16",
        size=45_960_996,
    ),
)

#: The names a user can try against ``--demo``.
DEMO_MODELS = tuple(model.name for model in DEFAULT_MODELS)


@dataclass
class FakeReply:
    """A scripted answer for the next chat or generate request.

    ``status`` + ``error``: an error response before any byte. ``error`` + ``error_after``:
    an error line after that many chunks, as Ollama ends a failed stream. ``drop_after``:
    the connection is cut after that many chunks. ``first_delay``: seconds before the
    response starts. ``delay``: seconds between chunks (overrides the fake's default).
    """

    content: str = ""
    thinking: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    done_reason: str = "stop"
    status: int | None = None
    error: str | None = None
    error_after: int | None = None
    drop_after: int | None = None
    first_delay: float = 0.0
    delay: float | None = None
    raw_lines: list[bytes] | None = None


@dataclass
class RecordedRequest:
    """A request the fake received."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    #: The client address (host, port) as the server saw it: one port per connection.
    client: tuple[str, int] | None = None
    #: The path as it came over the wire (still percent-encoded).
    raw_path: bytes = b""

    @property
    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


class _Dropped(Exception):
    """Raised to cut the connection mid-stream (the server logs and closes it)."""


Replier = Callable[[dict[str, Any]], "FakeReply | str | None"]


class FakeOllama:
    """An ASGI app that behaves like Ollama.

    ``FakeOllama(models=..., pullable=["llama3*"], reply=None, token_delay=0.0,
    pull_delay=0.0, pull_errors={}, load_delay=0.0, max_loaded=None)``.
    Chat and generate echo the last user message (or prompt) token by token unless a
    reply is scripted with :meth:`script` or given as ``reply`` (a string, a
    ``FakeReply``, or a callable taking the request body). Every request is recorded in
    ``requests``; streams the client abandoned are recorded in ``disconnects``.

    Loading can be made to cost what it costs a GPU: a model not loaded takes ``load_delay``
    seconds to load (one load at a time), and with ``max_loaded`` models loaded the least
    recently used idle one is unloaded first, waiting for its requests to finish if all are
    busy, as Ollama's scheduler does when memory is short. ``loads`` counts the loads.

    ``parallel`` gives each loaded model that many slots (``OLLAMA_NUM_PARALLEL``): more
    chat or generate requests at once wait, first come first served. Each slot keeps the
    prompt it processed last (Ollama's prompt cache, one per slot); a request takes the
    free slot that shares the longest beginning with its prompt, and before its first token
    waits ``prefill_delay`` seconds for each prompt token that slot had not seen.
    ``prefills`` records (prompt tokens, tokens found in the cache) per request.
    ``failure = (status, error)`` makes every chat and generate request fail so (a server
    that fails fast).
    """

    def __init__(
        self,
        models: Iterable[FakeModel | str] | None = None,
        *,
        pullable: Iterable[str] = ("*",),
        pull_delay: float = 0.0,
        pull_errors: dict[str, str] | None = None,
        reply: FakeReply | str | Replier | None = None,
        token_delay: float = 0.0,
        version: str = VERSION,
        embedding_dim: int = 16,
        load_delay: float = 0.0,
        max_loaded: int | None = None,
        parallel: int | None = None,
        prefill_delay: float = 0.0,
    ) -> None:
        source = DEFAULT_MODELS if models is None else models
        self.models: dict[str, FakeModel] = {}
        for model in source:
            model = FakeModel(model) if isinstance(model, str) else model
            self.models[model.name] = FakeModel(**vars(model))
        self.pullable = list(pullable)
        #: Seconds a pull takes (spread over its progress lines).
        self.pull_delay = pull_delay
        #: Name pattern -> the error its pull ends with (a registry that cannot be reached).
        self.pull_errors = dict(pull_errors or {})
        #: Pulls started, per model (short name).
        self.pulls: Counter[str] = Counter()
        #: Pulls being answered now, and the most at once.
        self.active_pulls = 0
        self.max_active_pulls = 0
        self.reply = reply
        self.token_delay = token_delay
        self.version = version
        self.embedding_dim = embedding_dim
        self.requests: list[RecordedRequest] = []
        self.disconnects: list[RecordedRequest] = []
        self.loaded: dict[str, float] = {}
        #: Seconds a model takes to load; how many may be loaded at once (None: any number).
        self.load_delay = load_delay
        self.max_loaded = max_loaded
        #: Loads made, per model (short name).
        self.loads: Counter[str] = Counter()
        self._in_use: Counter[str] = Counter()
        self._loading: anyio.Lock | None = None
        self._released: anyio.Event | None = None
        self._script: deque[FakeReply] = deque()
        self._finished = 0
        #: Chat and generate requests being answered now, and the most there ever were.
        self.active = 0
        self.max_active = 0
        self.parallel = parallel
        self.prefill_delay = prefill_delay
        #: (prompt tokens, of which cached) for each chat or generate request answered.
        self.prefills: list[tuple[int, int]] = []
        self._slots: dict[str, list[list[str] | None]] = {}
        self._slot_free: dict[str, anyio.Semaphore] = {}
        self.failure: tuple[int, str] | None = None
        #: Set by :meth:`crash`: every stream is cut at its next chunk, every request at once.
        self.crashed = False

    # -- scripting ----------------------------------------------------------------

    def script(self, *replies: FakeReply | str) -> None:
        """Queue replies for the next chat/generate requests, first in first out."""
        for item in replies:
            self._script.append(FakeReply(content=item) if isinstance(item, str) else item)

    def crash(self) -> None:
        """Fail as a server that died: streams in flight are cut at their next chunk and
        every new request loses its connection (stop the server too, and connections are
        refused)."""
        self.crashed = True

    def fail_next(self, status: int, error: str) -> None:
        """Make the next chat/generate request fail before any byte."""
        self._script.append(FakeReply(status=status, error=error))

    @property
    def completed_streams(self) -> int:
        """Chat/generate responses the fake sent to the end."""
        return self._finished

    def calls(self, path: str) -> list[RecordedRequest]:
        """The recorded requests to ``path``."""
        return [request for request in self.requests if request.path == path]

    # -- ASGI -----------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        path: str = scope["path"]
        root = scope.get("root_path", "")
        if root and path.startswith(root):  # mounted: route below the mount point
            path = path[len(root) :] or "/"
        request = RecordedRequest(
            method=scope["method"],
            path=path,
            query=scope.get("query_string", b"").decode("latin-1"),
            headers={k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]},
            body=bytes(body),
            client=tuple(scope["client"]) if scope.get("client") else None,
            raw_path=scope.get("raw_path") or path.encode(),
        )
        self.requests.append(request)
        if self.crashed:
            raise _Dropped("FakeOllama has crashed")
        await self._route(request, receive, send)

    async def _route(self, request: RecordedRequest, receive: Receive, send: Send) -> None:
        routes: dict[str, tuple[tuple[str, ...], Callable[..., Any]]] = {
            "/": (("GET", "HEAD"), self._root),
            "/api/version": (("GET", "HEAD"), self._version),
            "/api/tags": (("GET", "HEAD"), self._tags),
            "/api/ps": (("GET",), self._ps),
            "/api/show": (("POST",), self._show),
            "/api/chat": (("POST",), self._chat),
            "/api/generate": (("POST",), self._generate),
            "/api/embed": (("POST",), self._embed),
            "/api/embeddings": (("POST",), self._embeddings),
            "/api/pull": (("POST",), self._pull),
            "/api/delete": (("DELETE",), self._delete),
            "/api/copy": (("POST",), self._copy),
        }
        route = routes.get(request.path)
        if route is None:
            await _text(send, 404, b"404 page not found")
            return
        methods, handler = route
        if request.method not in methods:
            await _text(
                send, 405, b"405 method not allowed", [(b"allow", ", ".join(methods).encode())]
            )
            return
        if request.method in ("GET", "HEAD"):
            await handler(request, send)
            return
        data = _decode_body(request.body)
        if isinstance(data, str):
            await _json(send, 400, {"error": data})
            return
        await handler(data, request, receive, send)

    # -- simple routes ----------------------------------------------------------------

    async def _root(self, request: RecordedRequest, send: Send) -> None:
        body = b"Ollama is running"
        headers = [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(body)).encode()),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send(
            {"type": "http.response.body", "body": b"" if request.method == "HEAD" else body}
        )

    async def _version(self, request: RecordedRequest, send: Send) -> None:
        await _json(send, 200, {"version": self.version}, head=request.method == "HEAD")

    async def _tags(self, request: RecordedRequest, send: Send) -> None:
        models = [model.tag() for model in self.models.values()]
        await _json(send, 200, {"models": models}, head=request.method == "HEAD")

    async def _ps(self, request: RecordedRequest, send: Send) -> None:
        now = time.time()
        loaded = []
        for name, expires in sorted(self.loaded.items(), key=lambda item: -item[1]):
            model = self.models.get(name)
            if model is None or expires < now:
                continue
            entry = model.tag()
            del entry["modified_at"]
            entry["expires_at"] = datetime.fromtimestamp(expires, UTC).strftime(
                "%Y-%m-%dT%H:%M:%S.%fZ"
            )
            entry["size_vram"] = 0
            entry["context_length"] = model.context_length
            loaded.append(entry)
        await _json(send, 200, {"models": loaded})

    async def _show(
        self, data: dict[str, Any], request: RecordedRequest, receive: Receive, send: Send
    ) -> None:
        name = data.get("model") or data.get("name") or ""
        if not name:
            await _json(send, 400, {"error": "model is required"})
            return
        model = self.find(name)
        if model is None:
            await _json(send, 404, {"error": f"model '{name}' not found"})
            return
        await _json(
            send,
            200,
            {
                "modelfile": f'# Modelfile generated by "ollama show"\nFROM {model.name}\n',
                "parameters": "temperature                    0.8\ntop_k                          40",
                "template": "{{ .Prompt }}",
                "details": model.details(),
                "model_info": {
                    "general.architecture": model.family,
                    "general.parameter_count": 3_212_749_888,
                    f"{model.family}.context_length": model.context_length,
                },
                "tensors": [
                    {"name": "output_norm.weight", "type": "F32", "shape": [640]},
                    {"name": "token_embd.weight", "type": "Q8_0", "shape": [640, 262144]},
                ],
                "capabilities": list(model.capabilities),
                "modified_at": model.modified_at,
            },
        )

    async def _delete(
        self, data: dict[str, Any], request: RecordedRequest, receive: Receive, send: Send
    ) -> None:
        name = data.get("model") or data.get("name") or ""
        model = self.find(name)
        if model is None:
            await _json(send, 404, {"error": f"model '{name}' not found"})
            return
        del self.models[model.name]
        self.loaded.pop(model.name, None)
        await _empty(send)

    async def _copy(
        self, data: dict[str, Any], request: RecordedRequest, receive: Receive, send: Send
    ) -> None:
        source, destination = data.get("source") or "", data.get("destination") or ""
        if not destination:
            await _json(send, 400, {"error": f'destination "{destination}" is invalid'})
            return
        model = self.find(source)
        if model is None:
            await _json(send, 404, {"error": f'model "{source}" not found'})
            return
        copied = FakeModel(**{**vars(model), "name": destination})
        self.models[copied.name] = copied
        await _empty(send)

    def find(self, name: str) -> FakeModel | None:
        """The installed model ``name`` refers to, matched as Ollama does."""
        return self.models.get(normalize_name(name)) if name else None

    # -- pull -------------------------------------------------------------------------

    async def _pull(
        self, data: dict[str, Any], request: RecordedRequest, receive: Receive, send: Send
    ) -> None:
        name = data.get("model") or data.get("name") or ""
        stream = data.get("stream") is not False
        if not name or not re.match(r"^[\w./:-]+$", name):
            await _json(send, 400, {"error": "invalid model name"})
            return
        self.pulls[normalize_name(name)] += 1
        self.active_pulls += 1
        self.max_active_pulls = max(self.max_active_pulls, self.active_pulls)
        try:
            # As Ollama does, a pull whose client leaves is stopped.
            async with anyio.create_task_group() as group:

                async def watch() -> None:
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    group.cancel_scope.cancel()

                group.start_soon(watch)
                await self._answer_pull(name, stream, send)
                group.cancel_scope.cancel()
        finally:
            self.active_pulls -= 1

    async def _answer_pull(self, name: str, stream: bool, send: Send) -> None:
        error = None
        for pattern, message in self.pull_errors.items():
            if fnmatchcase(normalize_name(name), normalize_name(pattern)):
                error = message
        if error is None and not any(
            fnmatchcase(normalize_name(name), normalize_name(p)) or fnmatchcase(name, p)
            for p in self.pullable
        ):
            error = "pull model manifest: file does not exist"
        if error is not None:
            if self.pull_delay:
                await anyio.sleep(self.pull_delay)
            if not stream:
                await _json(send, 500, {"error": error}, content_type=b"application/json")
                return
            await _stream(send, [{"status": "pulling manifest"}, {"error": error}])
            return
        digest = hashlib.sha256(name.encode()).hexdigest()
        total = 2_019_393_189
        progress: list[Chunk] = [{"status": "pulling manifest"}]
        for completed in (0, total // 4, total // 2, total * 3 // 4, total):
            progress.append(
                {
                    "status": f"pulling {digest[:12]}",
                    "digest": f"sha256:{digest}",
                    "total": total,
                    "completed": completed,
                }
            )
        progress += [
            {"status": "verifying sha256 digest"},
            {"status": "writing manifest"},
            {"status": "success"},
        ]
        delay = self.pull_delay / len(progress) if self.pull_delay else self.token_delay
        if not stream:
            await anyio.sleep(self.pull_delay)
            self._install(name)
            await _json(send, 200, progress[-1], content_type=b"application/json")
            return
        await _stream(send, progress[:-1], delay=delay, end=False)
        self._install(name)
        # the last line after the model is in place, as Ollama writes the manifest first
        await send({"type": "http.response.body", "body": _dumps(progress[-1]) + b"\n"})

    def _install(self, name: str) -> None:
        model = FakeModel(normalize_name(name))
        self.models.setdefault(model.name, model)

    # -- embeddings -------------------------------------------------------------------

    def _vector(self, text: str, normalize: bool = True) -> list[float]:
        seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
        rng = random.Random(seed)
        vector = [rng.uniform(-1, 1) for _ in range(self.embedding_dim)]
        if normalize:
            norm = math.sqrt(sum(x * x for x in vector)) or 1.0
            vector = [x / norm for x in vector]
        return vector

    async def _embed(
        self, data: dict[str, Any], request: RecordedRequest, receive: Receive, send: Send
    ) -> None:
        name = data.get("model") or ""
        model = self.find(name)
        if not name:
            await _json(send, 404, {"error": "model '' not found"})
            return
        if model is None:
            await _json(send, 404, {"error": f'model "{name}" not found, try pulling it first'})
            return
        if "embedding" not in model.capabilities:
            await _json(send, 501, {"error": "this model does not support embeddings"})
            return
        raw = data.get("input")
        if raw is None or raw == "":
            await _json(send, 200, {"model": name, "embeddings": []})
            return
        if isinstance(raw, str):
            inputs = [raw]
        elif isinstance(raw, list) and all(isinstance(item, str) for item in raw):
            inputs = raw
        else:
            await _json(send, 400, {"error": "invalid input type"})
            return
        vectors = [self._vector(text) for text in inputs]
        if isinstance(data.get("dimensions"), int) and data["dimensions"] > 0:
            vectors = [_renormalize(vector[: data["dimensions"]]) for vector in vectors]
        tokens = sum(len(tokenize(text)) for text in inputs)
        await _json(
            send,
            200,
            {
                "model": name,
                "embeddings": vectors,
                "total_duration": 14_143_917,
                "load_duration": 1_019_500,
                "prompt_eval_count": tokens,
            },
        )

    async def _embeddings(
        self, data: dict[str, Any], request: RecordedRequest, receive: Receive, send: Send
    ) -> None:
        name = data.get("model") or ""
        if not name:
            await _json(send, 400, {"error": "model is required"})
            return
        model = self.find(name)
        if model is None:
            await _json(send, 404, {"error": f'model "{name}" not found, try pulling it first'})
            return
        prompt = data.get("prompt") or ""
        vector = self._vector(prompt, normalize=False) if prompt else []
        await _json(send, 200, {"embedding": vector})

    # -- chat and generate ------------------------------------------------------------

    async def _chat(
        self, data: dict[str, Any], request: RecordedRequest, receive: Receive, send: Send
    ) -> None:
        name = data.get("model") or ""
        if not name:
            await _json(send, 400, {"error": "model is required"})
            return
        await self._complete("chat", name, data, receive, send)

    async def _generate(
        self, data: dict[str, Any], request: RecordedRequest, receive: Receive, send: Send
    ) -> None:
        await self._complete("generate", data.get("model") or "", data, receive, send)

    async def _complete(
        self, kind: str, name: str, data: dict[str, Any], receive: Receive, send: Send
    ) -> None:
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            await self._answer(kind, name, data, receive, send)
        finally:
            self.active -= 1

    async def _answer(
        self, kind: str, name: str, data: dict[str, Any], receive: Receive, send: Send
    ) -> None:
        model = self.find(name)
        messages = data.get("messages") or []
        empty = not messages if kind == "chat" else not data.get("prompt")
        keep_alive = data.get("keep_alive")
        if empty and keep_alive in (0, "0", "0s") and name:
            await self._load_reply(kind, name, "unload", send)
            self.loaded.pop(normalize_name(name), None)
            return
        if model is None:
            await _json(send, 404, {"error": f"model '{name}' not found"})
            return
        if "completion" not in model.capabilities:
            await _json(send, 400, {"error": f'"{name}" does not support {kind}'})
            return
        think = data.get("think")
        if think not in (None, False) and "thinking" not in model.capabilities:
            await _json(send, 400, {"error": f'"{name}" does not support thinking'})
            return
        if kind == "chat" and data.get("tools") and "tools" not in model.capabilities:
            full = f"registry.ollama.ai/library/{model.name}"
            await _json(send, 400, {"error": f"{full} does not support tools"})
            return
        top = data.get("top_logprobs")
        if isinstance(top, int) and not 0 <= top <= 20:
            await _json(send, 400, {"error": "top_logprobs must be between 0 and 20"})
            return
        if self.failure is not None:
            status, error = self.failure
            await _json(send, status, {"error": error})
            return
        loaded_in = await self._load(model.name)
        if empty:
            await self._load_reply(kind, name, "load", send)
            return
        self._in_use[model.name] += 1
        try:
            tokens = _prompt_tokens(kind, data)

            def reply() -> Awaitable[None]:
                return self._generate_reply(kind, name, model, data, receive, send, loaded_in)

            if self.parallel is None:
                await self._prefill(tokens, None)
                await reply()
            else:
                await self._in_slot(model.name, tokens, reply)
        finally:
            self._in_use[model.name] -= 1
            if self._released is not None:
                self._released.set()  # an unload waiting for an idle model may go on
                self._released = None

    async def _in_slot(
        self, model: str, tokens: list[str], reply: Callable[[], Awaitable[None]]
    ) -> None:
        """Run ``reply`` in one of the model's ``parallel`` slots: the free one whose cache
        shares the longest beginning with this prompt's ``tokens``."""
        assert self.parallel is not None
        free = self._slot_free.get(model)
        if free is None:
            free = self._slot_free[model] = anyio.Semaphore(self.parallel)
            self._slots[model] = [[] for _ in range(self.parallel)]
        slots = self._slots[model]
        async with free:
            index = max(
                (i for i, cache in enumerate(slots) if cache is not None),
                key=lambda i: _common(slots[i] or [], tokens),
            )
            cache, slots[index] = slots[index], None  # taken
            try:
                await self._prefill(tokens, cache)
                await reply()
            finally:
                slots[index] = tokens

    async def _prefill(self, tokens: list[str], cache: list[str] | None) -> None:
        cached = _common(cache, tokens) if cache else 0
        self.prefills.append((len(tokens), cached))
        if self.prefill_delay:
            await anyio.sleep(self.prefill_delay * (len(tokens) - cached))

    async def _load(self, name: str) -> float:
        """Load ``name`` if it is not loaded, as Ollama's scheduler would (see the class);
        the seconds its load took (0: it was loaded)."""
        took = 0.0
        if self.load_delay or self.max_loaded is not None:
            # One scheduler, first come first served: a request waiting for its model to
            # load holds up the requests behind it, even those for a loaded model.
            if self._loading is None:
                self._loading = anyio.Lock()
            async with self._loading:
                while self.max_loaded is not None and name not in self.loaded:
                    if len(self.loaded) < self.max_loaded:
                        break
                    idle = [m for m in self.loaded if not self._in_use[m]]
                    if idle:
                        del self.loaded[min(idle, key=self.loaded.__getitem__)]
                        continue
                    if self._released is None:
                        self._released = anyio.Event()
                    await self._released.wait()
                if name not in self.loaded:
                    await anyio.sleep(self.load_delay)
                    self.loads[name] += 1
                    took = self.load_delay
        elif name not in self.loaded:
            self.loads[name] += 1
        self.loaded[name] = time.time() + 300  # also the least recently used order
        return took

    async def _generate_reply(
        self,
        kind: str,
        name: str,
        model: FakeModel,
        data: dict[str, Any],
        receive: Receive,
        send: Send,
        loaded_in: float = 0.0,
    ) -> None:
        reply = self._next_reply(data, kind, model)
        if reply.first_delay:
            await anyio.sleep(reply.first_delay)
        if reply.status is not None:
            await _json(send, reply.status, {"error": reply.error or "error"})
            return
        chunks = self._chunks(kind, name, data, reply)
        if loaded_in:  # Ollama reports the time the load took
            chunks[-1]["load_duration"] = int(loaded_in * 1e9)
        if data.get("stream") is False:
            if reply.error:
                await _json(send, 500, {"error": reply.error})
                return
            self._finished += 1
            await _json(send, 200, _merge(kind, chunks))
            return
        delay = self.token_delay if reply.delay is None else reply.delay
        await self._stream_completion(chunks, reply, delay, receive, send)

    def _next_reply(self, data: dict[str, Any], kind: str, model: FakeModel) -> FakeReply:
        if self._script:
            return self._script.popleft()
        reply = self.reply
        if callable(reply):
            reply = reply(data)
        if isinstance(reply, FakeReply):
            return reply
        if isinstance(reply, str):
            return FakeReply(content=reply)
        if kind == "chat":
            users = [m for m in data.get("messages") or [] if m.get("role") == "user"]
            text = str(users[-1].get("content", "")) if users else ""
        else:
            text = str(data.get("prompt") or "")
        thinking = ""
        if "thinking" in model.capabilities and data.get("think") is not False:
            thinking = f"The user wrote {len(tokenize(text))} words. I will echo them."
        return FakeReply(content=text, thinking=thinking)

    def _chunks(self, kind: str, name: str, data: dict[str, Any], reply: FakeReply) -> list[Chunk]:
        limit = (data.get("options") or {}).get("num_predict")
        content_tokens = tokenize(reply.content)
        done_reason = reply.done_reason
        if isinstance(limit, int) and limit >= 0 and len(content_tokens) > limit:
            content_tokens = content_tokens[:limit]
            done_reason = "length"
        pieces: list[tuple[str, str]] = [("thinking", t) for t in tokenize(reply.thinking)]
        pieces += [("content", t) for t in content_tokens]
        chunks: list[Chunk] = []
        for field_name, token in pieces:
            if field_name == "thinking":
                chunks.append(self._chunk(kind, name, thinking=token))
            else:
                chunks.append(self._chunk(kind, name, content=token))
        tool_calls = []
        for index, call in enumerate(reply.tool_calls):
            function = dict(call.get("function", call))
            function.setdefault("index", index)
            function.setdefault("arguments", {})
            tool_calls.append({"id": call.get("id") or _call_id(), "function": function})
        if tool_calls:
            chunks.append(self._chunk(kind, name, tool_calls=tool_calls))
        final = self._chunk(kind, name)
        final.update(done=True, done_reason=done_reason)
        if kind == "generate":
            final["context"] = list(range(1, 1 + len(content_tokens)))
        prompt_tokens = len(tokenize(json.dumps(data.get("messages") or data.get("prompt"))))
        final.update(
            total_duration=1_000_000 * (len(pieces) + 1),
            load_duration=100_000,
            prompt_eval_count=prompt_tokens,
            prompt_eval_duration=500_000,
            eval_count=len(content_tokens),
            eval_duration=900_000 * max(1, len(pieces)),
        )
        chunks.append(final)
        return chunks

    @staticmethod
    def _chunk(
        kind: str,
        name: str,
        content: str = "",
        thinking: str = "",
        tool_calls: list[Any] | None = None,
    ) -> Chunk:
        if kind == "chat":
            message: dict[str, Any] = {"role": "assistant", "content": content}
            if thinking:
                message["thinking"] = thinking
            if tool_calls:
                message["tool_calls"] = tool_calls
            return {"model": name, "created_at": _now(), "message": message, "done": False}
        chunk: Chunk = {"model": name, "created_at": _now(), "response": content}
        if thinking:
            chunk["thinking"] = thinking
        if tool_calls:
            chunk["tool_calls"] = tool_calls
        chunk["done"] = False
        return chunk

    async def _load_reply(self, kind: str, name: str, reason: str, send: Send) -> None:
        chunk = self._chunk(kind, name)
        chunk.update(done=True, done_reason=reason)
        await _json(send, 200, chunk)

    async def _stream_completion(
        self, chunks: list[Chunk], reply: FakeReply, delay: float, receive: Receive, send: Send
    ) -> None:
        record = self.requests[-1]
        disconnected = anyio.Event()

        async def watch(scope: anyio.CancelScope) -> None:
            while True:
                message: Message = await receive()
                if message["type"] == "http.disconnect":
                    disconnected.set()
                    scope.cancel()
                    return

        async with anyio.create_task_group() as group:
            group.start_soon(watch, group.cancel_scope)
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"application/x-ndjson")],
                }
            )
            if reply.raw_lines is not None:
                for line in reply.raw_lines:
                    await send({"type": "http.response.body", "body": line, "more_body": True})
                    if delay:
                        await anyio.sleep(delay)
            else:
                for index, chunk in enumerate(chunks):
                    if reply.error and reply.error_after is not None and index == reply.error_after:
                        await send(
                            {
                                "type": "http.response.body",
                                "body": _dumps({"error": reply.error}) + b"\n",
                                "more_body": True,
                            }
                        )
                        break
                    if reply.drop_after is not None and index == reply.drop_after:
                        raise _Dropped("FakeOllama cut the connection (drop_after)")
                    if self.crashed:
                        raise _Dropped("FakeOllama has crashed")
                    await send(
                        {
                            "type": "http.response.body",
                            "body": _dumps(chunk) + b"\n",
                            "more_body": True,
                        }
                    )
                    if delay and not chunk.get("done"):
                        await anyio.sleep(delay)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            self._finished += 1
            group.cancel_scope.cancel()
        if disconnected.is_set():
            self.disconnects.append(record)


def _prompt_tokens(kind: str, data: dict[str, Any]) -> list[str]:
    """The prompt as tokens, each message's role first (what a prompt cache holds)."""
    if kind == "chat":
        tokens: list[str] = []
        for message in data.get("messages") or []:
            if isinstance(message, dict):
                tokens.append(f"<{message.get('role')}>")
                tokens += tokenize(str(message.get("content") or ""))
        return tokens
    return [f"<system>{data.get('system') or ''}", *tokenize(str(data.get("prompt") or ""))]


def _common(cache: list[str], tokens: list[str]) -> int:
    """How many tokens ``tokens`` shares with ``cache`` from the beginning."""
    count = 0
    for cached, token in zip(cache, tokens, strict=False):
        if cached != token:
            break
        count += 1
    return count


def _call_id() -> str:
    return "call_" + "".join(random.choices(string.ascii_lowercase + string.digits, k=8))


def _renormalize(vector: list[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in vector)) or 1.0
    return [x / norm for x in vector]


def _merge(kind: str, chunks: list[Chunk]) -> Chunk:
    final = dict(chunks[-1])
    if kind == "chat":
        message: dict[str, Any] = {"role": "assistant", "content": ""}
        thinking = "".join(c["message"].get("thinking", "") for c in chunks)
        message["content"] = "".join(c["message"].get("content", "") for c in chunks)
        if thinking:
            message["thinking"] = thinking
        calls = [call for c in chunks for call in c["message"].get("tool_calls", [])]
        if calls:
            message["tool_calls"] = calls
        final["message"] = message
    else:
        final["response"] = "".join(c.get("response", "") for c in chunks)
        thinking = "".join(c.get("thinking", "") for c in chunks)
        if thinking:
            final["thinking"] = thinking
    return final


def _decode_body(body: bytes) -> dict[str, Any] | str:
    """The parsed JSON object, or Ollama's error text for a bad body."""
    if not body.strip():
        return "missing request body"
    try:
        value = json.loads(body)
    except json.JSONDecodeError as exc:
        if exc.pos >= len(exc.doc.rstrip()):
            return "unexpected EOF"
        return f"invalid character {exc.doc[exc.pos]!r} looking for beginning of value"
    if value is None:
        return {}
    if not isinstance(value, dict):
        return f"json: cannot unmarshal {type(value).__name__} into Go value of type api.Request"
    return value


async def _json(
    send: Send,
    status: int,
    data: Any,
    *,
    head: bool = False,
    content_type: bytes = b"application/json; charset=utf-8",
) -> None:
    body = _dumps(data)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": b"" if head else body})


async def _text(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"text/plain"),
                (b"content-length", str(len(body)).encode()),
                *(headers or ()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _empty(send: Send) -> None:
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"0")]}
    )
    await send({"type": "http.response.body", "body": b""})


async def _stream(send: Send, chunks: list[Chunk], delay: float = 0.0, *, end: bool = True) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/x-ndjson")],
        }
    )
    for chunk in chunks:
        await send({"type": "http.response.body", "body": _dumps(chunk) + b"\n", "more_body": True})
        if delay:
            await anyio.sleep(delay)
    if end:
        await send({"type": "http.response.body", "body": b"", "more_body": False})
