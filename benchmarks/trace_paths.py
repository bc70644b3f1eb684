"""How much of the proxy a request crosses: ASGI apps, functions and modules, per path.

    python -m benchmarks.trace_paths

Drives ``SmartProxy`` in-process over ``FakeOllama`` (no sockets) with a profiler hook that
records every function of the package a request enters (the fake and the test helpers
left out): a native ``/api/chat`` stream, an OpenAI stream with one ``/set`` command, an
Anthropic stream. The ASGI apps are the objects whose ``__call__(scope, receive, send)``
ran. It counts code, not time: a newcomer reading a request's path reads these.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

import httpx

from ollama_smart_proxy import Settings, SmartProxy
from ollama_smart_proxy.testing import FakeOllama, StreamingASGITransport

PACKAGE = "ollama_smart_proxy"
LEFT_OUT = (f"{PACKAGE}/testing/",)

PATHS: dict[str, tuple[str, dict[str, Any], dict[str, str]]] = {
    "native /api/chat stream": (
        "/api/chat",
        {"model": "llama3.2", "messages": [{"role": "user", "content": "one two three"}]},
        {},
    ),
    "OpenAI stream with /set": (
        "/v1/chat/completions",
        {
            "model": "llama3.2",
            "stream": True,
            "messages": [{"role": "user", "content": "/set parameter temperature 0.2 one two"}],
        },
        {},
    ),
    "Anthropic stream": (
        "/v1/messages",
        {
            "model": "llama3.2",
            "max_tokens": 64,
            "stream": True,
            "messages": [{"role": "user", "content": "one two three"}],
        },
        {"anthropic-version": "2023-06-01"},
    ),
}


class Trace:
    def __init__(self) -> None:
        self.functions: set[tuple[str, str, int]] = set()
        self.apps: set[int] = set()
        self.app_types: set[str] = set()

    def hook(self, frame: FrameType, event: str, arg: object) -> None:
        if event != "call":
            return
        code = frame.f_code
        name = code.co_filename.replace("\\", "/")
        if f"/{PACKAGE}/" not in name or any(part in name for part in LEFT_OUT):
            return
        self.functions.add(
            (name.split(f"/{PACKAGE}/", 1)[1], code.co_qualname, code.co_firstlineno)
        )
        if code.co_name == "__call__" and code.co_argcount == 4:
            me = frame.f_locals.get("self")
            scope = frame.f_locals.get("scope")
            if isinstance(scope, dict) and scope.get("type") == "http" and me is not None:
                self.apps.add(id(me))
                self.app_types.add(type(me).__name__)

    @property
    def modules(self) -> set[str]:
        return {module for module, _, _ in self.functions}


@contextmanager
def tracing(trace: Trace) -> Iterator[None]:
    sys.setprofile(trace.hook)
    try:
        yield
    finally:
        sys.setprofile(None)


async def measure() -> dict[str, Trace]:
    traces = {}
    async with SmartProxy(Settings(), transport=StreamingASGITransport(FakeOllama())) as proxy:
        transport = httpx.ASGITransport(app=proxy)
        async with httpx.AsyncClient(transport=transport, base_url="http://proxy") as client:
            for label, (path, body, headers) in PATHS.items():
                await client.post(path, json=body, headers=headers)  # warm: caches filled
                trace = Trace()
                with tracing(trace):
                    response = await client.post(path, json=body, headers=headers)
                assert response.status_code == 200, response.text
                traces[label] = trace
    return traces


def main() -> None:
    traces = asyncio.run(measure())
    print(f"{'path':<28} {'apps':>5} {'functions':>10} {'modules':>8}")
    for label, trace in traces.items():
        print(
            f"{label:<28} {len(trace.apps):>5} {len(trace.functions):>10} {len(trace.modules):>8}"
        )
        if "-v" in sys.argv:
            print("   apps:", ", ".join(sorted(trace.app_types)))


if __name__ == "__main__":
    main()
