"""A fast fake Ollama for benchmarks: raw asyncio HTTP/1.1, no framework.

It answers ``POST /api/chat`` and ``POST /api/generate`` like Ollama (NDJSON when streaming,
one JSON object otherwise) and ``GET /api/version``. The number of tokens and the pause
between them come from the request headers ``x-bench-tokens`` (default 64) and
``x-bench-delay-ms`` (default 0), which the proxy forwards untouched.

    python -m benchmarks.fake_upstream --port 11500
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json

TOKEN_LINE = (
    b'{"model":"bench","created_at":"2026-11-27T06:40:39.704198521Z",'
    b'"message":{"role":"assistant","content":"tok "},"done":false}\n'
)
FINAL_LINE = (
    b'{"model":"bench","created_at":"2026-11-27T06:40:39.704198521Z",'
    b'"message":{"role":"assistant","content":""},"done":true,"done_reason":"stop",'
    b'"total_duration":1000,"load_duration":10,"prompt_eval_count":8,'
    b'"prompt_eval_duration":10,"eval_count":64,"eval_duration":1000}\n'
)


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.busy = False
        self.task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.task is not None:
            self.task.cancel()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self.next_request()

    def next_request(self) -> None:
        if self.busy:
            return
        head_end = self.buffer.find(b"\r\n\r\n")
        if head_end < 0:
            return
        head = self.buffer[:head_end].decode("latin-1").split("\r\n")
        method, path, _ = head[0].split(" ", 2)
        headers = {}
        for line in head[1:]:
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        if len(self.buffer) < head_end + 4 + length:
            return
        body = self.buffer[head_end + 4 : head_end + 4 + length]
        self.buffer = self.buffer[head_end + 4 + length :]
        self.busy = True
        self.task = asyncio.get_running_loop().create_task(
            self.respond(method, path, headers, body)
        )

    async def respond(self, method: str, path: str, headers: dict[str, str], body: bytes) -> None:
        transport = self.transport
        assert transport is not None
        path = path.split("?", 1)[0]
        if path in ("/api/chat", "/api/generate") and method == "POST":
            stream = b'"stream":false' not in body.replace(b" ", b"")
            tokens = int(headers.get("x-bench-tokens", "64"))
            delay = int(headers.get("x-bench-delay-ms", "0")) / 1000
            if stream:
                transport.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n"
                    b"Transfer-Encoding: chunked\r\n\r\n"
                )
                for _ in range(tokens):
                    if delay:
                        await asyncio.sleep(delay)
                    transport.write(chunk(TOKEN_LINE))
                transport.write(chunk(FINAL_LINE) + b"0\r\n\r\n")
            else:
                if delay:
                    await asyncio.sleep(delay * tokens)
                data = json.loads(FINAL_LINE)
                data["message"]["content"] = "tok " * tokens
                payload = json.dumps(data, separators=(",", ":")).encode()
                transport.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(payload), payload)
                )
        elif path == "/api/version":
            payload = b'{"version":"0.32.15"}'
            transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(payload), payload)
            )
        else:
            transport.write(
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 18\r\n\r\n404 page not found"
            )
        self.busy = False
        self.task = None
        if self.buffer:
            self.next_request()


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Connection, host, port, backlog=4096, reuse_address=True)
    print(f"fake upstream on http://{host}:{port}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=11500)
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
