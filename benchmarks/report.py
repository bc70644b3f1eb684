"""Write the results section of docs/performance.md from benchmarks/results/latest.json.

python -m benchmarks.run && python -m benchmarks.report
"""

from __future__ import annotations

import json
import sys
from typing import Any

from benchmarks.run import RESULTS, ROOT, paired_median, table

DOC = ROOT / "docs" / "performance.md"
START = "<!-- results:start"
END = "<!-- results:end -->"


def verdict(met: bool) -> str:
    return "met" if met else "**not met**"


def section(results: dict[str, Any]) -> str:
    rows = {row["key"]: row for row in results["scenarios"]}
    c5, c2, d = rows["C500"], rows["C200"], rows["D500-openai"]
    a1, a50 = rows["A1"], rows["A50"]
    memory = results["memory"]
    tools = "Go" if results.get("upstream_and_loadgen") == "go" else "Python"
    cpu_a = max(a1["proxy_cpu_per_request_ms"], a50["proxy_cpu_per_request_ms"])
    targets = [
        ("C500: ≥ 0.95× direct req/s, no errors",
         f"{c5['ratio_req_per_s']:.2f}×, {c5['proxy']['errors']} errors",
         c5["ratio_req_per_s"] >= 0.95 and not c5["proxy"]["errors"]),
        ("C500: TTFB p50 added ≤ 75 ms, p99 ≤ 150 ms",
         f"+{c5['ttfb_p50_added_ms']:.0f} ms, +{c5['ttfb_p99_added_ms']:.0f} ms",
         c5["ttfb_p50_added_ms"] <= 75 and c5["ttfb_p99_added_ms"] <= 150),
        ("≤ 60 µs proxy CPU per paced chunk",
         f"{c5['proxy_cpu_per_chunk_us']:.1f} µs (C500), {c2['proxy_cpu_per_chunk_us']:.1f} µs (C200)",
         c5["proxy_cpu_per_chunk_us"] <= 60),
        ("D500 through `/v1`: ≥ 0.90× direct",
         f"{d['ratio_req_per_s']:.2f}× ({d['proxy_cpu_per_chunk_us']:.1f} µs a chunk)",
         d["ratio_req_per_s"] >= 0.90),
        *(
            (f"{r['key']} against C500: ≤ 1.1× CPU a chunk, ≥ 0.95× throughput",
             f"{cpu:.2f}×, {rate:.2f}×", cpu <= 1.1 and rate >= 0.95)
            for key in ("D500-openai", "D500-responses", "D500-anthropic")
            if (r := rows.get(key))
            for cpu, rate in [(paired_median(r, c5, "proxy_cpu_per_chunk_us"),
                               paired_median(r, c5, "proxy_req_per_s"))]
        ),
        ("A: ≤ 0.5 ms CPU per non-streaming request",
         f"{a1['proxy_cpu_per_request_ms']:.3f} ms (c=1), {a50['proxy_cpu_per_request_ms']:.3f} ms (c=50)",
         cpu_a <= 0.5),
        ("A1: ≤ 0.5 ms added at p50", f"+{a1['ttfb_p50_added_ms']:.2f} ms",
         a1["ttfb_p50_added_ms"] <= 0.5),
        ("memory: ≤ 60 MiB idle", f"{memory['idle_mib']:.1f} MiB", memory["idle_mib"] <= 60),
        ("memory: ≤ 120 MiB at 500 streams", f"{memory['peak_streams_mib']:.1f} MiB",
         memory["peak_streams_mib"] <= 120),
        (f"memory: flat after a {memory['soak_requests']:,}-request run",
         f"{memory['before_soak_mib']:.1f} → {memory['after_soak_mib']:.1f} MiB",
         memory["after_soak_mib"] - memory["before_soak_mib"] < 5),
        ("the seed's floor: 50 concurrent, p95 < 10 s",
         f"A50 total p99 {a50['proxy']['total_p99_ms']:.0f} ms",
         a50["proxy"]["total_p99_ms"] < 10_000),
    ]  # fmt: skip
    lines = [
        f"A full run of {results['date']}"
        + (
            f" (each row the median of {results['repeat']} rounds)"
            if results.get("repeat", 1) > 1
            else ""
        )
        + f" on the project's machine ({results['machine']}; "
        f"the proxy, the {tools} fake upstream and the {tools} load generator share the cores; "
        "uvloop, httptools, orjson):",
        "",
        table(results),
        "",
        "![proxy vs direct](../benchmarks/results/latest.png)",
        "",
        "### Against the targets",
        "",
        "| target | this run | |",
        "|---|---|---|",
        *(f"| {name} | {value} | {verdict(met)} |" for name, value, met in targets),
    ]
    return "\n".join(lines)


def main() -> int:
    results = json.loads((RESULTS / "latest.json").read_text())
    text = DOC.read_text()
    start = text.index(START)
    start = text.index("\n", start) + 1
    end = text.index(END)
    DOC.write_text(text[:start] + section(results) + "\n" + text[end:])
    print(f"updated {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
