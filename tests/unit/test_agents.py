"""Agents and built-in commands, both dialects, streaming and not, against FakeOllama."""

from __future__ import annotations

import json
import shutil
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import BaseModel

from ollama_smart_proxy import ErrorBoundary, Settings, SmartProxy, standalone
from ollama_smart_proxy.agents import Agent, Chunk, Reply, SlashCall, chunk_text, with_text
from ollama_smart_proxy.schemas import NativeRequest
from ollama_smart_proxy.testing import FakeOllama, FakeReply
from tests.conftest import upstream

pytestmark = pytest.mark.anyio

EXAMPLES = Path(__file__).parents[2] / "examples"


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


async def ask(
    client: httpx.AsyncClient,
    messages: list[dict[str, str]],
    *,
    dialect: str = "ollama",
    stream: bool = False,
    model: str = "llama3.2",
) -> tuple[int, str]:
    """Send a chat in a dialect and return the status and the assistant's text."""
    if dialect == "ollama":
        response = await client.post(
            "/api/chat", json={"model": model, "messages": messages, "stream": stream}
        )
        if response.status_code != 200:
            return response.status_code, response.text
        if not stream:
            body = response.json()
            assert body["done"] is True
            assert body["message"]["role"] == "assistant"
            return 200, body["message"]["content"]
        lines = [json.loads(line) for line in response.content.splitlines()]
        assert lines[-1]["done"] is True
        return 200, "".join(line["message"]["content"] for line in lines)
    response = await client.post(
        "/v1/chat/completions", json={"model": model, "messages": messages, "stream": stream}
    )
    if response.status_code != 200:
        return response.status_code, response.text
    if not stream:
        choice = response.json()["choices"]
        assert len(choice) == 1
        assert choice[0]["finish_reason"] == "stop"
        return 200, choice[0]["message"]["content"]
    frames = [f[6:] for f in response.text.split("\n\n") if f]
    assert frames[-1] == "[DONE]"
    chunks = [json.loads(f) for f in frames[:-1]]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    return 200, "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)


both = pytest.mark.parametrize(
    ("dialect", "stream"),
    [("ollama", False), ("ollama", True), ("openai", False), ("openai", True)],
)


@both
async def test_help_is_a_reply_in_every_dialect(
    client: httpx.AsyncClient, fake: FakeOllama, dialect: str, stream: bool
) -> None:
    for command in ("/help", "/?"):
        status, text = await ask(client, user(command), dialect=dialect, stream=stream)
        assert status == 200
        assert text.startswith("Available commands:")
        for word in ("/help", "/set", "/load", "/show", "/clear"):
            assert word in text
    assert fake.requests == []


@both
async def test_set_parameter_is_typed_and_reapplied(
    client: httpx.AsyncClient, fake: FakeOllama, dialect: str, stream: bool
) -> None:
    status, ack = await ask(
        client, user("/set parameter temperature 0.2"), dialect=dialect, stream=stream
    )
    assert status == 200
    assert ack == "Set parameter 'temperature' to '0.2'"
    assert fake.requests == []
    history = [
        *user("/set parameter temperature 0.2"),
        {"role": "assistant", "content": ack},
        *user("/set parameter num_ctx 42"),
        {"role": "assistant", "content": "Set parameter 'num_ctx' to '42'"},
        *user("/set parameter use_mmap true"),
        {"role": "assistant", "content": "ok"},
        *user("what is 2+2"),
    ]
    status, text = await ask(client, history, dialect=dialect, stream=stream)
    assert text == "what is 2+2"
    sent = fake.calls("/api/chat")[-1].json
    assert sent["options"] == {"temperature": 0.2, "num_ctx": 42, "use_mmap": True}
    assert sent["messages"] == user("what is 2+2")


async def test_set_with_prompt_on_the_same_message(
    client: httpx.AsyncClient, fake: FakeOllama
) -> None:
    status, text = await ask(client, user("/set parameter temperature 0 what is 2+2"))
    assert text == "what is 2+2"
    assert fake.requests[-1].json["options"] == {"temperature": 0}


@pytest.mark.parametrize(
    ("command", "fragment"),
    [
        ("/set parameter temprature 0.2", "Unknown parameter 'temprature'"),
        ("/set parameter temperature hot", "'temperature' takes a number"),
        ("/set parameter num_ctx 2.5", "'num_ctx' takes a whole number"),
        ("/set parameter use_mmap maybe", "takes true or false"),
        ("/set colour blue", "Unknown /set option 'colour'"),
        ("/set", "What should I set?"),
    ],
)
async def test_bad_set_gets_a_helpful_reply(
    client: httpx.AsyncClient, fake: FakeOllama, command: str, fragment: str
) -> None:
    status, text = await ask(client, user(command))
    assert status == 200
    assert fragment in text
    assert "Usage: /set" in text
    assert fake.requests == []


@both
async def test_set_system_leaves_one_system_message(
    client: httpx.AsyncClient, fake: FakeOllama, dialect: str, stream: bool
) -> None:
    history = [
        {"role": "system", "content": "You are chatty."},
        *user("hi"),
        {"role": "assistant", "content": "hello!"},
        *user("/set system You are terse"),
        {"role": "assistant", "content": "Set system message."},
        *user("tell me a joke"),
    ]
    await ask(client, history, dialect=dialect, stream=stream)
    sent = fake.calls("/api/chat")[-1].json["messages"]
    systems = [m for m in sent if m["role"] == "system"]
    assert systems == [{"role": "system", "content": "You are terse"}]
    assert sent[-2:] == [{"role": "system", "content": "You are terse"}, *user("tell me a joke")]
    assert all("/set" not in m["content"] for m in sent)


async def test_set_format_think_and_their_opposites(
    client: httpx.AsyncClient, fake: FakeOllama
) -> None:
    history = [
        *user("/set format json"),
        {"role": "assistant", "content": "ok"},
        *user("/set think"),
        {"role": "assistant", "content": "ok"},
        *user("go"),
    ]
    await ask(client, history, model="qwen3")
    sent = fake.requests[-1].json
    assert sent["format"] == "json"
    assert sent["think"] is True
    history += [
        {"role": "assistant", "content": "..."},
        *user("/set noformat"),
        {"role": "assistant", "content": "ok"},
        *user("/set nothink"),
        {"role": "assistant", "content": "ok"},
        *user("again"),
    ]
    await ask(client, history, model="qwen3")
    sent = fake.requests[-1].json
    assert "format" not in sent
    assert sent["think"] is False


@both
async def test_load_switches_model(
    client: httpx.AsyncClient, fake: FakeOllama, dialect: str, stream: bool
) -> None:
    status, ack = await ask(client, user("/load qwen3"), dialect=dialect, stream=stream)
    assert ack == "Loaded 'qwen3'"
    # loaded for real: an empty generate request, as Ollama's own clients load a model
    assert [(r.path, r.json) for r in fake.requests] == [("/api/generate", {"model": "qwen3"})]
    assert "qwen3:latest" in fake.loaded
    await ask(
        client,
        [*user("/load qwen3"), {"role": "assistant", "content": ack}, *user("hi")],
        dialect=dialect,
        stream=stream,
    )
    assert fake.calls("/api/chat")[-1].json["model"] == "qwen3"
    assert len(fake.calls("/api/generate")) == 1  # a replayed /load does not load again


@both
async def test_a_failed_load_in_the_history_breaks_no_later_turn(
    client: httpx.AsyncClient, fake: FakeOllama, dialect: str, stream: bool
) -> None:
    status, failed = await ask(client, user("/load nope"), dialect=dialect, stream=stream)
    assert failed.startswith("Could not load 'nope'")
    _, loaded = await ask(client, user("/load qwen3"), dialect=dialect, stream=stream)
    history = [
        *user("/load qwen3"),
        {"role": "assistant", "content": loaded},
        *user("/load nope"),
        {"role": "assistant", "content": failed},
        *user("hi"),
    ]
    status, _ = await ask(client, history, dialect=dialect, stream=stream)
    assert status == 200
    # the last /load that worked holds; the one that failed is not replayed
    assert fake.calls("/api/chat")[-1].json["model"] == "qwen3"
    status, _ = await ask(client, history[2:], dialect=dialect, stream=stream)
    assert status == 200 and fake.calls("/api/chat")[-1].json["model"] == "llama3.2"


async def test_a_failed_load_names_the_model_the_request_had(
    client: httpx.AsyncClient, fake: FakeOllama
) -> None:
    response = await client.post(
        "/api/chat", json={"model": "llama3.2", "messages": user("/load nope"), "stream": False}
    )
    assert response.json()["model"] == "llama3.2"
    assert response.json()["message"]["content"].startswith("Could not load 'nope'")


async def test_show_and_clear(client: httpx.AsyncClient, fake: FakeOllama) -> None:
    status, text = await ask(client, user("/show"))
    assert "Model: llama3.2" in text
    assert "capabilities  completion, tools" in text
    assert [r.path for r in fake.requests] == ["/api/show"]
    status, text = await ask(client, user("/show template"))
    assert text == "{{ .Prompt }}"
    status, text = await ask(client, user("/show"), model="nope")
    assert "Could not show 'nope'" in text
    status, text = await ask(client, user("/clear"))
    assert text == "Cleared session context."
    assert not fake.calls("/api/chat")


async def test_generate_commands(client: httpx.AsyncClient, fake: FakeOllama) -> None:
    response = await client.post(
        "/api/generate", json={"model": "llama3.2", "prompt": "/help", "stream": False}
    )
    assert response.json()["response"].startswith("Available commands")
    assert response.json()["done"] is True
    await client.post(
        "/api/generate",
        json={"model": "llama3.2", "prompt": "/set system Be brief\nwhy?", "stream": False},
    )
    assert fake.requests[-1].json == {
        "model": "llama3.2",
        "prompt": "why?",
        "stream": False,
        "system": "Be brief",
    }


async def test_unregistered_and_paths_untouched(
    client: httpx.AsyncClient, fake: FakeOllama
) -> None:
    for text in ("/usr/bin/env python3", "/unknown thing", "/etc/hosts"):
        await ask(client, user(text))
        assert fake.requests[-1].json["messages"] == user(text)


# -- writing agents ---------------------------------------------------------------------


class Shout(Agent):
    name = "shout"
    summary = "Answer in capitals"
    usage = "/shout TEXT"

    async def on_chunk(self, chunk: Chunk) -> Chunk | None:
        return with_text(chunk, chunk_text(chunk).upper())


class Marker(Agent):
    """Always on: records the order agents see the request and the chunks."""

    activation = "always"

    class Options(BaseModel):
        tag: str = "m"

    async def on_request(self, request: NativeRequest, call: SlashCall | None) -> Reply | None:
        request.options = {
            **(request.options or {}),
            "trail": [*(request.options or {}).get("trail", []), self.options.tag],
        }
        return None

    async def on_chunk(self, chunk: Chunk) -> Chunk | None:
        return (
            with_text(chunk, chunk_text(chunk) + self.options.tag) if chunk_text(chunk) else chunk
        )


class First(Marker):
    name = "first"
    priority = 1


class Second(Marker):
    name = "second"
    priority = 2


class Guard(Agent):
    name = "guard"
    buffer = True

    async def on_end(self, text: str | None) -> str | None:
        return "[blocked]" if text and "secret" in text else None


class Signature(Agent):
    name = "sign"

    async def on_end(self, text: str | None) -> str | None:
        return " -- signed"


def proxy_with(fake: FakeOllama, *agents: type[Agent], **settings: Any) -> httpx.AsyncClient:
    app = SmartProxy(
        Settings(**settings), agents=agents, transport=upstream(fake), entry_points=False
    )
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://p")


@both
async def test_response_agent_command_removed_and_chunks_rewritten(
    fake: FakeOllama, dialect: str, stream: bool
) -> None:
    async with proxy_with(fake, Shout) as client:
        status, text = await ask(
            client, user("/shout make me loud"), dialect=dialect, stream=stream
        )
    assert text == "MAKE ME LOUD"
    assert fake.requests[-1].json["messages"] == user("make me loud")


async def test_order_priority_and_configured(fake: FakeOllama) -> None:
    options = {"agent_options": {"first": {"tag": "1"}, "second": {"tag": "2"}}}
    async with proxy_with(fake, Second, First, **options) as client:
        status, text = await ask(client, user("x"), stream=True)
    assert fake.requests[-1].json["options"]["trail"] == ["1", "2"]  # outermost first
    assert text == "x21"  # responses unwind innermost first
    async with proxy_with(
        fake, Second, First, agent_order=["second", "first"], **options
    ) as client:
        status, text = await ask(client, user("x"))
    assert fake.requests[-1].json["options"]["trail"] == ["2", "1"]
    assert text == "x12"


async def test_custom_prefix(fake: FakeOllama) -> None:
    async with proxy_with(fake, command_prefix="!") as client:
        _, text = await ask(client, user("!help"))
        assert "!set parameter NAME VALUE" in text
        _, text = await ask(client, user("/help"))
        assert text == "/help"  # reached the model


async def test_disabled_and_enabled(fake: FakeOllama) -> None:
    async with proxy_with(fake, First, disabled_agents=["first", "help"]) as client:
        status, text = await ask(client, user("/help"))
    assert text == "/help"  # not a command any more: it reached the model
    assert "options" not in fake.requests[-1].json


@pytest.mark.parametrize("stream", [False, True])
async def test_buffered_guard_and_end_hook(fake: FakeOllama, stream: bool) -> None:
    async with proxy_with(fake, Guard, Signature) as client:
        status, text = await ask(client, user("/guard the secret is 42"), stream=stream)
        assert text == "[blocked]"
        status, text = await ask(client, user("/guard all fine"), stream=stream)
        assert text == "all fine"
        status, text = await ask(client, user("/sign hello"), stream=stream)
        assert text == "hello -- signed"


async def test_agent_alone_around_fake_ollama(fake: FakeOllama) -> None:
    app = standalone(Shout(fake))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://p"
    ) as client:
        status, text = await ask(client, user("/shout quiet words"), stream=True)
        assert text == "QUIET WORDS"
        status, text = await ask(client, user("untouched"))
        assert text == "untouched"
        bad = await client.post("/api/chat", content=b"{")
        assert bad.status_code == 400
        tags = await client.get("/api/tags")
        assert tags.status_code == 200


async def test_an_agent_with_no_exchange_says_how_to_serve_it_alone(fake: FakeOllama) -> None:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=ErrorBoundary(Shout(fake))), base_url="http://p"
    ) as client:
        response = await client.post(
            "/api/chat", json={"model": "llama3.2", "messages": user("/shout hi")}
        )
        tags = await client.get("/api/tags")
    assert response.status_code == 500
    assert "standalone(agent)" in response.json()["error"]
    assert tags.status_code == 200  # what is not a model request passes through


async def test_invalid_options_raise_value_error() -> None:
    with pytest.raises(ValueError, match="invalid options for agent first"):
        First(FakeOllama(), tag=3)


# -- plugins ------------------------------------------------------------------------------


@pytest.fixture
def plugins(tmp_path: Path) -> Path:
    shutil.copytree(EXAMPLES / "plugins" / "translate", tmp_path / "translate")
    shutil.copytree(EXAMPLES / "plugins" / "redact", tmp_path / "redact")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "agent.py").write_text("import nothing_here_at_all\n")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "agent.py").write_text("X = 1\n")
    (tmp_path / "badconfig").mkdir()
    (tmp_path / "badconfig" / "agent.py").write_text(
        "from pydantic import BaseModel\nfrom ollama_smart_proxy.agents import Agent\n\n"
        "class Opts(BaseModel):\n    level: int = 1\n\n"
        "class Picky(Agent):\n    name = 'picky'\n    Options = Opts\n"
    )
    (tmp_path / "badconfig" / "config.json").write_text('{"level": "high"}')
    (tmp_path / "not-a-plugin").mkdir()
    return tmp_path


async def test_plugin_folders_good_and_broken(fake: FakeOllama, plugins: Path) -> None:
    async with proxy_with(fake, plugins_dirs=[plugins]) as client:
        listed = (await client.get("/plugins")).json()
        status, text = await ask(client, user("/translate fr good morning"))
    agents = {a["name"]: a for a in listed["agents"]}
    assert {"help", "set", "load", "show", "clear", "translate", "redact"} <= set(agents)
    translate = agents["translate"]
    assert translate["source"] == f"folder:{plugins / 'translate'}"
    assert translate["options"] == {"temperature": 0.1}
    assert translate["options_schema"]["properties"]["temperature"]["type"] == "number"
    assert translate["enabled"] is True
    assert set(translate) >= {
        "name",
        "summary",
        "usage",
        "source",
        "enabled",
        "priority",
        "activation",
        "options_schema",
    }
    errors = {e["source"]: e["reason"] for e in listed["errors"]}
    assert "No module named 'nothing_here_at_all'" in errors[f"folder:{plugins / 'broken'}"]
    assert errors[f"folder:{plugins / 'empty'}"] == "agent.py defines no Agent subclass"
    assert "invalid options for 'picky': level" in errors[f"folder:{plugins / 'badconfig'}"]
    sent = fake.requests[-1].json
    assert sent["messages"][0]["role"] == "system"
    assert "French" in sent["messages"][0]["content"]
    assert sent["messages"][1] == {"role": "user", "content": "good morning"}
    assert sent["options"] == {"temperature": 0.1}


async def test_entry_points(fake: FakeOllama, monkeypatch: pytest.MonkeyPatch) -> None:
    group = "ollama_smart_proxy.agents"
    points = [
        EntryPoint("shout", "tests.unit.test_agents:Shout", group),
        EntryPoint("missing", "tests.unit.no_such_module:Agent", group),
        EntryPoint("notagent", "tests.unit.test_agents:user", group),
    ]
    monkeypatch.setattr("ollama_smart_proxy.agents.registry.entry_points", lambda group: points)
    app = SmartProxy(transport=upstream(fake))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://p"
    ) as client:
        listed = (await client.get("/plugins")).json()
        status, text = await ask(client, user("/shout hey"))
    assert text == "HEY"
    shout = next(a for a in listed["agents"] if a["name"] == "shout")
    assert shout["source"] == "entry_point:shout (tests.unit.test_agents:Shout)"
    reasons = [e["reason"] for e in listed["errors"]]
    assert any("import failed" in r for r in reasons)
    assert "the entry point is not an Agent subclass" in reasons


async def test_redact_plugin_across_chunks(fake: FakeOllama, plugins: Path) -> None:
    answer = (
        "Write to jane.doe@example.com or call 4111 1111 1111 1111, key sk-abcdefghijklmnop1234 ok"
    )
    async with proxy_with(fake, plugins_dirs=[plugins]) as client:
        for stream in (True, False):
            fake.script(FakeReply(content=answer))
            status, text = await ask(client, user("/redact tell me"), stream=stream)
            assert text == "Write to [redacted] or call [redacted], key [redacted] ok"
        status, ack = await ask(client, user("/redact"))
        assert ack.startswith("Redaction is on")
        fake.script(FakeReply(content="mail a@b.io"))
        history = [*user("/redact"), {"role": "assistant", "content": ack}, *user("hi")]
        status, text = await ask(client, history, dialect="openai", stream=True)
        assert text == "mail [redacted]"


async def test_per_request_options_are_not_shared(fake: FakeOllama) -> None:
    """A hook that changes a mutable option changes it for its own request only."""

    class CollectOptions(BaseModel):
        seen: list[str] = []

    class Collect(Agent):
        name = "collect"
        Options = CollectOptions

        async def on_request(self, request: NativeRequest, call: SlashCall | None) -> Reply | None:
            self.options.seen.append(call.prompt if call else "")
            return Reply(",".join(self.options.seen))

    app = SmartProxy(agents=[Collect], transport=upstream(fake), entry_points=False)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://p") as c:
        for word in ("one", "two"):
            status, text = await ask(c, user(f"/collect {word}"))
            assert text == word  # not "one,two": the list is per request


# -- the agent contract -------------------------------------------------------------------


class Remember(Agent):
    """State made in ``__init__``: per request, unless named in ``shared``."""

    name = "remember"
    activation = "always"
    shared = frozenset({"everyone"})

    def __init__(self, app: Any, **options: Any) -> None:
        super().__init__(app, **options)
        self.mine: list[str] = []
        self.everyone: list[str] = []

    async def on_request(self, request: NativeRequest, call: SlashCall | None) -> Reply | None:
        self.mine.append("seen")
        self.everyone.append("seen")
        return Reply(f"{len(self.mine)} {len(self.everyone)}")


async def test_state_made_in_init_is_per_request_and_shared_state_says_so(
    fake: FakeOllama,
) -> None:
    app = standalone(Remember(fake))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://p") as c:
        answers = [(await ask(c, user("hi")))[1] for _ in range(3)]
    assert answers == ["1 1", "1 2", "1 3"]


class Noop(Agent):
    """Always on, changes nothing."""

    name = "noop"
    activation = "always"

    async def on_request(self, request: NativeRequest, call: SlashCall | None) -> Reply | None:
        assert request.model
        return None


async def test_ollama_gets_the_clients_bytes_when_no_agent_changed_anything() -> None:
    fake = FakeOllama()
    body = b'{"model":"llama3.2","messages":[{"role":"user","content":"hi"}],  "stream":false}'
    settings = Settings(drop_unsupported_tools=True)
    async with SmartProxy(settings, agents=[Noop], transport=upstream(fake)) as proxy:
        transport = httpx.ASGITransport(app=proxy)
        async with httpx.AsyncClient(transport=transport, base_url="http://p") as client:
            response = await client.post("/api/chat", content=body)
            changed = await client.post(
                "/api/chat", content=body.replace(b'"hi"', b'"/set parameter seed 1 hi"')
            )
    assert response.status_code == changed.status_code == 200
    assert fake.requests[0].body == body
    assert fake.requests[1].json["options"] == {"seed": 1}


class Polite(Agent):
    """Changes what the model sees through ``self.prompt``."""

    name = "polite"
    arity = 0

    async def on_request(self, request: NativeRequest, call: SlashCall | None) -> Reply | None:
        assert call is not None
        with pytest.raises(AttributeError):
            call.prompt = "changed"  # type: ignore[misc]  # the command as typed is read-only
        assert self.prompt == call.prompt == "pass the salt"
        self.prompt = f"please {self.prompt}"
        return None


@pytest.mark.parametrize("path", ["/api/chat", "/api/generate"])
async def test_one_place_holds_the_prompt_after_the_command(fake: FakeOllama, path: str) -> None:
    app = standalone(Polite(fake))
    body: dict[str, Any] = {"model": "llama3.2", "stream": False}
    if path == "/api/chat":
        body["messages"] = user("/polite pass the salt")
    else:
        body["prompt"] = "/polite pass the salt"
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://p") as c:
        response = await c.post(path, json=body)
    assert response.status_code == 200
    sent = fake.requests[0].json
    text = sent["messages"][-1]["content"] if path == "/api/chat" else sent["prompt"]
    assert text == "please pass the salt"


@pytest.mark.slow
def test_a_typed_agent_passes_mypy_strict() -> None:
    """What docs/agents.md shows, typed as a plugin author types it."""
    from mypy import api

    root = EXAMPLES.parent
    source = root / "tests" / "data" / "typed_agent.py"
    # The package's own cache (CI type-checks the package first): the agent alone is new.
    cache = root / ".mypy_cache"
    out, err, status = api.run(["--strict", "--cache-dir", str(cache), str(source)])
    assert status == 0, out + err
