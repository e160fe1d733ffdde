"""The compile stage's two candidates side by side: frozen TorchScript and torch.export + AOTInductor.

For one image classifier (ResNet-50 architecture with random weights by default: `benchmarks.serving`'s
model), each candidate is made as the compile stage would make it, then used as the server would use it, each
step in a fresh process so that nothing is warm that a new container would not have:
  - make: trace (TorchScript: `torch.jit.trace`; AOTInductor: `torch.export.export` with a dynamic batch
    dimension, then `torch._inductor.aoti_compile_and_package`, which runs the C++ compiler) and save;
  - start: import torch, load the artifact (TorchScript: `serve.tracing.load_frozen`, the weights attached
    from the safetensors file and frozen, as the server does, and "torchscript-optimized" also rewritten by
    `torch.jit.optimize_for_inference`; AOTInductor: `aoti_load_package`), one forward
    pass at batch size 1 (the first request's), then one at each other batch size (the warm-up);
  - run: images per second at each batch size, warm, default torch threads;
  - the artifact's size, and the largest difference of its logits from the eager model's.
Eager transformers is the reference row (its start: import transformers, `from_pretrained`, one forward).

Usage: python -m benchmarks.aot [--model resnet50|tiny] [--batch-sizes 1,4,8] [--seconds 10]
                                [--out benchmarks/results/aot.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

from benchmarks.report import machine, write_report
from benchmarks.serving import REGIMES, make_model
from tests.fixtures.servers import REPO_ROOT

MAKE = {
    "torchscript": """
        from serve.tracing import detach_weights, traced_forward
        rows = {"pixel_values": torch.randn(3, 3, 224, 224)}
        traced = traced_forward(model, rows, BATCHES, rtol=1e-4, atol=1e-4)
        assert traced is not None
        (OUT / "sources.json").write_text(json.dumps(detach_weights(traced.trace, MODEL_DIR)))
        torch.jit.save(traced.trace, str(OUT / "forward.pt"))
        """,
    "aotinductor": """
        from benchmarks.logits import Logits
        batch = torch.export.Dim("batch", min=1, max=max(BATCHES))
        program = torch.export.export(
            Logits(model).eval(), (torch.randn(2, 3, 224, 224),), dynamic_shapes=({0: batch},)
        )
        torch._inductor.aoti_compile_and_package(program, package_path=str(OUT / "forward.pt2"))
        """,
}
"""Run after `model` (eager transformers, in eval mode) is loaded: write the artifact into OUT."""

LOAD = {
    "torchscript": """
        from serve.tracing import load_frozen
        sources = json.loads((OUT / "sources.json").read_text())
        forward = load_frozen(OUT / "forward.pt", sources, MODEL_DIR, torch.device("cpu"))
        """,
    "torchscript-optimized": """
        from serve.contract.compiled import Rewrite
        from serve.tracing import load_frozen
        sources = json.loads((OUT / "sources.json").read_text())
        rewrite = Rewrite.OPTIMIZE_FOR_INFERENCE
        forward = load_frozen(OUT / "forward.pt", sources, MODEL_DIR, torch.device("cpu"), rewrite=rewrite)
        """,
    "aotinductor": """
        import torch._inductor
        forward = torch._inductor.aoti_load_package(str(OUT / "forward.pt2"))
        """,
    "eager": """
        from transformers import AutoModelForImageClassification
        model = AutoModelForImageClassification.from_pretrained(str(MODEL_DIR)).eval()
        def forward(pixel_values):
            return model(pixel_values=pixel_values, return_dict=False)[0]
        """,
}
"""Define `forward(pixel_values) -> logits` from the artifact in OUT (or eagerly)."""

PRELUDE = """
import sys, time
from pathlib import Path
began = time.perf_counter()
import torch
sys.path.insert(0, {repo!r})
MODEL_DIR, OUT, BATCHES = Path({model_dir!r}), Path({out!r}), {batches!r}
"""


def run_python(code: str, timeout: float = 1800) -> dict[str, Any]:
    """Run `code` in a fresh interpreter; its last stdout line is JSON."""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-3000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


def make(kind: str, model_dir: Path, out: Path, batches: list[int]) -> dict[str, Any]:
    """Make the `kind` artifact in a fresh process: seconds and bytes."""
    prelude = PRELUDE.format(repo=str(REPO_ROOT), model_dir=str(model_dir), out=str(out), batches=batches)
    body = textwrap.dedent(MAKE[kind])
    code = (
        prelude
        + "import json\nfrom transformers import AutoModelForImageClassification\n"
        + "model = AutoModelForImageClassification.from_pretrained(str(MODEL_DIR)).eval()\n"
        + "started = time.perf_counter()\nwith torch.inference_mode():\n"
        + textwrap.indent(body, "    ")
        + "size = sum(p.stat().st_size for p in OUT.iterdir() if p.name.startswith('forward'))\n"
        + "print(json.dumps({'seconds': time.perf_counter() - started, 'bytes': size}))\n"
    )
    return run_python(code)


def start_and_run(
    kind: str, model_dir: Path, out: Path, batches: list[int], seconds: float
) -> dict[str, Any]:
    """Load and use the `kind` artifact in a fresh process: start-up steps, throughput, difference."""
    prelude = PRELUDE.format(repo=str(REPO_ROOT), model_dir=str(model_dir), out=str(out), batches=batches)
    code = (
        prelude
        + "import json\nimported = time.perf_counter()\n"
        + textwrap.dedent(LOAD[kind])
        + textwrap.dedent(
            """
            loaded = time.perf_counter()
            torch.manual_seed(0)
            images = torch.randn(max(BATCHES), 3, 224, 224)
            with torch.inference_mode():
                first_logits = forward(images[:1])
                first = time.perf_counter()
                for size in BATCHES:
                    forward(images[:size])
                warm = time.perf_counter()
                rates = {}
                for size in BATCHES:
                    count, started = 0, time.perf_counter()
                    while time.perf_counter() - started < SECONDS:
                        forward(images[:size])
                        count += size
                    rates[size] = count / (time.perf_counter() - started)
                logits = forward(images).tolist()
            print(json.dumps({
                "import_s": imported - began, "load_s": loaded - imported, "first_forward_s": first - loaded,
                "to_first_prediction_s": first - began, "warm_up_s": warm - first, "images_per_s": rates,
                "logits": logits,
            }))
            """
        ).replace("SECONDS", repr(seconds))
    )
    return run_python(code)


def main() -> int:
    """Make, start and run each candidate; print a table and write JSON."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", choices=sorted(REGIMES), default="resnet50")
    parser.add_argument("--batch-sizes", default="1,4,8")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "aot.json")
    args = parser.parse_args()
    batches = [int(size) for size in args.batch_sizes.split(",")]
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as scratch:
        model_dir = make_model(REGIMES[args.model], Path(scratch))
        reference = None
        for kind in ("eager", "torchscript", "torchscript-optimized", "aotinductor"):
            made = results.get(kind.removesuffix("-optimized"), {}).get("make", {})  # the same archive
            out = Path(scratch) / kind.removesuffix("-optimized")
            print(f"{kind} ...", flush=True)
            if not out.exists():
                out.mkdir()
                made = make(kind, model_dir, out, batches) if kind in MAKE else {}
            used = start_and_run(kind, model_dir, out, batches, args.seconds)
            logits = used.pop("logits")
            reference = reference or logits
            used["max_logit_difference"] = max(
                abs(a - b) for row, ref in zip(logits, reference, strict=True) for a, b in zip(row, ref)
            )
            results[kind] = {"make": made, **used}
    print(f"\n== {args.model}: compile candidates on the CPU ==")
    rates = " ".join(f"{f'b{size} img/s':>10s}" for size in batches)
    steps = f"{'make':>8s} {'size':>9s} {'import':>7s} {'load':>6s} {'1st fwd':>8s} {'warm-up':>8s}"
    print(f"{'':21s} {steps} {rates}")
    for kind, row in results.items():
        made = row["make"]
        rates = " ".join(f"{row['images_per_s'][str(size)]:10.1f}" for size in batches)
        print(
            f"{kind:21s} {made.get('seconds', 0):7.1f}s {made.get('bytes', 0) / 2**20:7.1f}Mi "
            f"{row['import_s']:6.2f}s {row['load_s']:5.2f}s {row['first_forward_s']:7.2f}s "
            f"{row['warm_up_s']:7.2f}s {rates}  max |logit diff| {row['max_logit_difference']:.1e}"
        )
    report = {"machine": machine(), "model": args.model, "batch_sizes": batches, "results": results}
    write_report(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
