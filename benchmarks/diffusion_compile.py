"""Text-to-image's compile candidates: the UNet and the VAE decoder, eager against frozen TorchScript.

Issue 14 names the UNet (called once per denoising step, twice the batch with classifier-free guidance) and
the VAE decoder (once per image) as what a build-time compile stage would compile for a text-to-image image.
For one pipeline (`benchmarks.diffusion`'s random-weight models), each component is measured as a server
would use it, each step in a fresh process so that nothing is warm that a new container would not have:
  - eager: import torch and diffusers, `from_pretrained` the component from the saved pipeline (the start),
    one call (the first request's), then the median of `--calls` warm calls;
  - make (once per component): trace the component (`torch.jit.trace` on the component's own forward with the
    shapes a request uses) and save the archive (the seconds that took), then freeze it both ways the start
    below does and report, for each, the largest difference of its output from the eager one;
  - torchscript / torchscript-optimized: import torch, `torch.jit.load` the archive (it holds the weights)
    and freeze it, the second also rewritten by `torch.jit.optimize_for_inference` (the start: as
    `serve.tracing.load_frozen` does for classifiers; a frozen archive of the UNet saves but does not load
    again: "required keyword attribute 'value' is undefined"), one call, then the median of warm calls.
Every call uses default torch threads; inputs are seeded random tensors of the pipeline's shapes.

Usage: python -m benchmarks.diffusion_compile [--model mid] [--size N] [--batch-size 1] [--calls 5]
                                              [--out benchmarks/results/diffusion_compile.json]
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

from benchmarks.diffusion import MODELS, make_model
from benchmarks.report import machine, write_report
from tests.fixtures.servers import REPO_ROOT

COMPONENTS = {
    "unet": (
        """
        latent = SIZE // 8
        inputs = (
            torch.randn(2 * BATCH, CONFIG["in_channels"], latent, latent, generator=GENERATOR),
            torch.tensor(500.0),
            torch.randn(2 * BATCH, 77, CONFIG["cross_attention_dim"], generator=GENERATOR),
        )
        """,
        """
        from diffusers import UNet2DConditionModel
        class Call(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.unet = UNet2DConditionModel.from_pretrained(FOLDER, subfolder="unet")
            def forward(self, sample, timestep, context):
                return self.unet(sample, timestep, encoder_hidden_states=context, return_dict=False)[0]
        """,
    ),
    "vae": (
        """
        latent = SIZE // 8
        inputs = (torch.randn(BATCH, CONFIG["latent_channels"], latent, latent, generator=GENERATOR),)
        """,
        """
        from diffusers import AutoencoderKL
        class Call(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.vae = AutoencoderKL.from_pretrained(FOLDER, subfolder="vae")
            def forward(self, latents):
                return self.vae.decode(latents, return_dict=False)[0]
        """,
    ),
}
"""Per component (its subfolder), statements that set `inputs` (a call's arguments, from the component's
CONFIG) and statements that define `Call`, a module whose forward is the component's call in the pipeline
(the VAE's is its decoder)."""

CHILD = """
import json, pathlib, statistics, sys, time
began = time.perf_counter()
import torch
FOLDER, COMPONENT, SIZE, BATCH, CALLS, ARCHIVE, MODE, CANDIDATES = {arguments}
CONFIG = json.loads((pathlib.Path(FOLDER) / COMPONENT / "config.json").read_text())
GENERATOR = torch.Generator().manual_seed(0)
result = {{}}
def timed(call):
    with torch.inference_mode():
        start = time.perf_counter()
        output = call()
        return time.perf_counter() - start, output
{inputs}
def frozen(trace, optimize):
    module = torch.jit.freeze(trace.eval())
    return torch.jit.optimize_for_inference(module) if optimize else module
if MODE in CANDIDATES:
    loaded = time.perf_counter()
    forward = frozen(torch.jit.load(ARCHIVE), CANDIDATES[MODE])
    result["load_s"] = time.perf_counter() - loaded
else:
{call}
    loaded = time.perf_counter()
    forward = Call().eval()
    result["load_s"] = time.perf_counter() - loaded
    result["parameters_m"] = sum(p.numel() for p in forward.parameters()) / 1e6
if MODE == "make":
    eager = forward
    with torch.no_grad():
        start = time.perf_counter()
        trace = torch.jit.trace(eager, inputs, check_trace=False)
        torch.jit.save(trace, ARCHIVE)
        result["make_s"] = time.perf_counter() - start
        expected = eager(*inputs)
        for candidate, optimize in CANDIDATES.items():
            served = frozen(trace, optimize)
            for _ in range(3):  # the profiling executor specializes during its first runs
                served(*inputs)
            result[candidate] = float((served(*inputs) - expected).abs().max())
    print(json.dumps(result))
    sys.exit(0)
result["started_s"] = time.perf_counter() - began
result["first_call_s"] = timed(lambda: forward(*inputs))[0]
result["call_s"] = statistics.median(timed(lambda: forward(*inputs))[0] for _ in range(CALLS))
print(json.dumps(result))
"""

CANDIDATES = {"torchscript": False, "torchscript-optimized": True}
"""Each compiled candidate and whether it is rewritten by `torch.jit.optimize_for_inference` once frozen."""


def child(component: str, folder: Path, args: argparse.Namespace, archive: Path, mode: str) -> dict[str, Any]:
    """Run one measurement in a fresh process ("eager", "make", or a candidate's name); its JSON result."""
    arguments = (
        str(folder),
        component,
        args.size,
        args.batch_size,
        args.calls,
        str(archive),
        mode,
        CANDIDATES,
    )
    inputs, call = COMPONENTS[component]
    script = CHILD.format(
        arguments=repr(arguments),
        inputs=textwrap.dedent(inputs),
        call=textwrap.indent(textwrap.dedent(call), "    "),
    )
    completed = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO_ROOT, check=False
    )
    if completed.returncode != 0:
        raise RuntimeError(f"{component} {mode} failed: {completed.stderr.strip()[-2000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def measure(folder: Path, work: Path, args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Every component's eager and compiled rows."""
    rows: dict[str, dict[str, Any]] = {}
    for component in COMPONENTS:
        rows[component] = {"eager": child(component, folder, args, work / "unused", "eager")}
        archive = work / f"{component}.pt"
        made = child(component, folder, args, archive, "make")
        for candidate in CANDIDATES:
            rows[component][candidate] = {
                "make_s": made["make_s"],
                "max_abs_diff": made[candidate],
                **child(component, folder, args, archive, candidate),
                "archive_mib": archive.stat().st_size / 2**20,
            }
    return rows


def print_table(rows: dict[str, dict[str, Any]], steps: int) -> None:
    """One line per component and candidate, and what a whole generation would take with each."""
    print(
        f"{'component':12s} {'candidate':22s} {'start s':>8s} {'1st call s':>10s} {'call ms':>9s} "
        f"{'vs eager':>8s} {'make s':>7s} {'max diff':>9s}"
    )
    for component, candidates in rows.items():
        eager = candidates["eager"]["call_s"]
        for name, row in candidates.items():
            print(
                f"{component:12s} {name:22s} {row['started_s']:8.2f} {row['first_call_s']:10.2f} "
                f"{1000 * row['call_s']:9.1f} {eager / row['call_s']:7.2f}x "
                f"{row.get('make_s', 0):7.1f} {row.get('max_abs_diff', 0):9.1e}"
            )
    for name in rows["unet"]:
        total = steps * rows["unet"][name]["call_s"] + rows["vae"][name]["call_s"]
        print(f"one image ({steps} steps + decode), {name}: {total:.2f} s")


def main() -> int:
    """Build the pipeline, measure, print, write JSON."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", choices=sorted(MODELS), default="mid")
    parser.add_argument("--size", type=int, default=None, help="image side (default: the model's)")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--calls", type=int, default=5)
    parser.add_argument(
        "--out", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "diffusion_compile.json"
    )
    args = parser.parse_args()
    model = MODELS[args.model]
    args.size = args.size or model.size
    with tempfile.TemporaryDirectory(prefix="bake-diffusion-compile-") as tmp:
        folder = make_model(model, Path(tmp) / "pipeline")
        rows = measure(folder, Path(tmp), args)
    print_table(rows, model.steps)
    settings = {**vars(args), "out": str(args.out), "steps": model.steps}
    write_report({"machine": machine(), "settings": settings, "rows": rows}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
