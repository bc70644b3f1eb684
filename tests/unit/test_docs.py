from __future__ import annotations

from pathlib import Path

from ollama_smart_proxy import Settings

DOCS = Path(__file__).parents[2] / "docs"


def test_configuration_reference_lists_every_setting() -> None:
    text = (DOCS / "configuration.md").read_text()
    for name in Settings.model_fields:
        assert f"| `{name}` |" in text, name
        assert f"OSP_{name.upper()}" in text, name
