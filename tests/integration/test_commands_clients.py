"""Slash commands typed into real clients (openai and ollama SDKs) over real sockets."""

from __future__ import annotations

import ollama
import openai

from ollama_smart_proxy.testing import FakeOllama


def test_chat_ui_flow_with_openai_sdk(proxy_url: str, fake: FakeOllama) -> None:
    """What Open WebUI does: every turn resends the history, acknowledgements included."""
    with openai.OpenAI(base_url=proxy_url + "/v1", api_key="x", max_retries=0) as client:
        history: list[dict[str, str]] = []

        def say(text: str, stream: bool = False) -> str:
            history.append({"role": "user", "content": text})
            if stream:
                chunks = client.chat.completions.create(
                    model="llama3.2", messages=history, stream=True
                )  # type: ignore[arg-type]
                answer = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            else:
                reply = client.chat.completions.create(model="llama3.2", messages=history)  # type: ignore[arg-type]
                answer = reply.choices[0].message.content or ""
            history.append({"role": "assistant", "content": answer})
            return answer

        assert say("/help", stream=True).startswith("Available commands:")
        assert say("/set system You are a pirate") == "Set system message."
        assert say("/set parameter temperature 0.3") == "Set parameter 'temperature' to '0.3'"
        assert fake.requests == []
        assert say("hello there", stream=True) == "hello there"
        sent = fake.calls("/api/chat")[-1].json
        assert sent["messages"] == [
            {"role": "system", "content": "You are a pirate"},
            {"role": "user", "content": "hello there"},
        ]
        assert sent["options"] == {"temperature": 0.3}
        assert say("/load qwen3") == "Loaded 'qwen3'"
        assert say("and now?") == "and now?"
        sent = fake.calls("/api/chat")[-1].json
        assert sent["model"] == "qwen3"
        assert [m["content"] for m in sent["messages"] if m["role"] == "user"] == [
            "hello there",
            "and now?",
        ]


def test_ollama_client_commands(proxy_url: str, fake: FakeOllama) -> None:
    with ollama.Client(host=proxy_url) as client:
        help_text = client.chat(model="llama3.2", messages=[{"role": "user", "content": "/?"}])
        assert help_text.message.content.startswith("Available commands:")  # type: ignore[union-attr]
        assert help_text.done is True
        parts = list(
            client.chat(
                model="llama3.2",
                messages=[
                    {"role": "user", "content": "/set parameter num_ctx 4096 count to three"}
                ],
                stream=True,
            )
        )
        assert "".join(p.message.content or "" for p in parts) == "count to three"
        assert fake.calls("/api/chat")[-1].json["options"] == {"num_ctx": 4096}
