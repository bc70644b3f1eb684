"""The slash-command parser and history cleaning (DESIGN.md §4), with hypothesis."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from ollama_smart_proxy.agents.builtins import BUILTIN_AGENTS
from ollama_smart_proxy.commands import CommandSpec, SlashCall, parse, parse_commands, split_words
from ollama_smart_proxy.schemas import ChatRequest, GenerateRequest, ModelRequest


def prepare(
    request: ModelRequest, prefix: str, words: dict[str, CommandSpec]
) -> tuple[SlashCall | None, list[SlashCall]]:
    found = parse_commands(request, prefix, words)
    return found.current, found.replays


WORDS: dict[str, CommandSpec] = {}
for agent in BUILTIN_AGENTS:
    WORDS.update(agent.command_words())
WORDS["translate"] = CommandSpec("translate", split_words(1))


@pytest.mark.parametrize(
    ("text", "name", "args", "prompt"),
    [
        ("/help", "help", [], ""),
        ("/?", "help", [], ""),
        ("  /help  ", "help", [], ""),
        ("/set parameter temperature 0.2", "set", ["parameter", "temperature", "0.2"], ""),
        (
            "/set parameter temperature 0 what is 2+2",
            "set",
            ["parameter", "temperature", "0"],
            "what is 2+2",
        ),
        ("/set system You are terse", "set", ["system", "You are terse"], ""),
        (
            "/set system You are terse\nWhat is 2+2?",
            "set",
            ["system", "You are terse"],
            "What is 2+2?",
        ),
        ("/set think", "set", ["think"], ""),
        ("/set format json list three colours", "set", ["format", "json"], "list three colours"),
        ("/load qwen3", "load", ["qwen3"], ""),
        ("/load qwen3 hello there", "load", ["qwen3"], "hello there"),
        ("/translate fr good morning", "translate", ["fr"], "good morning"),
        ("/translate fr\ngood\nmorning", "translate", ["fr"], "good\nmorning"),
        ("/HELP", "help", [], ""),
    ],
)
def test_parse(text: str, name: str, args: list[str], prompt: str) -> None:
    call = parse(text, "/", WORDS)
    assert call is not None
    assert (call.name, call.args, call.prompt) == (name, args, prompt)


@pytest.mark.parametrize(
    "text",
    [
        "/usr/bin/env python",
        "/etc/hosts",
        "/helpme",
        "/set/x",
        "hello /help",
        "/",
        "//help",
        "/unknown x",
        "",
    ],
)
def test_not_commands(text: str) -> None:
    assert parse(text, "/", WORDS) is None


def test_custom_prefix() -> None:
    assert parse("!help", "!", WORDS) is not None
    assert parse("/help", "!", WORDS) is None


registered = st.sampled_from(sorted(WORDS))
plain_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)


@given(word=st.from_regex(r"[a-z?]{1,10}", fullmatch=True), rest=plain_text)
def test_unregistered_words_are_untouched(word: str, rest: str) -> None:
    assume(word not in WORDS)
    text = f"/{word} {rest}"
    assert parse(text, "/", WORDS) is None
    request = ChatRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": text}]}
    )
    assert prepare(request, "/", WORDS) == (None, [])
    assert request.messages is not None
    assert request.messages[0].content == text


@given(path=st.from_regex(r"(/[a-z]{1,6}){2,4}", fullmatch=True), rest=plain_text)
def test_paths_are_not_commands(path: str, rest: str) -> None:
    assert parse(path + rest, "/", WORDS) is None


@pytest.mark.slow
@given(
    word=registered,
    words=st.lists(st.from_regex(r"[A-Za-z0-9.+-]{1,8}", fullmatch=True), max_size=6),
)
def test_user_text_is_never_lost(word: str, words: list[str]) -> None:
    text = f"/{word} " + " ".join(words)
    call = parse(text, "/", WORDS)
    assert call is not None
    rebuilt = " ".join([f"/{word}", *call.args, call.prompt]).split()
    if call.name == "set" and call.args and call.args[0] == "system":
        rebuilt = " ".join([f"/{word}", call.args[0], *call.args[1:], call.prompt]).split()
    assert rebuilt == text.split()


def _chat(messages: list[tuple[str, str]]) -> ChatRequest:
    return ChatRequest.model_validate(
        {"model": "m", "messages": [{"role": r, "content": c} for r, c in messages]}
    )


conversation = st.lists(
    st.tuples(
        st.sampled_from(["user", "assistant", "system"]),
        st.one_of(
            plain_text,
            st.builds(lambda w, t: f"/{w} {t}", registered, plain_text),
            st.sampled_from(["/set parameter temperature 0.5", "/help", "/load qwen3", "/clear"]),
        ),
    ),
    max_size=8,
)


@given(messages=conversation)
def test_parse_then_clean_is_idempotent(messages: list[tuple[str, str]]) -> None:
    request = _chat(messages)
    prepare(request, "/", WORDS)
    once = [m.model_dump() for m in request.messages or []]
    prepare(request, "/", WORDS)
    assert [m.model_dump() for m in request.messages or []] == once
    for message in request.messages or []:
        if message.role == "user":  # system messages are the client's own, kept as sent
            assert parse(message.content, "/", WORDS) is None


def test_history_cleaning() -> None:
    request = _chat(
        [
            ("user", "/set parameter temperature 0.2"),
            ("assistant", "Set parameter 'temperature' to '0.2'"),
            ("user", "/help"),
            ("assistant", "Available commands: ..."),
            ("user", "/load qwen3"),
            ("assistant", "Loaded 'qwen3'"),
            ("user", "/translate fr bonjour"),
            ("assistant", "hello"),
            ("user", "what now?"),
        ]
    )
    current, replays = prepare(request, "/", WORDS)
    assert current is None
    assert [(c.name, c.args) for c in replays] == [
        ("set", ["parameter", "temperature", "0.2"]),
        ("load", ["qwen3"]),
    ]
    assert [(m.role, m.content) for m in request.messages or []] == [
        ("user", "bonjour"),
        ("assistant", "hello"),
        ("user", "what now?"),
    ]


def test_clear_drops_history_and_session_state() -> None:
    request = _chat(
        [
            ("system", "be nice"),
            ("user", "/set parameter temperature 0.2"),
            ("assistant", "ok"),
            ("user", "old question"),
            ("assistant", "old answer"),
            ("user", "/clear"),
            ("assistant", "Cleared session context."),
            ("user", "new question"),
        ]
    )
    current, replays = prepare(request, "/", WORDS)
    assert current is None
    assert replays == []
    assert [(m.role, m.content) for m in request.messages or []] == [
        ("system", "be nice"),
        ("user", "new question"),
    ]


def test_generate_prompt_is_parsed() -> None:
    request = GenerateRequest.model_validate({"model": "m", "prompt": "/set think why?"})
    current, _ = prepare(request, "/", WORDS)
    assert current is not None
    assert current.name == "set"
    assert request.prompt == "why?"


def test_only_latest_user_message_is_current() -> None:
    request = _chat([("user", "/help"), ("assistant", "help text"), ("user", "hi")])
    current, _ = prepare(request, "/", WORDS)
    assert current is None
    data: list[Any] = [(m.role, m.content) for m in request.messages or []]
    assert data == [("user", "hi")]
