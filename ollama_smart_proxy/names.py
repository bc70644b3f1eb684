"""Model names, matched as Ollama matches them.

Ollama's names are ``[host/][namespace/]model[:tag]`` with the defaults ``registry.ollama.ai``,
``library`` and ``latest``, compared without regard to case: ``Llama3.2``,
``llama3.2:latest`` and ``registry.ollama.ai/library/llama3.2:latest`` are one model.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from fnmatch import fnmatchcase

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"


def canonical(name: str) -> str:
    """The full, lower-case form: ``llama3.2`` -> ``registry.ollama.ai/library/llama3.2:latest``."""
    name = name.strip().lower()
    parts = name.split("/")
    last = parts[-1]
    if ":" not in last:
        last = f"{last}:{DEFAULT_TAG}"
    if len(parts) == 1:
        parts = [DEFAULT_HOST, DEFAULT_NAMESPACE, last]
    elif len(parts) == 2:
        parts = [DEFAULT_HOST, parts[0], last]
    else:
        parts = [*parts[:-1], last]
    return "/".join(parts)


def short(name: str) -> str:
    """The form Ollama lists: the default host and namespace left out (``llama3.2:latest``)."""
    full = canonical(name)
    prefix = f"{DEFAULT_HOST}/{DEFAULT_NAMESPACE}/"
    if full.startswith(prefix):
        return full[len(prefix) :]
    if full.startswith(DEFAULT_HOST + "/"):
        return full[len(DEFAULT_HOST) + 1 :]
    return full


def same(a: str, b: str) -> bool:
    """Whether two names are one model for Ollama."""
    return canonical(a) == canonical(b)


def parts(name: str) -> tuple[str, str, str, str]:
    """A name's host, namespace, model and tag, defaults filled in, lower-cased."""
    host, _, rest = canonical(name).partition("/")
    namespace, _, last = rest.rpartition("/")
    model, _, tag = last.partition(":")
    return host, namespace, model, tag


def matches(pattern: str, name: str) -> bool:
    """Whether ``name`` matches a shell-style ``pattern``, segment by segment, without regard
    to case: ``*`` never crosses ``/`` or ``:``.

    ``model[:tag]`` (``llama3*``, ``qwen*:8b``, ``*``) matches models of the default
    registry's ``library``; ``namespace/model[:tag]`` names a namespace of the default
    registry; only ``host/namespace/model[:tag]`` matches another registry. A pattern without
    a tag matches every tag. So ``llama3*`` never admits ``llama3.evil.example/library/x``.
    """
    segments = pattern.strip().lower().split("/")
    if len(segments) > 3 or not all(segments):
        return False
    model_pattern, has_tag, tag_pattern = segments[-1].partition(":")
    host_pattern = segments[0] if len(segments) == 3 else DEFAULT_HOST
    namespace_pattern = segments[-2] if len(segments) >= 2 else DEFAULT_NAMESPACE
    host, namespace, model, tag = parts(name)
    return (
        fnmatchcase(host, host_pattern)
        and fnmatchcase(namespace, namespace_pattern)
        and fnmatchcase(model, model_pattern)
        and (not has_tag or fnmatchcase(tag, tag_pattern))
    )


def first_match(patterns: Iterable[str], name: str) -> str | None:
    """The first pattern ``name`` matches, or ``None``."""
    for pattern in patterns:
        if matches(pattern, name):
            return pattern
    return None


class Aliases:
    """Alias -> model, looked up as Ollama would look the alias up (any spelling)."""

    def __init__(self, aliases: Mapping[str, str] | None = None) -> None:
        self.mapping = dict(aliases or {})
        self._by_name = {canonical(alias): model for alias, model in self.mapping.items()}

    def __bool__(self) -> bool:
        return bool(self.mapping)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and canonical(name) in self._by_name

    def resolve(self, name: str) -> str:
        """The model an alias stands for; any other name as it is."""
        return self._by_name.get(canonical(name), name) if self._by_name else name


__all__ = ["Aliases", "canonical", "first_match", "matches", "parts", "same", "short"]
