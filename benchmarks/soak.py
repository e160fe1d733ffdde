"""Soak: a long run at 70 % of the measured capacity (issue 13).

Capacity is measured first (closed loop, as `benchmarks.overload` does); then open-loop Poisson arrivals at
`--load` x capacity for `--minutes`, while a sampler records the server's resident memory every 10 s.

Targets: zero errors (every answer 200 and correct), resident memory flat (the slope of a least-squares line
through the samples after the first minute, in MiB per hour, near 0), and the p99 latency of the last 5
minutes within 20 % of the first 5. Writes the figures (JSON) and a plot of latency and memory over time.

Usage: python -m benchmarks.soak [--minutes 30] [--load 0.7] [--capacity-seconds 20] [--split-cores]
                                 [--out benchmarks/results/soak.json] [--plot docs/reliability-soak.png]
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from benchmarks.openloop import Sample, open_loop, percentile
from benchmarks.overload import capacity
from benchmarks.report import machine, write_report
from benchmarks.targets import PHOTO, REQUEST, Sampler, add_split_cores_option, tiny_server

WINDOW_S = 300.0
"""The first and last windows whose p99 latencies are compared."""


def per_minute(samples: list[Sample]) -> list[dict[str, float]]:
    """Throughput and latency percentiles of each minute of the run."""
    minutes: dict[int, list[Sample]] = {}
    for sample in samples:
        minutes.setdefault(int(sample.arrival // 60), []).append(sample)
    return [
        {
            "minute": minute,
            "requests_per_s": len(group) / 60,
            "p50_ms": 1000 * percentile([s.latency_s for s in group], 50),
            "p99_ms": 1000 * percentile([s.latency_s for s in group], 99),
        }
        for minute, group in sorted(minutes.items())
    ]


def slope_per_hour(points: list[tuple[float, float, float]]) -> float:
    """Least-squares slope of RSS (MiB) over time, in MiB per hour."""
    if len(points) < 2:
        return 0.0
    xs = [t for t, _, _ in points]
    ys = [rss for _, rss, _ in points]
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mean_x) ** 2 for x in xs)
    return 3600 * sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / var if var else 0.0


def summarize(
    samples: list[Sample], memory: list[tuple[float, float, float]], seconds: float, reference: list[str]
) -> dict[str, Any]:
    """The soak's figures."""
    errors = [s for s in samples if s.status != 200]
    wrong = sum(
        1 for s in samples if s.status == 200 and [i["label"] for i in json.loads(s.body)] != reference
    )
    first = [s.latency_s for s in samples if s.arrival < WINDOW_S]
    last = [s.latency_s for s in samples if s.arrival >= seconds - WINDOW_S]
    settled = [point for point in memory if point[0] >= 60]
    return {
        "requests": len(samples),
        "requests_per_s": len(samples) / seconds,
        "errors": len(errors),
        "error_statuses": sorted({s.status for s in errors}),
        "connection_errors": dict(Counter(s.error for s in errors if s.status == 0)),
        "wrong_answers": wrong,
        "p50_ms": 1000 * percentile([s.latency_s for s in samples], 50),
        "p99_ms": 1000 * percentile([s.latency_s for s in samples], 99),
        "p99_first_window_ms": 1000 * percentile(first, 99),
        "p99_last_window_ms": 1000 * percentile(last, 99),
        "rss_start_mib": settled[0][1] if settled else float("nan"),
        "rss_end_mib": settled[-1][1] if settled else float("nan"),
        "rss_max_mib": max((rss for _, rss, _ in settled), default=float("nan")),
        "rss_slope_mib_per_hour": slope_per_hour(settled),
        "minutes": per_minute(samples),
    }


def plot(result: dict[str, Any], memory: list[tuple[float, float, float]], path: Path, title: str) -> None:
    """Latency (p50, p99 per minute) and RSS over time, one figure, two panels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (latency, rss) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    minutes = [row["minute"] + 0.5 for row in result["minutes"]]
    latency.plot(minutes, [row["p50_ms"] for row in result["minutes"]], label="p50")
    latency.plot(minutes, [row["p99_ms"] for row in result["minutes"]], label="p99")
    latency.set_ylabel("latency per minute (ms)")
    latency.legend()
    latency.set_title(title)
    rss.plot([t / 60 for t, _, _ in memory], [value for _, value, _ in memory], color="tab:green")
    rss.set_ylabel("server RSS (MiB)")
    rss.set_xlabel("minutes")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=80)
    print(f"wrote {path}")


def main() -> None:
    """Measure capacity, soak the server at `--load` of it, print and record the figures and the plot."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--load", type=float, default=0.7)
    parser.add_argument("--capacity-seconds", type=float, default=20.0)
    parser.add_argument("--connections", type=int, default=32)
    add_split_cores_option(parser)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/soak.json"))
    parser.add_argument("--plot", type=Path, default=Path("docs/reliability-soak.png"))
    args = parser.parse_args()
    seconds = 60 * args.minutes
    with tiny_server(split_cores=args.split_cores) as server:
        assert server.process is not None
        measured = capacity(server.url, connections=args.connections, seconds=args.capacity_seconds)
        reference = [item["label"] for item in httpx.post(server.url + "/predict", content=PHOTO).json()]
        with Sampler(server.url, server.process.pid, interval_s=10) as sampler:
            samples = asyncio.run(open_loop(server.url, REQUEST, rate=args.load * measured, seconds=seconds))
    result = {"capacity_per_s": measured, **summarize(samples, sampler.samples, seconds, reference)}
    verdicts = {
        "zero errors": result["errors"] == 0 and result["wrong_answers"] == 0,
        "RSS slope ~0 (under 1 % of RSS per hour)": abs(result["rss_slope_mib_per_hour"])
        <= 0.01 * result["rss_start_mib"],
        "p99 of the last 5 min within 20 % of the first 5": result["p99_last_window_ms"]
        <= 1.2 * result["p99_first_window_ms"],
    }
    print(f"capacity  {measured:.1f}/s; offered {result['requests_per_s']:.1f}/s for {args.minutes:g} min")
    print(f"errors    {result['errors']} {result['error_statuses']}, wrong answers {result['wrong_answers']}")
    for error, count in result["connection_errors"].items():
        print(f"          {count} x {error}")
    print(f"latency   p50 {result['p50_ms']:.0f} ms, p99 {result['p99_ms']:.0f} ms")
    first, last = result["p99_first_window_ms"], result["p99_last_window_ms"]
    print(f"p99       first 5 min {first:.0f} ms, last 5 min {last:.0f} ms")
    print(
        f"RSS       {result['rss_start_mib']:.0f} -> {result['rss_end_mib']:.0f} MiB "
        f"(max {result['rss_max_mib']:.0f}), slope {result['rss_slope_mib_per_hour']:+.1f} MiB/h"
    )
    for name, ok in verdicts.items():
        print(f"  {'met' if ok else 'NOT MET':8s} {name}")
    report = {"machine": machine(), "settings": {**vars(args), "out": str(args.out), "plot": str(args.plot)}}
    write_report({**report, "result": result, "verdicts": verdicts, "memory": sampler.samples}, args.out)
    plot(
        result,
        sampler.samples,
        args.plot,
        f"{args.load:.0%} of capacity ({measured:.0f}/s), {args.minutes:g} min",
    )


if __name__ == "__main__":
    main()
