"""Each way the compile stage may rewrite its archive (`serve.contract.compiled.Rewrite`), alone and served.

The compile stage keeps the way that runs its largest bucket fastest; this script shows what each way gives
on the ResNet-50 architecture (random weights), side by side in one run:
  (a) alone: the archive loaded as the runtime loads it (`serve.tracing.load_frozen`, `TracedForward`),
      and eager transformers, each in a fresh process, images per second at each batch size;
  (b) served: bake's server on the same archive with each way written in its manifest, under N clients
      sending photo-sized JPEGs (as `benchmarks.serving`).
Rounds rotate the order; the median round is reported.

Usage: python -m benchmarks.rewrites [--batch-sizes 4,8] [--seconds 5] [--serve-seconds 15] [--rounds 3]
                                     [--clients 16] [--out benchmarks/results/rewrites.json]
"""

from __future__ import annotations

import argparse
import base64
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

from benchmarks.report import machine, rotated, write_report
from benchmarks.serving import REGIMES, compile_model, make_model, measure, servers
from serve.contract.compiled import MANIFEST_FILE, Rewrite
from tests.fixtures import images
from tests.fixtures.servers import REPO_ROOT

EAGER = "eager"

CHILD = """
import json, sys, time, torch
from pathlib import Path
from serve.contract.compiled import Manifest, Rewrite
from serve.tracing import TracedForward, load_frozen
compiled, model_dir, way = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
sizes, seconds = {sizes}, {seconds}
with torch.inference_mode():
    if way == "eager":
        from transformers import AutoModelForImageClassification
        model = AutoModelForImageClassification.from_pretrained(str(model_dir)).eval()
        forward = lambda x: model(pixel_values=x).logits
    else:
        manifest = Manifest.read(compiled)
        rewrite = Rewrite(way)
        module = load_frozen(compiled / manifest.archive, manifest.tensors, model_dir, torch.device("cpu"),
                             rewrite=rewrite)
        traced = TracedForward(module, ("pixel_values",), fused=rewrite is Rewrite.ONEDNN_FUSION)
        forward = lambda x: traced({{"pixel_values": x}})
    rates = {{}}
    for size in sizes:
        batch = torch.randn(size, 3, 224, 224)
        for _ in range(3):
            forward(batch)
        count, began = 0, time.perf_counter()
        while time.perf_counter() - began < seconds:
            forward(batch)
            count += size
        rates[size] = count / (time.perf_counter() - began)
print(json.dumps(rates))
"""


def alone(compiled: Path, model_dir: Path, way: str, sizes: list[int], seconds: float) -> dict[str, float]:
    """Images per second of one way at each batch size, in a fresh process."""
    script = textwrap.dedent(CHILD.format(sizes=sizes, seconds=seconds))
    completed = subprocess.run(
        [sys.executable, "-c", script, str(compiled), str(model_dir), way],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"{way} failed: {completed.stderr.strip()[-2000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def with_rewrite(compiled: Path, target: Path, rewrite: Rewrite) -> Path:
    """A copy of the compile stage's output whose manifest says `rewrite`."""
    shutil.copytree(compiled, target)
    manifest = json.loads((target / MANIFEST_FILE).read_text())
    (target / MANIFEST_FILE).write_text(json.dumps(manifest | {"rewrite": rewrite.value}))
    return target


def main() -> int:
    """Measure every way alone and served; print the median rounds; write JSON."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch-sizes", default="4,8")
    parser.add_argument("--seconds", type=float, default=5.0, help="per batch size, alone")
    parser.add_argument("--serve-seconds", type=float, default=15.0)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "rewrites.json")
    args = parser.parse_args()
    sizes = [int(size) for size in args.batch_sizes.split(",")]
    regime = REGIMES["resnet50"]
    ways = [rewrite.value for rewrite in Rewrite]
    body = json.dumps({"inputs": base64.b64encode(images.photo(640, 480)).decode()}).encode()
    with tempfile.TemporaryDirectory(prefix="bake-rewrites-") as scratch:
        root = Path(scratch)
        model_dir = make_model(regime, root)
        compiled = compile_model(regime, model_dir, root / "compiled")
        chosen = json.loads((compiled / MANIFEST_FILE).read_text())["rewrite"]
        rates: dict[str, list[dict[str, float]]] = {way: [] for way in [EAGER, *ways]}
        for index in range(args.rounds):
            for way in rotated(list(rates), index):
                rates[way].append(alone(compiled, model_dir, way, sizes, args.seconds))
                print(f"  alone  {way:24s} {rates[way][-1]}", flush=True)
        served: dict[str, list[float]] = {way: [] for way in ways}
        copies = {way: with_rewrite(compiled, root / way, Rewrite(way)) for way in ways}
        for index in range(args.rounds):
            for way in rotated(ways, index):
                bake = servers(regime, model_dir, copies[way])[0]
                result = measure(
                    bake, body, clients=args.clients, seconds=args.serve_seconds, log=root / "servers.log"
                )
                served[way].append(result.throughput)
                print(f"  served {way:24s} {result.throughput:.1f} req/s", flush=True)
    medians = {
        way: {str(size): statistics.median(run[str(size)] for run in runs) for size in sizes}
        for way, runs in rates.items()
    }
    print(f"\nthe compile stage chose: {chosen}")
    print(f"{'way':24s}" + "".join(f"{'b' + str(size):>8s}" for size in sizes) + f"{'served':>9s}")
    for way, by_size in medians.items():
        cells = "".join(f"{rate:8.1f}" for rate in by_size.values())
        serving = f"{statistics.median(served[way]):9.1f}" if way in served else ""
        print(f"{way:24s}{cells}{serving}")
    report = {"machine": machine(), "settings": vars(args) | {"out": str(args.out)}, "chosen": chosen}
    write_report(report | {"alone": rates, "alone_medians": medians, "served": served}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
