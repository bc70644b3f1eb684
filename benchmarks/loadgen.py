"""A lean HTTP/1.1 load generator (raw asyncio, keep-alive), so it is not the bottleneck.

Each of ``--concurrency`` connections sends requests back to back until ``--duration``
seconds have passed (or ``--requests`` in total), and records, per request, the time to the
first body byte, the total time and the number of body lines (``\n``: NDJSON lines, or two per SSE event).
Prints one JSON object with the summary.

    python -m benchmarks.loadgen --url http://127.0.0.1:11435/api/chat --concurrency 50 \\
        --duration 5 --body '{"model":"m","messages":[]}' --header x-bench-tokens:64
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass
class Stats:
    ttfb: list[float] = field(default_factory=list)
    total: list[float] = field(default_factory=list)
    lines: int = 0
    window_lines: int = 0  # lines received before the deadline: smooth throughput
    errors: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    first_error: str | None = None


async def one_connection(
    host: str,
    port: int,
    request: bytes,
    deadline: float,
    budget: list[int],
    stats: Stats,
) -> None:
    reader = writer = None
    while time.perf_counter() < deadline and budget[0] > 0:
        budget[0] -= 1
        started = time.perf_counter()
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection(host, port)
            assert reader is not None
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            headers = head.lower()
            first: float | None = None
            lines = 0
            if b"transfer-encoding: chunked" in headers:
                while True:
                    size_line = await reader.readuntil(b"\r\n")
                    size = int(size_line.split(b";")[0], 16)
                    if size == 0:
                        await reader.readuntil(b"\r\n")
                        break
                    data = await reader.readexactly(size + 2)
                    now = time.perf_counter()
                    if first is None:
                        first = now
                    count = data.count(b"\n") - 1
                    lines += count
                    if now < deadline:
                        stats.window_lines += count
            else:
                start = headers.find(b"content-length:")
                length = (
                    int(headers[start + 15 : headers.find(b"\r\n", start)]) if start >= 0 else 0
                )
                data = await reader.readexactly(length)
                first = time.perf_counter()
                lines = 1
                if first < deadline:
                    stats.window_lines += 1
            done = time.perf_counter()
            stats.statuses[status] = stats.statuses.get(status, 0) + 1
            if status != 200:
                stats.errors += 1
                continue
            stats.ttfb.append((first or done) - started)
            stats.total.append(done - started)
            stats.lines += lines
            if b"connection: close" in headers:
                writer.close()
                reader = writer = None
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            stats.errors += 1
            stats.first_error = stats.first_error or repr(exc)
            if writer is not None:
                writer.close()
            reader = writer = None
    if writer is not None:
        writer.close()


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run(
    url: str, body: bytes, headers: list[str], concurrency: int, duration: float, requests: int
) -> dict[str, object]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    head = [
        f"POST {parts.path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        *headers,
    ]
    request = ("\r\n".join(head) + "\r\n\r\n").encode() + body
    stats = Stats()
    budget = [requests]
    started = time.perf_counter()
    deadline = started + duration
    await asyncio.gather(
        *(one_connection(host, port, request, deadline, budget, stats) for _ in range(concurrency))
    )
    elapsed = time.perf_counter() - started
    count = len(stats.total)
    return {
        "concurrency": concurrency,
        "requests": count,
        "errors": stats.errors,
        "first_error": stats.first_error,
        "statuses": stats.statuses,
        "elapsed_s": round(elapsed, 3),
        "req_per_s": round(count / elapsed, 2),
        "lines": stats.lines,
        "lines_per_s": round(stats.lines / elapsed, 1),
        "window_lines_per_s": round(stats.window_lines / duration, 1),
        "ttfb_p50_ms": round(percentile(stats.ttfb, 0.50) * 1000, 3),
        "ttfb_p99_ms": round(percentile(stats.ttfb, 0.99) * 1000, 3),
        "total_p50_ms": round(percentile(stats.total, 0.50) * 1000, 3),
        "total_p99_ms": round(percentile(stats.total, 0.99) * 1000, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument(
        "--body", default='{"model":"bench","messages":[{"role":"user","content":"hi"}]}'
    )
    parser.add_argument("--header", action="append", default=[])
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--requests", type=int, default=10**9)
    args = parser.parse_args()
    headers = [h.replace(":", ": ", 1) for h in args.header]
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    result = asyncio.run(
        run(args.url, args.body.encode(), headers, args.concurrency, args.duration, args.requests)
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
