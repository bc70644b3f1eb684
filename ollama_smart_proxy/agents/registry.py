"""Finding agents (built-ins, entry points, plugin folders), ordering them, building the stack."""

from __future__ import annotations

import functools
import importlib.util
import inspect
import json
import logging
import sys
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ..commands import CommandSpec
from ..exchange import get_exchange
from ..kinds import COMPLETION_KINDS
from ..types import ASGIApp, Receive, Scope, Send
from .base import Agent
from .builtins import BUILTIN_AGENTS, HelpCommand

logger = logging.getLogger("ollama_smart_proxy.agents")

ENTRY_POINT_GROUP = "ollama_smart_proxy.agents"


@dataclass
class AgentSpec:
    """One agent the proxy knows of, whether it runs or not."""

    cls: type[Agent]
    source: str
    options: dict[str, Any] = field(default_factory=dict)
    enabled: bool = True

    @property
    def name(self) -> str:
        return self.cls.name or self.cls.__name__

    def describe(self, order: int | None) -> dict[str, Any]:
        cls = self.cls
        return {
            "name": self.name,
            "summary": cls.summary,
            "usage": cls.usage,
            "source": self.source,
            "enabled": self.enabled,
            "priority": cls.priority,
            "order": order,
            "activation": cls.activation,
            "session": cls.session,
            "commands": [cls.name, *cls.aliases] if cls.name else [],
            "options": self.options,
            "options_schema": cls.Options.model_json_schema(),
        }


@dataclass
class LoadError:
    """A plugin that could not be loaded, and why."""

    source: str
    reason: str

    def describe(self) -> dict[str, str]:
        return {"source": self.source, "reason": self.reason}


class AgentRegistry:
    """The agents of one proxy: what was found, what runs, in which order."""

    def __init__(self, specs: Sequence[AgentSpec] = (), errors: Sequence[LoadError] = ()) -> None:
        self.specs = list(specs)
        self.errors = list(errors)

    @classmethod
    def discover(
        cls,
        agents: Iterable[type[Agent]] = (),
        *,
        builtins: bool = True,
        entry_points: bool = True,
        plugins_dirs: Iterable[str | Path] = (),
        agent_options: Mapping[str, Mapping[str, Any]] | None = None,
        enabled: Collection[str] | None = None,
        disabled: Collection[str] = (),
        order: Sequence[str] = (),
    ) -> AgentRegistry:
        """Built-ins, then ``agents`` given in code, entry points, and plugin folders.

        ``agent_options`` are options per agent name (over a plugin's ``config.json``);
        ``enabled`` (``None``: all) and ``disabled`` pick the agents that run; ``order``
        puts some first, outermost first.
        """
        registry = cls()
        found: list[tuple[type[Agent], str, dict[str, Any]]] = []
        if builtins:
            found += [(agent, "builtin", {}) for agent in BUILTIN_AGENTS]
        found += [(agent, "code", {}) for agent in agents]
        if entry_points:
            found += registry._from_entry_points()
        for folder in plugins_dirs:
            found += registry._from_folder(Path(folder))
        seen: dict[str, str] = {}
        configured = agent_options or {}
        for agent, source, config in found:
            name = agent.name or agent.__name__
            if name in seen:
                registry._error(source, f"agent name '{name}' is already used by {seen[name]}")
                continue
            options = {**config, **configured.get(name, {})}
            try:
                agent.Options(**options)
            except ValidationError as exc:
                registry._error(source, f"invalid options for '{name}': {_first_error(exc)}")
                continue
            seen[name] = source
            runs = name not in disabled and (enabled is None or name in enabled)
            registry.specs.append(AgentSpec(agent, source, options, runs))
        registry._order = list(order)
        return registry

    _order: list[str] = []

    def _error(self, source: str, reason: str) -> None:
        logger.error("agent not loaded from %s: %s", source, reason)
        self.errors.append(LoadError(source, reason))

    def _from_entry_points(self) -> list[tuple[type[Agent], str, dict[str, Any]]]:
        found: list[tuple[type[Agent], str, dict[str, Any]]] = []
        for point in _installed(entry_points, ENTRY_POINT_GROUP, tuple(sys.path)):
            source = f"entry_point:{point.name} ({point.value})"
            try:
                loaded = point.load()
            except Exception as exc:
                self._error(source, f"import failed: {type(exc).__name__}: {exc}")
                continue
            if not (inspect.isclass(loaded) and issubclass(loaded, Agent)):
                self._error(source, "the entry point is not an Agent subclass")
                continue
            found.append((loaded, source, {}))
        return found

    def _from_folder(self, folder: Path) -> list[tuple[type[Agent], str, dict[str, Any]]]:
        if not folder.is_dir():
            self._error(f"folder:{folder}", "plugin folder does not exist")
            return []
        found: list[tuple[type[Agent], str, dict[str, Any]]] = []
        for plugin in sorted(p for p in folder.iterdir() if p.is_dir()):
            code = plugin / "agent.py"
            if not code.is_file():
                continue
            source = f"folder:{plugin}"
            try:
                classes = _import_agents(plugin.name, code)
            except Exception as exc:
                self._error(source, f"import failed: {type(exc).__name__}: {exc}")
                continue
            if not classes:
                self._error(source, "agent.py defines no Agent subclass")
                continue
            config: dict[str, Any] = {}
            config_file = plugin / "config.json"
            if config_file.is_file():
                try:
                    config = json.loads(config_file.read_text(encoding="utf-8"))
                except ValueError as exc:
                    self._error(source, f"config.json is not valid JSON: {exc}")
                    continue
                if not isinstance(config, dict):
                    self._error(source, "config.json must hold a JSON object of options")
                    continue
            found += [(agent, source, config) for agent in classes]
        return found

    def ordered(self) -> list[AgentSpec]:
        """The enabled agents, outermost first: configured order, then priority, then name."""
        position = {name: index for index, name in enumerate(self._order)}
        enabled = [spec for spec in self.specs if spec.enabled]
        return sorted(
            enabled,
            key=lambda s: (position.get(s.name, len(position)), s.cls.priority, s.name),
        )

    def words(self) -> dict[str, CommandSpec]:
        words: dict[str, CommandSpec] = {}
        for spec in self.ordered():
            words.update(spec.cls.command_words())
        return words

    def listing(self) -> list[dict[str, str]]:
        """What ``/help`` lists: every enabled command."""
        return [
            {"name": s.name, "summary": s.cls.summary, "usage": s.cls.usage}
            for s in self.ordered()
            if s.cls.name
        ]

    def build(self, app: ASGIApp, *, prefix: str = "/") -> ASGIApp:
        """Every enabled agent, outermost first, over ``app``, as one layer."""
        listing = self.listing()
        agents = []
        for spec in self.ordered():
            options = dict(spec.options)
            if issubclass(spec.cls, HelpCommand) and "commands" not in options:
                options["commands"] = listing
            agents.append(spec.cls(app, prefix=prefix, **options))
        return CommandParser(app, agents=agents, words=self.words(), prefix=prefix)

    def describe(self) -> dict[str, Any]:
        order = {spec.name: index for index, spec in enumerate(self.ordered())}
        return {
            "agents": [spec.describe(order.get(spec.name)) for spec in self.specs],
            "errors": [error.describe() for error in self.errors],
        }


class CommandParser:
    """The agents of the stack, as one layer: parse the commands of every agent at once,
    before any agent runs (so a command is removed from the text even when its agent only
    rewrites responses), then run the hooks of the agents this request activates, in order,
    and hand the exchange to ``app``. An agent that is not activated costs nothing; an
    agent's own requests (``call_ollama``) go to ``app`` too.

    ``CommandParser(app, *, agents, words, prefix="/")``: ``agents`` were each built around
    ``app``, outermost first.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        agents: Sequence[Agent] = (),
        words: dict[str, CommandSpec] | None = None,
        prefix: str = "/",
    ) -> None:
        self.app = app
        self.agents = list(agents)
        self.words = dict(words or {})
        self.prefix = prefix
        self.always = any(agent.activation == "always" for agent in self.agents)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        exchange = get_exchange(scope)
        if exchange is not None and exchange.kind in COMPLETION_KINDS and self.agents:
            exchange.parse_commands(self.prefix, self.words)
            if self.always or exchange.command is not None or exchange.replays:
                for agent in self.agents:
                    if agent.activated(exchange) and await agent.handle(exchange, scope):
                        return  # answered by the agent
        await self.app(scope, receive, send)


@functools.lru_cache(maxsize=8)
def _installed(
    find: Callable[..., Iterable[EntryPoint]], group: str, path: tuple[str, ...]
) -> tuple[EntryPoint, ...]:
    """The entry points of ``group``: finding them reads every installed package's metadata
    (~25 ms), so it is done once per process and import path."""
    return tuple(find(group=group))


def _import_agents(name: str, path: Path) -> list[type[Agent]]:
    module_name = f"ollama_smart_proxy_plugins.{name}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(module_name, None)
        raise
    return [
        value
        for value in vars(module).values()
        if inspect.isclass(value)
        and issubclass(value, Agent)
        and value is not Agent
        and value.__module__ == module_name
    ]


def _first_error(exc: ValidationError) -> str:
    error = exc.errors(include_url=False)[0]
    loc = ".".join(str(part) for part in error["loc"])
    return f"{loc}: {error['msg']}" if loc else error["msg"]


__all__ = ["ENTRY_POINT_GROUP", "AgentRegistry", "AgentSpec", "CommandParser", "LoadError"]
