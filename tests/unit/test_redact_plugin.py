"""The example `redact` plugin is correct whatever the chunk boundaries (hypothesis)."""

from __future__ import annotations

import importlib.util
import itertools
from pathlib import Path
from types import ModuleType

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ollama_smart_proxy.testing import FakeOllama

PLUGIN = Path(__file__).parents[2] / "examples" / "plugins" / "redact" / "agent.py"


def load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("redact_under_test", PLUGIN)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


redact_module = load()

pieces = st.lists(
    st.one_of(
        st.sampled_from(
            [
                "jane.doe@example.com",
                "a@b.io",
                "4111 1111 1111 1111",
                "4111-1111-1111-1111",
                "123456789012",
                "sk-abcdefghijklmnop1234",
                "ghp_ABCDEFGHIJKLMNOP12",
                "12345",
                "2026-11-27",
            ]
        ),
        st.text(alphabet="abc .,\n@-1", max_size=8),
    ),
    max_size=12,
).map(" ".join)


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(text=pieces, cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=20))
def test_any_chunking_masks_like_the_whole_text(text: str, cuts: list[int]) -> None:
    points = sorted({0, len(text), *(c % (len(text) + 1) for c in cuts)})
    parts = [text[a:b] for a, b in itertools.pairwise(points)]

    async def run() -> str:
        agent = redact_module.Redact(FakeOllama())
        agent.pending = ""
        out = []
        for part in parts:
            chunk = {"message": {"role": "assistant", "content": part}, "done": False}
            result = await agent.on_chunk(chunk)
            if result is not None:
                out.append(result["message"]["content"])
        out.append(await agent.on_end(None) or "")
        return "".join(out)

    assert anyio.run(run) == redact_module.redact(text)
