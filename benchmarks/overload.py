"""Overload: four times the measured capacity for two minutes (issue 13).

1. Capacity: closed-loop clients (`--connections`) predict as fast as answered for `--capacity-seconds`; the
   throughput of 200s is the capacity.
2. Overload: open-loop Poisson arrivals at `--factor` x capacity for `--seconds`, while a sampler reads the
   server's queue depth and memory every second.

Targets: the excess is refused fast (503 with Retry-After, p99 within 50 ms of its due time), every accepted
request succeeds within its deadline (BAKE_TIMEOUT_S), the queue never exceeds its bound (BAKE_MAX_QUEUE),
accepted throughput stays within 10 % of capacity, and resident memory after the run is within 5 % of before.

Usage: python -m benchmarks.overload [--factor 4] [--seconds 120] [--capacity-seconds 20] [--connections 32]
                                     [--split-cores] [--out benchmarks/results/overload.json]
--split-cores runs the load generator on the first core alone and the server on the others (as a client on
another machine would be): on a 2-core machine the generator's own waits for a core otherwise count as the
server's refusal latency.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.openloop import Sample, closed_loop, open_loop, percentile
from benchmarks.report import machine, write_report
from benchmarks.targets import PHOTO, REQUEST, Sampler, add_split_cores_option, tiny_server

DEADLINE_S = 30.0
MAX_QUEUE = 256


def capacity(url: str, *, connections: int, seconds: float) -> float:
    """Predictions per second the server answers 200 to, closed loop."""
    asyncio.run(closed_loop(url, REQUEST, connections=connections, seconds=3))  # warm every code path
    samples = asyncio.run(closed_loop(url, REQUEST, connections=connections, seconds=seconds))
    return sum(sample.status == 200 for sample in samples) / seconds


def summarize(samples: list[Sample], seconds: float, reference: list[str]) -> dict[str, Any]:
    """Accepted and refused requests, their latencies, and what went wrong."""
    accepted = [sample for sample in samples if sample.status == 200]
    refused = [sample for sample in samples if sample.status == 503]
    wrong = sum(1 for sample in accepted if [item["label"] for item in json.loads(sample.body)] != reference)
    return {
        "offered": len(samples),
        "offered_per_s": len(samples) / seconds,
        "accepted": len(accepted),
        "accepted_per_s": len(accepted) / seconds,
        "accepted_p50_ms": 1000 * percentile([s.latency_s for s in accepted], 50),
        "accepted_p99_ms": 1000 * percentile([s.latency_s for s in accepted], 99),
        "accepted_max_ms": 1000 * max((s.latency_s for s in accepted), default=0.0),
        "accepted_past_deadline": sum(1 for s in accepted if s.latency_s > DEADLINE_S),
        "accepted_wrong_answers": wrong,
        "refused": len(refused),
        "refused_p50_ms": 1000 * percentile([s.service_s for s in refused], 50),
        "refused_p99_ms": 1000 * percentile([s.service_s for s in refused], 99),
        "refused_p99_from_due_ms": 1000 * percentile([s.latency_s for s in refused], 99),
        "refused_without_retry_after": sum(1 for s in refused if not s.retry_after),
        "other": sorted({s.status for s in samples} - {200, 503}),
        "connection_errors": sorted({s.error for s in samples if s.error and s.status == 0})[:5],
        "other_count": sum(1 for s in samples if s.status not in (200, 503)),
    }


def main() -> None:
    """Measure capacity, overload the server, print the verdicts and record the figures."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--factor", type=float, default=4.0)
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--capacity-seconds", type=float, default=20.0)
    parser.add_argument("--connections", type=int, default=32)
    add_split_cores_option(parser)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/overload.json"))
    args = parser.parse_args()
    with tiny_server(
        split_cores=args.split_cores, BAKE_TIMEOUT_S=str(DEADLINE_S), BAKE_MAX_QUEUE=str(MAX_QUEUE)
    ) as server:
        assert server.process is not None
        measured = capacity(server.url, connections=args.connections, seconds=args.capacity_seconds)
        reference = [item["label"] for item in httpx.post(server.url + "/predict", content=PHOTO).json()]
        with Sampler(server.url, server.process.pid) as sampler:
            rss_before = sampler.rss_mib()
            samples = asyncio.run(
                open_loop(server.url, REQUEST, rate=args.factor * measured, seconds=args.seconds)
            )
        time.sleep(5)
        rss_after = sampler.rss_mib()
    result = summarize(samples, args.seconds, reference)
    depths = [depth for _, _, depth in sampler.samples if depth == depth]
    result |= {
        "capacity_per_s": measured,
        "max_queue_depth_seen": max(depths, default=0.0),
        "rss_before_mib": rss_before,
        "rss_after_mib": rss_after,
    }
    verdicts = {
        "503 + Retry-After within 50 ms (p99)": result["refused_p99_ms"] <= 50
        and result["refused_without_retry_after"] == 0,
        "accepted succeed within the deadline": result["accepted_past_deadline"] == 0
        and result["other_count"] == 0
        and result["accepted_wrong_answers"] == 0,
        f"queue within its bound ({MAX_QUEUE})": result["max_queue_depth_seen"] <= MAX_QUEUE,
        "accepted throughput within 10 % of capacity": result["accepted_per_s"] >= 0.9 * measured,
        "RSS after within 5 % of before": rss_after <= 1.05 * rss_before,
    }
    _print(args, result, verdicts)
    write_report(
        {
            "machine": machine(),
            "settings": {**vars(args), "out": str(args.out)},
            "result": result,
            "verdicts": verdicts,
        },
        args.out,
    )


def _print(args: argparse.Namespace, result: dict[str, Any], verdicts: dict[str, bool]) -> None:
    print(f"capacity           {result['capacity_per_s']:.1f}/s (closed loop, {args.connections} clients)")
    print(f"offered            {result['offered_per_s']:.1f}/s for {args.seconds:.0f} s ({args.factor:g}x)")
    print(
        f"accepted           {result['accepted_per_s']:.1f}/s, p50 {result['accepted_p50_ms']:.0f} ms, "
        f"p99 {result['accepted_p99_ms']:.0f} ms, max {result['accepted_max_ms']:.0f} ms"
    )
    print(
        f"refused (503)      {result['refused']}, p50 {result['refused_p50_ms']:.1f} ms, "
        f"p99 {result['refused_p99_ms']:.1f} ms, without Retry-After: {result['refused_without_retry_after']}"
    )
    print(f"other outcomes     {result['other_count']} {result['other']}")
    print(f"queue depth        max {result['max_queue_depth_seen']:.0f} of {MAX_QUEUE}")
    print(f"RSS                {result['rss_before_mib']:.0f} -> {result['rss_after_mib']:.0f} MiB")
    for name, ok in verdicts.items():
        print(f"  {'met' if ok else 'NOT MET':8s} {name}")


if __name__ == "__main__":
    main()
