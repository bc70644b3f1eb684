"""The launcher: ``ollama-smart-proxy`` (also ``python -m ollama_smart_proxy``)."""

from __future__ import annotations

import argparse
import errno
import ipaddress
import logging
import os
import re
import shutil
import socket
import sys
import tempfile
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from pydantic import ValidationError

from ._version import __version__
from .access_log import configure_logging
from .security import keys_from_settings
from .settings import Settings

logger = logging.getLogger("ollama_smart_proxy")


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
        return SmartProxy(settings, handle_signals=True)
    import httpx

    from .testing import FakeOllama, HostsASGITransport, StreamingASGITransport

    def fake() -> FakeOllama:
        return FakeOllama(token_delay=0.03, pullable=DEMO_PULLABLE, pull_delay=3.0)

    transport: httpx.AsyncBaseTransport = StreamingASGITransport(fake())
    if settings.backends:  # a fleet of fakes: one per backend's host
        hosts = {httpx.URL(spec.url).host for spec in settings.backends}
        transport = HostsASGITransport({host: fake() for host in hosts})
    return SmartProxy(demo_settings(settings), transport=transport, handle_signals=True)


#: What --demo shows of model loading, unless the user configured their own.
DEMO_ALIASES = {"gpt-4o-mini": "llama3.2"}
DEMO_PULLABLE = ["mistral*", "phi*"]


def demo_settings(settings: Settings) -> Settings:
    """``settings`` with an alias and auto-pull for the demo's fake registry."""
    update: dict[str, Any] = {}
    if not settings.aliases:
        update["aliases"] = DEMO_ALIASES
    if settings.auto_pull == "off":
        update["auto_pull"] = DEMO_PULLABLE
    return settings.model_copy(update=update)


def settings_problem(exc: ValueError) -> str:
    """One line for a bad setting: the variable and the field, what was expected, an
    example."""
    if not isinstance(exc, ValidationError):
        unparsed = re.match(r'error parsing value for field "(\w+)" from source "Env', str(exc))
        if unparsed:
            field = unparsed.group(1)
            info = Settings.model_fields.get(field)
            default = info.get_default(call_default_factory=True) if info is not None else None
            example = _example(field, default)
            return f"OSP_{field.upper()} ({field}) is not valid JSON; {example}"
        return str(exc)
    error = exc.errors(include_url=False)[0]
    loc = [str(part) for part in error["loc"]]
    message = error["msg"].removeprefix("Value error, ")
    if not loc:
        return message
    field = loc[0]
    info = Settings.model_fields.get(field)
    where = f"{field} (OSP_{field.upper()}, or {field} in the config file)"
    if info is None:
        return f"{field} is not a setting"
    got = (
        f"; got {error['input']!r}"
        if "input" in error and not isinstance(error["input"], dict)
        else ""
    )
    example = _example(field, info.get_default(call_default_factory=True))
    detail = f" at {'.'.join(loc[1:])}" if len(loc) > 1 else ""
    return f"{where}{detail}: {message}{got}; {example}"


_SHAPES: dict[type, tuple[str, str]] = {
    list: ("a list", '["..."]'),
    dict: ("an object", '{"name": "value"}'),
}


def _example(field: str, default: object) -> str:
    variable = f"OSP_{field.upper()}"
    if field in ("api_keys", "admin_keys"):
        return f"""for example {variable}='["sk-..."]' (JSON, a list)"""
    shape = _SHAPES.get(type(default))
    if shape is not None:
        return f"for example {variable}='{shape[1]}' (JSON, {shape[0]})"
    if default is None:
        return f"see docs/configuration.md for {variable}"
    return f"for example {variable}={default}"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = settings_from_args(args)
        keys_from_settings(settings.api_keys, settings.admin_keys, settings.keys_file)
    except (ValidationError, ValueError) as exc:
        print(f"ollama-smart-proxy: invalid settings: {settings_problem(exc)}", file=sys.stderr)
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
    if args.workers < 1:
        print("ollama-smart-proxy: --workers must be at least 1", file=sys.stderr)
        return 2
    if not args.demo:
        urls = [spec.url for spec in settings.backends] or [settings.upstream]
        problem = next(filter(None, (self_upstream(settings, url) for url in urls)), None)
        if problem:
            print(f"ollama-smart-proxy: {problem}", file=sys.stderr)
            return 2
    configure_logging(settings.log_format, settings.log_level)
    app = build_app(settings, demo=args.demo)
    try:
        sock = bind(settings.host, settings.port)
    except OSError as exc:
        print(
            f"ollama-smart-proxy: {bind_problem(settings.host, settings.port, exc)}",
            file=sys.stderr,
        )
        return 2
    port = sock.getsockname()[1]
    upstream = "in-process FakeOllama (--demo)" if args.demo else settings.upstream
    agents = ", ".join(getattr(app, "agent_names", [])) or "none"
    url = f"http://{_url_host(settings.host)}:{port}"
    print(f"ollama-smart-proxy {__version__} listening on {url}")
    if settings.backends:
        names = ", ".join(spec.name for spec in settings.backends)
        fakes = ", each an in-process FakeOllama (--demo)" if args.demo else ""
        print(f"  backends: {names} (a fleet of {len(settings.backends)}{fakes})")
    else:
        print(f"  upstream: {upstream}")
    print(f"  agents:   {agents}")
    keys = bool(getattr(app, "keys", None))
    print(f"  keys:     {'required' if keys else 'none: every client may use the proxy'}")
    if settings.redis_url:
        print(
            f"  shared:   limits, pulls and the fleet's view through Redis "
            f"(redis_failure: {settings.redis_failure})"
        )
    if settings.max_concurrent is not None:
        per = " per worker process" if args.workers > 1 and not settings.redis_url else ""
        print(
            f"  admission: {settings.max_concurrent} generations at once{per}, "
            f"{settings.max_queue} queued"
        )
    metrics_dir = None
    if args.workers > 1:
        # Worker processes build their own app from the environment: hand them the settings.
        os.environ[_SETTINGS_ENV] = settings.model_dump_json()
        os.environ[_DEMO_ENV] = "1" if args.demo else ""
        if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            metrics_dir = tempfile.mkdtemp(prefix="osp-metrics-")
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
        shares = "limits shared through Redis" if settings.redis_url else "and queue"
        print(f"  workers:  {args.workers} (each with its own upstream pool {shares})")
    if args.demo:
        print(demo_banner(url))
    sys.stdout.flush()
    if not keys and not is_loopback(settings.host):
        warning = (
            f"WARNING: listening on {settings.host} with no API keys: anyone who reaches this "
            "port can use every model, and pull or delete models unless OSP_ADMIN_ROUTES=closed. "
            "Set OSP_API_KEYS (see docs/security.md)."
        )
        print(warning, file=sys.stderr, flush=True)
        logger.warning(warning)
    config = uvicorn.Config(
        "ollama_smart_proxy.cli:create_app" if args.workers > 1 else app,
        factory=args.workers > 1,
        workers=args.workers,
        log_level=settings.log_level,
        access_log=False,
        **_uvicorn_logging(settings.log_format),
        lifespan="on",
        server_header=False,
        # The proxy ends its own streams at shutdown_grace; uvicorn waits a little longer.
        timeout_graceful_shutdown=int(settings.shutdown_grace) + 5,
    )
    try:
        if args.workers > 1:
            from uvicorn.supervisors import Multiprocess

            Multiprocess(config, sockets=[sock]).run()
        else:
            uvicorn.Server(config).run(sockets=[sock])
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before anything says it listens."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def bind_problem(host: str, port: int, exc: OSError) -> str:
    """What to tell a person whose port could not be bound."""
    if exc.errno == errno.EADDRINUSE:
        return (
            f"port {port} on {host} is already in use (another ollama-smart-proxy, or "
            "another server?); pick another with --port or OSP_PORT"
        )
    if exc.errno == errno.EACCES:
        return f"no permission to listen on {host}:{port}; pick a port above 1023 with --port"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"{host} is not an address of this machine; check --host or OSP_HOST"
    return f"cannot listen on {host}:{port}: {exc.strerror or exc}"


_LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "0.0.0.0", "::", "[::1]", "[::]"}


def _uvicorn_logging(log_format: str) -> dict[str, Any]:
    from .access_log import uvicorn_log_config

    config = uvicorn_log_config(log_format)
    return {"log_config": config} if config is not None else {}


def self_upstream(settings: Settings, url: str | None = None) -> str | None:
    """Why the upstream (``url``, by default ``settings.upstream``) would be the proxy
    itself, or ``None``."""
    url = url or settings.upstream
    split = urlsplit(url)
    port = split.port or (443 if split.scheme == "https" else 80)
    host = (split.hostname or "").lower()
    listen = settings.host.lower()
    if port != settings.port:
        return None
    here = _LOCAL_HOSTS | {socket.gethostname().lower(), listen}
    if host not in here and not (listen in ("0.0.0.0", "::") and host.startswith("127.")):
        return None
    hint = ""
    if os.environ.get("OLLAMA_HOST") and not os.environ.get("OSP_UPSTREAM"):
        hint = (
            f" OLLAMA_HOST={os.environ['OLLAMA_HOST']} is set in this environment (for your "
            "clients?) and the proxy reads it too: unset it here, or set OSP_UPSTREAM."
        )
    if url != settings.upstream or settings.backends:
        return (
            f"the backend {url} is this proxy itself (it listens on "
            f"{settings.host}:{settings.port}): point OSP_BACKENDS at Ollama servers"
        )
    return (
        f"the upstream {url} is this proxy itself (it listens on "
        f"{settings.host}:{settings.port}): point --upstream or OSP_UPSTREAM at Ollama.{hint}"
    )


def demo_banner(url: str) -> str:
    """What a new user can try against ``--demo``."""
    from .testing._fake import DEMO_MODELS

    models = ", ".join(DEMO_MODELS)
    aliases = ", ".join(f"{alias} -> {model}" for alias, model in DEMO_ALIASES.items())
    return (
        f"  demo models: {models}\n"
        f"  aliases:     {aliases}\n"
        f"  auto-pull:   {', '.join(DEMO_PULLABLE)} (try model 'mistral': pulled in 3 s)\n"
        f"  try: curl {url}/api/chat -d "
        '\'{"model":"llama3.2","messages":[{"role":"user","content":"hello"}]}\'\n'
        f"       curl {url}/v1/chat/completions -d "
        '\'{"model":"llama3.2","messages":[{"role":"user","content":"/help"}]}\''
    )


_SETTINGS_ENV = "OLLAMA_SMART_PROXY_WORKER_SETTINGS"
_DEMO_ENV = "OLLAMA_SMART_PROXY_WORKER_DEMO"


def create_app() -> Any:
    """The app of one worker process under ``--workers N`` (settings from the launcher)."""
    settings = Settings.model_validate_json(os.environ[_SETTINGS_ENV])
    configure_logging(settings.log_format, settings.log_level)
    return build_app(settings, demo=bool(os.environ.get(_DEMO_ENV)))


__all__ = [
    "build_app",
    "build_parser",
    "create_app",
    "main",
    "settings_from_args",
]
