"""The launcher: ``ollama-smart-proxy`` (also ``python -m ollama_smart_proxy``)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from ._version import __version__
from .access_log import configure_logging
from .settings import Settings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ollama-smart-proxy",
        description="A smart, OpenAI-compatible proxy in front of one Ollama server.",
    )
    parser.add_argument("--host", help="address to listen on (OSP_HOST, default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to listen on (OSP_PORT, default 11435)")
    parser.add_argument(
        "--upstream", help="Ollama URL (OSP_UPSTREAM, else OLLAMA_HOST, else 127.0.0.1:11434)"
    )
    parser.add_argument("--config", help="TOML settings file (OSP_CONFIG)")
    parser.add_argument(
        "--plugins-dir",
        action="append",
        dest="plugins_dirs",
        metavar="DIR",
        help="folder of plugin agents; repeat for several (OSP_PLUGINS_DIRS)",
    )
    parser.add_argument(
        "--log-level",
        choices=["critical", "error", "warning", "info", "debug"],
        help="log level (OSP_LOG_LEVEL, default info)",
    )
    parser.add_argument(
        "--log-format", choices=["text", "json"], help="log format (OSP_LOG_FORMAT, default text)"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="worker processes (default 1); each has its own upstream pool",
    )
    parser.add_argument(
        "--demo",
        action="store_true",
        help="serve an in-process fake Ollama: try the proxy with no Ollama installed",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Flags win over the environment, the environment over the file."""
    given: dict[str, Any] = {
        name: value
        for name in (
            "host",
            "port",
            "upstream",
            "config",
            "plugins_dirs",
            "log_level",
            "log_format",
        )
        if (value := getattr(args, name)) is not None
    }
    return Settings(**given)


def build_app(settings: Settings, demo: bool = False) -> Any:
    """The proxy app the launcher serves (with a fake upstream under ``--demo``)."""
    from .app import SmartProxy

    if not demo:
        return SmartProxy(settings)
    from .testing import FakeOllama, StreamingASGITransport

    fake = FakeOllama(token_delay=0.03)
    return SmartProxy(settings, transport=StreamingASGITransport(fake))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = settings_from_args(args)
    except (ValidationError, ValueError) as exc:
        print(f"ollama-smart-proxy: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    try:
        import uvicorn
    except ImportError:
        print(
            "ollama-smart-proxy: the launcher needs uvicorn: "
            "pip install 'ollama-smart-proxy[server]'",
            file=sys.stderr,
        )
        return 2
    configure_logging(settings.log_format, settings.log_level)
    app = build_app(settings, demo=args.demo)
    upstream = "in-process FakeOllama (--demo)" if args.demo else settings.upstream
    agents = ", ".join(getattr(app, "agent_names", [])) or "none"
    print(f"ollama-smart-proxy {__version__} listening on http://{settings.host}:{settings.port}")
    print(f"  upstream: {upstream}")
    print(f"  agents:   {agents}", flush=True)
    if args.workers < 1:
        print("ollama-smart-proxy: --workers must be at least 1", file=sys.stderr)
        return 2
    if args.workers > 1:
        # Worker processes build their own app from the environment: hand them the settings.
        os.environ[_SETTINGS_ENV] = settings.model_dump_json()
        os.environ[_DEMO_ENV] = "1" if args.demo else ""
        print(f"  workers:  {args.workers}", flush=True)
    uvicorn.run(
        "ollama_smart_proxy.cli:create_app" if args.workers > 1 else app,
        factory=args.workers > 1,
        workers=args.workers if args.workers > 1 else None,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=False,
        lifespan="on",
        server_header=False,
    )
    return 0


_SETTINGS_ENV = "OLLAMA_SMART_PROXY_WORKER_SETTINGS"
_DEMO_ENV = "OLLAMA_SMART_PROXY_WORKER_DEMO"


def create_app() -> Any:
    """The app of one worker process under ``--workers N`` (settings from the launcher)."""
    settings = Settings.model_validate_json(os.environ[_SETTINGS_ENV])
    configure_logging(settings.log_format, settings.log_level)
    return build_app(settings, demo=bool(os.environ.get(_DEMO_ENV)))
