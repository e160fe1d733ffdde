"""What else could make an image classifier's CPU forward pass faster than the compile stage's archive.

The compile stage serves a frozen TorchScript trace, rewritten by `torch.jit.optimize_for_inference` when
that is faster (`benchmarks.aot`). Issue 14 asks for served throughput of 1.25x the eager forward pass at its
best batch size; these are the variants tried on top of the archive, each in a fresh process (torch's
fusion settings are global), measured at each batch size on the ResNet-50 architecture (random weights):
  - eager: transformers' forward, no tracing;
  - frozen: the frozen trace (the compile stage's archive as loaded);
  - optimized: frozen, then `torch.jit.optimize_for_inference`;
  - channels-last-onednn: the model and inputs in channels-last memory format, traced and frozen with
    oneDNN Graph fusion on (`torch.jit.enable_onednn_fusion`): what the compile stage keeps for ResNet-50
    since it tries that way too (`serve.contract.compiled.Rewrite`, which keeps the inputs contiguous);
  - "... x2 streams": the same module run by two threads at once, each with one torch thread, instead of
    one thread running it with every core (two batches in flight, as a server could run them).
Rounds rotate the variants' order and the median round is reported; images per second.

Usage: python -m benchmarks.forward_variants [--batch-sizes 4,8] [--batches 6] [--rounds 3]
                                             [--out benchmarks/results/forward_variants.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from benchmarks.report import machine, rotated, write_report
from tests.fixtures.servers import REPO_ROOT

VARIANTS = {
    "eager": ("eager", False, 1),
    "frozen": ("frozen", False, 1),
    "optimized": ("optimized", False, 1),
    "optimized x2 streams": ("optimized", False, 2),
    "channels-last-onednn": ("onednn", True, 1),
    "channels-last-onednn x2 streams": ("onednn", True, 2),
}
"""Name: (how the module is made, channels-last, concurrent streams)."""

CHILD = """
import json, sys, threading, time, torch
from transformers import ResNetConfig, ResNetForImageClassification
from benchmarks.logits import Logits
KIND, CHANNELS_LAST, STREAMS, BATCH_SIZES, BATCHES = {arguments}
torch.manual_seed(0)
model = ResNetForImageClassification(ResNetConfig(num_labels=1000)).eval()
module = Logits(model).eval()
layout = torch.channels_last if CHANNELS_LAST else torch.contiguous_format
module = module.to(memory_format=layout)
def batch(size):
    return torch.randn(size, 3, 224, 224).contiguous(memory_format=layout)
if KIND == "onednn":
    torch.jit.enable_onednn_fusion(True)
with torch.no_grad():
    forward = module
    if KIND != "eager":
        forward = torch.jit.freeze(torch.jit.trace(module, batch(max(BATCH_SIZES)), check_trace=False).eval())
        if KIND == "optimized":
            forward = torch.jit.optimize_for_inference(forward)
    rates = {{}}
    for size in BATCH_SIZES:
        inputs = batch(size)
        for _ in range(3):
            forward(inputs)
        def stream():
            if STREAMS > 1:
                torch.set_num_threads(1)  # per thread: this stream's forward passes only
            for _ in range(BATCHES):
                forward(inputs)
        threads = [threading.Thread(target=stream) for _ in range(STREAMS)]
        began = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        rates[size] = STREAMS * BATCHES * size / (time.perf_counter() - began)
    check = batch(max(BATCH_SIZES))  # after the warm runs: what a fusing executor runs by now
    difference = float((forward(check) - module(check)).abs().max())
print(json.dumps({{"images_per_s": rates, "max_abs_diff": difference}}))
"""


def run_variant(name: str, batch_sizes: list[int], batches: int) -> dict[str, object]:
    """One variant in a fresh process: images per second per batch size, and its largest logit difference."""
    kind, channels_last, streams = VARIANTS[name]
    script = CHILD.format(arguments=repr((kind, channels_last, streams, batch_sizes, batches)))
    completed = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO_ROOT, check=False
    )
    if completed.returncode != 0:
        raise RuntimeError(f"{name} failed: {completed.stderr.strip()[-2000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def main() -> int:
    """Run every variant in rotating rounds; print the median round per batch size; write JSON."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch-sizes", default="4,8")
    parser.add_argument("--batches", type=int, default=6, help="batches each stream runs per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--out", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "forward_variants.json"
    )
    args = parser.parse_args()
    sizes = [int(size) for size in args.batch_sizes.split(",")]
    names = list(VARIANTS)
    runs: dict[str, list[dict[str, object]]] = {name: [] for name in names}
    for index in range(args.rounds):
        for name in rotated(names, index):
            print(f"round {index + 1}: {name} ...", flush=True)
            runs[name].append(run_variant(name, sizes, args.batches))
    medians = {
        name: {
            str(size): statistics.median(run["images_per_s"][str(size)] for run in results)  # type: ignore[index]
            for size in sizes
        }
        for name, results in runs.items()
    }
    eager_best = max(medians["eager"].values())
    print(f"\n{'variant':34s}" + "".join(f"{'b' + str(size):>8s}" for size in sizes) + "  best/eager-best")
    for name, rates in medians.items():
        cells = "".join(f"{rate:8.1f}" for rate in rates.values())
        print(f"{name:34s}{cells}  {max(rates.values()) / eager_best:8.2f}x")
    report = {"machine": machine(), "settings": vars(args) | {"out": str(args.out)}, "runs": runs}
    write_report(report | {"medians": medians}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
