"""How long one request can hold the event loop, for the worst bodies the limits allow.

    python -m benchmarks.worst_case

Each body goes through the whole proxy in-process, called as an ASGI app with the body in
pieces of 256 KiB (what one read of uvicorn's transport delivers at most), over an upstream that drains the body and answers at once (so neither a client
library nor a fake Ollama adds its own work), while a probe task wakes every millisecond;
the longest gap the probe saw is the time the loop was held. The bodies are the shapes that once froze the proxy (replayed commands), the
largest single string (a base64 image at the body limit), the most structure the limits
allow, and what the limits refuse.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from ollama_smart_proxy import Settings, SmartProxy
from ollama_smart_proxy.testing import StreamingASGITransport

MIB = 1024 * 1024


def bodies(settings: Settings) -> list[tuple[str, bytes]]:
    limit = settings.max_body_bytes
    messages = settings.max_messages
    image = b'{"model":"llama3.2","stream":false,"messages":[{"role":"user","content":"hi",'
    image += b'"images":["' + b"A" * (limit - 200) + b'"]}]}'
    commands: list[dict[str, Any]] = []
    for index in range(messages // 2 - 1):
        commands += [
            {"role": "user", "content": f"/set system s{index}\np"},
            {"role": "assistant", "content": "a"},
        ]
    commands.append({"role": "user", "content": "last"})
    replay = json.dumps({"model": "llama3.2", "stream": False, "messages": commands}).encode()
    objects = settings.max_json_objects - messages - 10
    tools = [{"type": "function", "function": {"name": "f"}}] * (objects // 2)
    structure = json.dumps(
        {
            "model": "llama3.2",
            "stream": False,
            "messages": [{"role": "user", "content": "x"}] * (messages - 1),
            "tools": tools,
        }
    ).encode()
    tiny = b'{"role":"user","content":"x"},'
    flood = b'{"model":"m","messages":[' + tiny * ((limit - 100) // len(tiny)) + b"{}]}"
    line = b"if (x) { y(); }\\n"  # 17 bytes: one brace in a string, escapes to decode
    code = b'{"model":"m","messages":[{"role":"user","content":"'
    code += line * ((limit - 100) // len(line)) + b'"}]}'
    fits = settings.max_json_objects - 10  # braces in strings count: the most that is allowed
    source = b'{"model":"llama3.2","stream":false,"messages":[{"role":"user","content":"'
    source += line * fits + b'"}]}'
    return [
        (f"{len(image) / MIB:.0f} MiB image (one base64 string)", image),
        (f"{messages} messages replaying /set system", replay),
        (f"{messages} messages + {len(tools)} tools (~max_json_objects)", structure),
        (f"{len(flood) / MIB:.0f} MiB of tiny objects (refused: objects)", flood),
        (f"{len(source) / MIB:.1f} MiB of code in one string ({fits} braces)", source),
        (f"{len(code) / MIB:.0f} MiB of code in one string (refused: objects)", code),
    ]


ANSWER = b'{"model":"llama3.2","message":{"role":"assistant","content":"ok"},"done":true}'


async def instant_ollama(scope: Any, receive: Any, send: Any) -> None:
    while (await receive()).get("more_body"):
        pass
    headers = [(b"content-type", b"application/json; charset=utf-8")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": ANSWER})


#: What one read of uvicorn's transport (asyncio's or uvloop's) delivers at most.
READ_BYTES = 256 * 1024


async def call(proxy: SmartProxy, body: bytes) -> int:
    status = 0
    pieces = iter(range(0, len(body), READ_BYTES))

    async def receive() -> dict[str, Any]:
        start = next(pieces, None)
        if start is not None:
            await asyncio.sleep(0)  # uvicorn waits for each piece to arrive
            end = start + READ_BYTES
            return {"type": "http.request", "body": body[start:end], "more_body": end < len(body)}
        await asyncio.Event().wait()
        raise AssertionError

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/api/chat",
        "raw_path": b"/api/chat",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"content-length", str(len(body)).encode())],
        "client": ("127.0.0.1", 1),
    }
    await proxy(scope, receive, send)
    return status


async def measure(proxy: SmartProxy, body: bytes) -> tuple[int, float, float]:
    gaps: list[float] = []
    stop = asyncio.Event()

    async def probe() -> None:
        last = time.perf_counter()
        while not stop.is_set():
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    task = asyncio.ensure_future(probe())
    await asyncio.sleep(0.01)
    started = time.perf_counter()
    status = await call(proxy, body)
    elapsed = time.perf_counter() - started
    stop.set()
    await task
    return status, elapsed, max(gaps)


async def main() -> None:
    settings = Settings()
    proxy = SmartProxy(settings, transport=StreamingASGITransport(instant_ollama))
    print("| body | status | proxy time | longest loop block |")
    print("|---|---|---|---|")
    for name, body in bodies(settings):
        status, elapsed, gap = await measure(proxy, body)
        print(f"| {name} | {status} | {elapsed * 1000:.0f} ms | {gap * 1000:.0f} ms |")


if __name__ == "__main__":
    asyncio.run(main())
