"""`docker run` to the first prediction of images that are already built, against the floor.

For each image (e.g. one built with the compiled forward pass and one with `--no-compile`, same model): the
seconds from `docker run` to the first 200 from POST /predict (`--model`'s request, for a classifier a
640x480 JPEG, sent from inside the container, `--network none`), and the floor measured in the first image
(for a classifier: its python imports torch and transformers, loads the baked weights and runs one forward
pass; `benchmarks.build`'s workloads and timers). Rounds interleave the
images and the floor, rotating their order; medians are reported with each image's `dev.bake.compiled`
label and its server's own "ready in" time.

Usage: python -m benchmarks.startup --image TAG [--image TAG ...] [--model resnet50|t2i-mid] [--rounds 3]
                                  [--out FILE]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from benchmarks.build import _READY_IN, WORKLOADS, docker_versions, time_first_prediction, time_floor
from benchmarks.report import machine, rotated, write_report
from serve.contract.labels import COMPILED
from tests.fixtures.docker import labels
from tests.fixtures.servers import REPO_ROOT

FLOOR = "floor"


def measure(tags: list[str], model: str, rounds: int) -> dict[str, dict[str, list[float]]]:
    """Per image (and the floor): the seconds to first prediction and the server's "ready in", per round."""
    workload = WORKLOADS[model]
    runs: dict[str, dict[str, list[float]]] = {
        name: {"seconds": [], "ready_in_s": []} for name in [*tags, FLOOR]
    }
    order = [*tags, FLOOR]
    for index in range(rounds):
        for kind in rotated(order, index):
            name = f"bake-bench-startup-{uuid.uuid4().hex[:8]}"
            try:
                if kind == FLOOR:
                    runs[FLOOR]["seconds"].append(time_floor(tags[0], name, workload.floor))
                    continue
                seconds, _ready, log = time_first_prediction(kind, name, workload, [])
                runs[kind]["seconds"].append(seconds)
                ready = [float(match.group(1)) for line in log if (match := _READY_IN.search(line))]
                runs[kind]["ready_in_s"].extend(ready)
            finally:
                subprocess.run(["docker", "rm", "-f", name], capture_output=True)
    return runs


def summarize(tags: list[str], runs: dict[str, dict[str, list[float]]]) -> dict[str, Any]:
    """Medians, ratios to the floor and each image's label."""
    floor = statistics.median(runs[FLOOR]["seconds"])
    result: dict[str, Any] = {"floor_s": floor, "images": {}}
    for tag in tags:
        first = statistics.median(runs[tag]["seconds"])
        ready = runs[tag]["ready_in_s"]
        result["images"][tag] = {
            "compiled": labels(tag).get(COMPILED, "(no label)"),
            "run_to_first_prediction_s": first,
            "vs_floor": first / floor,
            "server_ready_in_s": statistics.median(ready) if ready else None,
        }
    return result


def main() -> int:
    """Measure, print a table, write JSON."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--image", action="append", required=True, help="an image bake built (repeatable)")
    parser.add_argument(
        "--model",
        choices=sorted(WORKLOADS),
        default="resnet50",
        help="what the images serve (every image classifier takes the same request and floor)",
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "startup.json")
    args = parser.parse_args()
    info = {**machine(), **docker_versions(), "load_average_before": os.getloadavg()}
    runs = measure(args.image, args.model, args.rounds)
    summary = summarize(args.image, runs)
    report = {"machine": {**info, "load_average_after": os.getloadavg()}, "runs": runs, "summary": summary}
    print(f"\nfloor (import torch + transformers, load, one forward): {summary['floor_s']:.2f} s (median)")
    for tag, row in summary["images"].items():
        first, ready = row["run_to_first_prediction_s"], row["server_ready_in_s"]
        ready_text = "?" if ready is None else f"{ready:.2f}"
        print(
            f"{tag}: {row['compiled']}: docker run -> first prediction {first:.2f} s "
            f"= {row['vs_floor']:.2f}x the floor; server ready in {ready_text} s"
        )
    write_report(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
