"""Run the benchmark: the proxy against a direct connection, in one run, as ratios.

    python -m benchmarks.run            # full run (a few minutes)
    python -m benchmarks.run --quick    # a few seconds: what CI runs
    python -m benchmarks.run --repeat 3 --only C500 --only D500-openai   # medians of 3 rounds

Three processes: the fast fake upstream (``benchmarks/fake_upstream.py``), the proxy
(``python -m ollama_smart_proxy``), and the load generator (``benchmarks/loadgen.py``, one
process per measurement). Each scenario is measured direct (load generator -> upstream) and
through the proxy, back to back. The proxy's CPU time (from /proc) is divided by the work
it did. Results go to ``benchmarks/results/`` as JSON, and as a PNG when matplotlib is
installed (``pip install -e ".[bench]"``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
TICK = os.sysconf("SC_CLK_TCK")

NATIVE_STREAM = '{"model":"bench","messages":[{"role":"user","content":"hi"}]}'
NATIVE_ONCE = '{"model":"bench","messages":[{"role":"user","content":"hi"}],"stream":false}'
NATIVE_AGENT = '{"model":"bench","messages":[{"role":"user","content":"/redact hi"}]}'
OPENAI_STREAM = '{"model":"bench","messages":[{"role":"user","content":"hi"}],"stream":true}'
RESPONSES_STREAM = '{"model":"bench","input":"hi","stream":true}'
ANTHROPIC_STREAM = (
    '{"model":"bench","max_tokens":64,"messages":[{"role":"user","content":"hi"}],"stream":true}'
)


@dataclass
class Scenario:
    key: str
    title: str
    concurrency: int
    body: str
    tokens: int = 64
    delay_ms: int = 0
    proxy_path: str = "/api/chat"
    duration: float = 5.0
    requests: int = 10**9
    unit: str = "req"  # what CPU is divided by: "req" or "chunk"
    watch_memory: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def scenarios(quick: bool) -> list[Scenario]:
    d = 1.5 if quick else 8.0
    many = 100 if quick else 500
    out = [
        Scenario("A1", "non-streaming /api/chat, c=1", 1, NATIVE_ONCE, duration=d),
        Scenario("A50", "non-streaming /api/chat, c=50", 50, NATIVE_ONCE, duration=d),
        Scenario(
            "B50", "streaming 64 tokens unpaced, c=50", 50, NATIVE_STREAM, duration=d, unit="chunk"
        ),
        Scenario(
            "C200",
            "paced 64 x 20 ms, c=200",
            200,
            NATIVE_STREAM,
            delay_ms=20,
            duration=d + 2,
            unit="chunk",
        ),
        Scenario(
            f"C{many}",
            f"paced 64 x 20 ms, c={many}",
            many,
            NATIVE_STREAM,
            delay_ms=20,
            duration=d + 2,
            unit="chunk",
            watch_memory=True,
        ),
        Scenario(
            f"D{many}-openai",
            f"paced, c={many}, via /v1/chat/completions (SSE)",
            many,
            OPENAI_STREAM,
            delay_ms=20,
            proxy_path="/v1/chat/completions",
            duration=d + 2,
            unit="chunk",
        ),
        Scenario(
            f"D{many}-responses",
            f"paced, c={many}, via /v1/responses (typed SSE events)",
            many,
            RESPONSES_STREAM,
            delay_ms=20,
            proxy_path="/v1/responses",
            duration=d + 2,
            unit="chunk",
        ),
        Scenario(
            f"D{many}-anthropic",
            f"paced, c={many}, via /v1/messages (Anthropic SSE events)",
            many,
            ANTHROPIC_STREAM,
            delay_ms=20,
            proxy_path="/v1/messages",
            duration=d + 2,
            unit="chunk",
        ),
        Scenario(
            f"D{many}-agent",
            f"paced, c={many}, /redact response agent active",
            many,
            NATIVE_AGENT,
            delay_ms=20,
            duration=d + 2,
            unit="chunk",
        ),
    ]
    if quick:
        out = [
            s
            for s in out
            if s.key in ("A1", "B50", "C100", "D100-openai", "D100-responses", "D100-anthropic")
        ]
    return out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


def family(pid: int) -> list[int]:
    """``pid`` and its descendants (the workers of ``--workers N``)."""
    pids = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        children = (task / "children").read_text().split()
        for child in children:
            pids += family(int(child))
    return pids


def cpu_seconds(pid: int) -> float:
    total = 0.0
    for member in family(pid):
        fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / TICK
    return total


def rss_mib(pid: int) -> float:
    total = 0.0
    for member in family(pid):
        for line in Path(f"/proc/{member}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) / 1024
    return total


BIN = ROOT / "benchmarks" / "bin"
IMPL = {"name": "python"}


def choose_impl(wanted: str) -> str:
    """``go`` (fake upstream and load generator built from benchmarks/go) when a Go
    toolchain is there or asked for, else the Python ones."""
    if wanted == "python" or (wanted == "auto" and shutil.which("go") is None):
        return "python"
    BIN.mkdir(exist_ok=True)
    for name in ("fakeupstream", "loadgen"):
        subprocess.run(
            ["go", "build", "-o", str(BIN / name), f"./{name}"],
            cwd=ROOT / "benchmarks" / "go",
            check=True,
        )
    return "go"


def upstream_command(port: int) -> list[str]:
    if IMPL["name"] == "go":
        return [str(BIN / "fakeupstream"), "--port", str(port)]
    return [sys.executable, "-m", "benchmarks.fake_upstream", "--port", str(port)]


def loadgen(url: str, scenario: Scenario) -> dict[str, Any]:
    program = (
        [str(BIN / "loadgen")]
        if IMPL["name"] == "go"
        else [sys.executable, "-m", "benchmarks.loadgen"]
    )
    command = [
        *program, "--url", url,
        "--concurrency", str(scenario.concurrency), "--duration", str(scenario.duration),
        "--requests", str(scenario.requests), "--body", scenario.body,
        "--header", f"x-bench-tokens:{scenario.tokens}",
        "--header", f"x-bench-delay-ms:{scenario.delay_ms}",
    ]  # fmt: skip
    out = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def throughput(run: dict[str, Any]) -> float:
    """Requests per second, from the body lines that arrived before the deadline divided by
    the lines of one request: smooth, where counting whole requests in a window of 1.3 s
    streams jumps by hundreds."""
    if not run["requests"]:
        return 0.0
    per_request = run["lines"] / run["requests"]
    return float(run["window_lines_per_s"]) / per_request if per_request else 0.0


def warm_up(url: str, scenario: Scenario, seconds: float) -> None:
    """Open the connections (client -> proxy -> upstream) before measuring."""
    if seconds > 0:
        loadgen(url, Scenario("warm-up", "", scenario.concurrency, scenario.body, scenario.tokens,
                              scenario.delay_ms, duration=seconds))  # fmt: skip


def measure(
    scenario: Scenario, upstream: int, proxy: int, proxy_pid: int, warmup: float = 0.0
) -> dict[str, Any]:
    warm_up(f"http://127.0.0.1:{upstream}/api/chat", scenario, warmup)
    direct = loadgen(f"http://127.0.0.1:{upstream}/api/chat", scenario)
    warm_up(f"http://127.0.0.1:{proxy}{scenario.proxy_path}", scenario, warmup)
    peak = [rss_mib(proxy_pid)]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.2):
            peak[0] = max(peak[0], rss_mib(proxy_pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    cpu_before = cpu_seconds(proxy_pid)
    proxied = loadgen(f"http://127.0.0.1:{proxy}{scenario.proxy_path}", scenario)
    cpu = cpu_seconds(proxy_pid) - cpu_before
    stop.set()
    sampler.join()
    chunks = max(1, proxied["requests"] * (scenario.tokens + 1 if scenario.unit == "chunk" else 1))
    result = {
        "key": scenario.key,
        "title": scenario.title,
        "direct": direct,
        "proxy": proxied,
        "direct_req_per_s": round(throughput(direct), 1),
        "proxy_req_per_s": round(throughput(proxied), 1),
        "ratio_req_per_s": round(throughput(proxied) / throughput(direct), 3)
        if throughput(direct)
        else None,
        "ttfb_p50_added_ms": round(proxied["ttfb_p50_ms"] - direct["ttfb_p50_ms"], 2),
        "ttfb_p99_added_ms": round(proxied["ttfb_p99_ms"] - direct["ttfb_p99_ms"], 2),
        "total_p50_added_ms": round(proxied["total_p50_ms"] - direct["total_p50_ms"], 2),
        "proxy_cpu_s": round(cpu, 3),
        "proxy_cpu_per_request_ms": round(cpu / max(1, proxied["requests"]) * 1000, 4),
        "proxy_cpu_per_chunk_us": round(cpu / chunks * 1e6, 2),
        "proxy_rss_peak_mib": round(peak[0], 1),
        "unit_chunk": scenario.unit == "chunk" and scenario.delay_ms > 0,
    }
    return result


#: The fields of a row that ``--repeat`` replaces by their median over the rounds.
MEDIAN_FIELDS = (
    "direct_req_per_s",
    "proxy_req_per_s",
    "ratio_req_per_s",
    "ttfb_p50_added_ms",
    "ttfb_p99_added_ms",
    "total_p50_added_ms",
    "proxy_cpu_s",
    "proxy_cpu_per_request_ms",
    "proxy_cpu_per_chunk_us",
)
#: The fields whose every round is kept in the row (``rounds``), to show the spread.
ROUND_FIELDS = ("ratio_req_per_s", "proxy_req_per_s", "proxy_cpu_per_chunk_us")


def combine(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One row from the rounds of a scenario: the median of each measured field, the raw
    load-generator output of the median round, every round's errors, the highest RSS."""
    if len(runs) == 1:
        return runs[0]
    ordered = sorted(runs, key=lambda r: r["ratio_req_per_s"] or 0)
    row = dict(ordered[len(ordered) // 2])
    for name in MEDIAN_FIELDS:
        values = [r[name] for r in runs if r[name] is not None]
        row[name] = round(statistics.median(values), 4) if values else None
    row["proxy"] = {**row["proxy"], "errors": sum(r["proxy"]["errors"] for r in runs)}
    row["proxy_rss_peak_mib"] = max(r["proxy_rss_peak_mib"] for r in runs)
    row["rounds"] = {name: [r[name] for r in runs] for name in ROUND_FIELDS}
    return row


def paired_median(row: dict[str, Any], base: dict[str, Any], name: str) -> float:
    """``row[name] / base[name]``, from the rounds of both when there are several: the
    median of the ratios of the same round, which a machine that slows down for a while
    moves far less than the ratio of two medians."""
    mine, theirs = row.get("rounds", {}).get(name), base.get("rounds", {}).get(name)
    if mine and theirs and len(mine) == len(theirs):
        return statistics.median(a / b for a, b in zip(mine, theirs, strict=True) if b)
    return row[name] / base[name] if base[name] else 0.0


def plot(results: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = results["scenarios"]
    labels = [r["key"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    left.bar(labels, [r["ratio_req_per_s"] or 0 for r in rows], color="#4a7bd0")
    left.axhline(1.0, color="black", linewidth=0.8)
    left.axhline(0.95, color="#c04040", linewidth=0.8, linestyle="--", label="0.95 target")
    left.set_ylim(0, 1.1)
    left.set_title("req/s through the proxy ÷ direct")
    left.legend(loc="lower right")
    width = 0.4
    xs = range(len(rows))
    right.bar(
        [x - width / 2 for x in xs],
        [r["ttfb_p50_added_ms"] for r in rows],
        width,
        label="TTFB p50 added",
    )
    right.bar(
        [x + width / 2 for x in xs],
        [r["ttfb_p99_added_ms"] for r in rows],
        width,
        label="TTFB p99 added",
    )
    right.set_xticks(list(xs), labels)
    right.set_title("time to first byte added by the proxy (ms, log scale)")
    right.set_yscale("symlog", linthresh=1)
    right.legend()
    for axis in (left, right):
        axis.tick_params(axis="x", labelrotation=30)
    fig.suptitle(f"ollama-smart-proxy vs direct ({results['machine']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def table(results: dict[str, Any]) -> str:
    lines = [
        "| scenario | direct req/s | proxy req/s | ratio | TTFB p50 +ms | TTFB p99 +ms | proxy CPU/req | proxy CPU/chunk | errors |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["scenarios"]:
        lines.append(
            f"| {r['key']}: {r['title']} | {r['direct_req_per_s']:.0f} | {r['proxy_req_per_s']:.0f} "
            f"| {r['ratio_req_per_s']:.2f}x | {r['ttfb_p50_added_ms']:+.2f} | {r['ttfb_p99_added_ms']:+.2f} "
            f"| {r['proxy_cpu_per_request_ms']:.3f} ms | {r['proxy_cpu_per_chunk_us']:.1f} µs "
            f"| {r['proxy']['errors']} |"
        )
    paced = [r for r in results["scenarios"] if r["key"].startswith("C") and r["unit_chunk"]]
    # The translated runs use the largest paced load: compare them with the native run of it.
    native = max(paced, key=lambda r: int(r["key"][1:])) if paced else None
    translated = [
        r for r in results["scenarios"] if r["key"].startswith("D") and "agent" not in r["key"]
    ]
    if native is not None and translated:
        lines.append("")
        lines.append(
            f"Translated streams against the native one ({native['key']}) through the proxy, "
            "same run:"
        )
        lines.append("")
        lines.append("| dialect | CPU/chunk vs native | throughput vs native |")
        lines.append("|---|---|---|")
        for r in translated:
            cpu = paired_median(r, native, "proxy_cpu_per_chunk_us")
            rate = paired_median(r, native, "proxy_req_per_s")
            lines.append(f"| {r['key']} | {cpu:.2f}x | {rate:.2f}x |")
    memory = results["memory"]
    lines.append("")
    lines.append(
        f"Proxy RSS: idle {memory['idle_mib']:.1f} MiB, peak during the largest paced run "
        f"{memory['peak_streams_mib']:.1f} MiB, after {memory['soak_requests']} more requests "
        f"{memory['after_soak_mib']:.1f} MiB (before them {memory['before_soak_mib']:.1f} MiB)."
    )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a few seconds, smaller loads")
    parser.add_argument("--out", type=Path, default=None, help="JSON output (default: results/)")
    parser.add_argument("--proxy-args", default="", help="extra launcher flags")
    parser.add_argument("--only", action="append", default=[], help="run only these scenarios")
    parser.add_argument(
        "--repeat", type=int, default=1,
        help="rounds of every scenario; each row is then the median of its rounds",
    )  # fmt: skip
    parser.add_argument(
        "--impl", choices=["auto", "go", "python"], default="auto",
        help="fake upstream and load generator: Go (fast; needs a Go toolchain) or Python",
    )  # fmt: skip
    args = parser.parse_args()

    upstream, proxy = free_port(), free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env = {k: v for k, v in env.items() if not k.startswith("OSP_")}
    IMPL["name"] = choose_impl(args.impl)
    processes = [
        subprocess.Popen(upstream_command(upstream), cwd=ROOT, env=env, stdout=subprocess.DEVNULL),
    ]
    try:
        wait_for(upstream)
        processes.append(
            subprocess.Popen(
                [
                    sys.executable, "-m", "ollama_smart_proxy", "--port", str(proxy),
                    "--upstream", f"http://127.0.0.1:{upstream}", "--log-level", "warning",
                    "--plugins-dir", str(ROOT / "examples" / "plugins"),
                    *args.proxy_args.split(),
                ],
                cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
            )
        )  # fmt: skip
        wait_for(proxy)
        pid = processes[1].pid
        time.sleep(0.5)
        idle = rss_mib(pid)
        chosen = [s for s in scenarios(args.quick) if not args.only or s.key in args.only]
        runs: dict[str, list[dict[str, Any]]] = {s.key: [] for s in chosen}
        # Round after round of every scenario, so a slow spell of the machine touches all.
        for round_number in range(1, args.repeat + 1):
            for scenario in chosen:
                row = measure(scenario, upstream, proxy, pid, 0.0 if args.quick else 2.0)
                runs[scenario.key].append(row)
                prefix = f"[{round_number}/{args.repeat}] " if args.repeat > 1 else ""
                print(
                    f"{prefix}{row['key']:<14} ratio {row['ratio_req_per_s']:.3f}  "
                    f"ttfb p50 +{row['ttfb_p50_added_ms']:.2f} ms  "
                    f"cpu/req {row['proxy_cpu_per_request_ms']:.3f} ms  "
                    f"cpu/chunk {row['proxy_cpu_per_chunk_us']:.1f} us  "
                    f"errors {row['proxy']['errors']}",
                    flush=True,
                )
        rows = [combine(runs[s.key]) for s in chosen]
        soak_requests = 2000 if args.quick else 20000
        before = rss_mib(pid)
        loadgen(
            f"http://127.0.0.1:{proxy}/api/chat",
            Scenario("soak", "soak", 50, NATIVE_ONCE, duration=600, requests=soak_requests),
        )
        after = rss_mib(pid)
        results = {
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
            "upstream_and_loadgen": IMPL["name"],
            "quick": args.quick,
            "repeat": args.repeat,
            "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "scenarios": rows,
            "memory": {
                "idle_mib": round(idle, 1),
                "peak_streams_mib": max(r["proxy_rss_peak_mib"] for r in rows),
                "before_soak_mib": round(before, 1),
                "after_soak_mib": round(after, 1),
                "soak_requests": soak_requests,
            },
        }
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in processes:
            process.wait(timeout=10)
    RESULTS.mkdir(exist_ok=True)
    name = "quick" if args.quick else "latest"
    out = args.out or RESULTS / f"{name}.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print()
    print(table(results))
    if not args.quick and plot(results, out.with_suffix(".png")):
        print(f"\nplot: {out.with_suffix('.png')}")
    print(f"results: {out}")
    errors = sum(r["proxy"]["errors"] for r in rows)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
