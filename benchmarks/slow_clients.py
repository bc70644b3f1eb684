"""What clients that stop cost the proxy: memory held by bodies that stop, places held by
clients that stop reading.

    python -m benchmarks.slow_clients

Runs the launcher (``python -m ollama_smart_proxy``) over the benchmark's fake upstream and
measures, from outside, two reproductions:

- **bodies**: 30 connections each announce a 64 MiB body, send 60 MiB of it and stop; the
  proxy's peak RSS, how many were refused (503), how many got a 408 once ``body_timeout``
  (10 s here) passed, and how many had no answer after 20 s;
- **places**: with ``max_concurrent=2``, two clients ask for a long fast stream and never
  read it; how long until both admission places are free again (``write_timeout``), and
  whether a third client is served.

Run it against another checkout with ``PYTHONPATH=that/checkout`` (settings it does not know
are ignored by older versions).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

from benchmarks.run import free_port, rss_mib, upstream_command, wait_for

MIB = 1024 * 1024
CHAT = b'{"model":"bench","messages":[{"role":"user","content":"hi"}]}'


@contextlib.contextmanager
def proxy(env: dict[str, str]) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    upstream_port, port = free_port(), free_port()
    fake = subprocess.Popen(upstream_command(upstream_port))
    wait_for(upstream_port)
    launcher = [sys.executable, "-m", "ollama_smart_proxy", "--port", str(port)]
    launcher += ["--upstream", f"http://127.0.0.1:{upstream_port}", "--log-level", "error"]
    process = subprocess.Popen(launcher, env={**os.environ, **env})
    try:
        wait_for(port)
        yield port, process
    finally:
        process.terminate()
        fake.terminate()
        process.wait(10)
        fake.wait(10)


def connect(port: int) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    return sock


def answers(socks: list[socket.socket], within: float) -> dict[int, int]:
    """The status each socket got within ``within`` seconds, by socket index."""
    got: dict[int, int] = {}
    deadline = time.monotonic() + within
    while len(got) < len(socks) and time.monotonic() < deadline:
        waiting = [sock for index, sock in enumerate(socks) if index not in got]
        ready, _, _ = select.select(waiting, [], [], 0.1)
        for sock in ready:
            with contextlib.suppress(OSError):
                head = sock.recv(64)
                index = socks.index(sock)
                got[index] = int(head.split()[1]) if head.startswith(b"HTTP/1.1") else 0
    return got


class Peak:
    """The highest RSS of a process, sampled every 50 ms."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = rss_mib(pid)
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def _sample(self) -> None:
        while self.running:
            with contextlib.suppress(OSError):
                self.peak = max(self.peak, rss_mib(self.pid))
            time.sleep(0.05)

    def stop(self) -> float:
        self.running = False
        self.thread.join()
        return round(self.peak, 1)


def bodies(port: int, process: subprocess.Popen[bytes], clients: int = 30) -> dict[str, Any]:
    idle = rss_mib(process.pid)
    peak = Peak(process.pid)
    piece = b" " * MIB
    socks = [connect(port) for _ in range(clients)]
    started = time.monotonic()

    def send(sock: socket.socket) -> None:
        head = f"POST /api/chat HTTP/1.1\r\nHost: localhost\r\nContent-Length: {64 * MIB}\r\n\r\n"
        with contextlib.suppress(OSError):
            sock.sendall(head.encode())
            for _ in range(60):
                sock.sendall(piece)

    threads = [threading.Thread(target=send, args=(sock,), daemon=True) for sock in socks]
    for thread in threads:
        thread.start()
    got = answers(socks, 20.0)
    held = rss_mib(process.pid)
    for sock in socks:
        sock.close()
    statuses = list(got.values())
    return {
        "rss_idle_mib": round(idle, 1),
        "rss_peak_mib": peak.stop(),
        "rss_after_20s_mib": round(held, 1),
        "answered_503": statuses.count(503),
        "answered_408": statuses.count(408),
        "unanswered_after_20s": clients - len(got),
        "seconds": round(time.monotonic() - started, 1),
    }


def places(port: int) -> dict[str, Any]:
    def in_flight() -> int:
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        body = json.loads(data.split(b"\r\n\r\n", 1)[1])
        return int(body.get("admission", {}).get("in_flight", 0))

    head = (
        "POST /api/chat HTTP/1.1\r\nHost: localhost\r\nx-bench-tokens: 200000\r\n"
        f"Content-Length: {len(CHAT)}\r\n\r\n"
    ).encode()
    sleepers = [connect(port) for _ in range(2)]
    for sock in sleepers:
        sock.sendall(head + CHAT)
    time.sleep(0.5)
    started = time.monotonic()
    held = in_flight()
    freed_after = None
    while time.monotonic() - started < 40:
        if in_flight() == 0:
            freed_after = round(time.monotonic() - started, 1)
            break
        time.sleep(0.2)
    served = None
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(head.replace(b"200000", b"8") + CHAT)
        with contextlib.suppress(OSError):
            served = sock.recv(64).startswith(b"HTTP/1.1 200")
    for sock in sleepers:
        sock.close()
    return {
        "places_held_at_start": held,
        "seconds_until_free": freed_after if freed_after is not None else "> 40",
        "third_client_served_within_5s": served,
    }


def main() -> int:
    env = {"OSP_BODY_TIMEOUT": "10", "OSP_WRITE_TIMEOUT": "5", "OSP_IGNORE_UNKNOWN_ENV": "true"}
    with proxy(env) as (port, process):
        print("bodies:", json.dumps(bodies(port, process)))
    with proxy({**env, "OSP_MAX_CONCURRENT": "2"}) as (port, _):
        print("places:", json.dumps(places(port)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
