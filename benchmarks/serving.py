"""Serving throughput and latency: bake against the raw forward pass, a naive endpoint and LitServe.

In one run on one machine, for each regime:
  (a) the raw in-process forward throughput of the model at each batch size (the limit; eager and
      TorchScript-traced, default torch threads),
  (b) bake's server (`python -m serve`) under N concurrent clients, serving the forward pass the compile
      stage (`python -m serve.compile`) made, as a built image does,
  (c) a naive FastAPI endpoint running one forward pass per request,
  (d) LitServe (from PyPI) with the same model, batch size and batch timeout.
Regimes: "resnet50" (the real ResNet-50 architecture, random weights: compute-bound) and "tiny" (a ResNet of
a few thousand parameters: overhead-bound). Every client sends the same photo-sized JPEG as Hugging Face
Inference API JSON (`{"inputs": "<base64>"}`), which all servers accept. Servers run one at a time, in
rounds whose order rotates, and the median round is reported.

Usage: python -m benchmarks.serving [--regimes tiny@640x480,tiny@1600x1200,resnet50@640x480] [--clients 16]
                                    [--seconds 15] [--rounds 3] [--out benchmarks/results/serving.json]
Each regime is MODEL@WIDTHxHEIGHT: the model and the size of the JPEG photo every client sends.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bake.bench.loadgen import LoadResult, Target, run_load, wrk_available
from benchmarks.report import machine, rotated, write_report
from tests.fixtures import images
from tests.fixtures.models import make_image_classifier
from tests.fixtures.servers import REPO_ROOT, free_port, wait_until_ready


@dataclass(frozen=True)
class Regime:
    """A model and the batching settings both batched servers use for it."""

    name: str
    max_batch_size: int
    max_wait_ms: float


REGIMES = {
    "tiny": Regime("tiny", max_batch_size=16, max_wait_ms=5),
    "resnet50": Regime("resnet50", max_batch_size=8, max_wait_ms=10),
}


@dataclass
class ServerUnderTest:
    """How to start one competitor; "{port}" in the command is replaced by the port it must listen on."""

    name: str
    command: list[str]
    env: dict[str, str] = field(default_factory=dict)
    ready_path: str = "/health"


def make_model(regime: Regime, root: Path) -> Path:
    """The regime's model folder (config, safetensors weights, image processor config)."""
    folder = root / regime.name
    if regime.name == "tiny":
        return make_image_classifier(folder, "resnet", num_labels=10)
    script = textwrap.dedent(
        f"""
        import torch
        from transformers import ConvNextImageProcessorPil, ResNetConfig, ResNetForImageClassification
        torch.manual_seed(0)
        labels = {{i: f"class {{i}}" for i in range(1000)}}
        config = ResNetConfig(num_labels=1000, id2label=labels, label2id={{v: k for k, v in labels.items()}})
        ResNetForImageClassification(config).save_pretrained({str(folder)!r})
        ConvNextImageProcessorPil(size={{"shortest_edge": 224}}, crop_pct=0.875).save_pretrained(
            {str(folder)!r}
        )
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True)
    return folder


def raw_forward(model_dir: Path, batch_sizes: list[int], seconds: float) -> dict[str, dict[int, float]]:
    """Images per second of `model(pixel_values)` in a fresh process, eager and traced, at each batch size."""
    script = textwrap.dedent(
        f"""
        import json, time, torch
        from transformers import AutoModelForImageClassification
        model = AutoModelForImageClassification.from_pretrained({str(model_dir)!r}).eval()
        class Logits(torch.nn.Module):
            def __init__(self, m): super().__init__(); self.m = m
            def forward(self, x): return self.m(pixel_values=x, return_dict=False)[0]
        results = {{"eager": {{}}, "traced": {{}}}}
        with torch.inference_mode():
            x = torch.randn(max({batch_sizes}), 3, 224, 224)
            traced = torch.jit.freeze(torch.jit.trace(Logits(model).eval(), (x,), check_trace=False))
            for name, forward in (("eager", lambda x: model(pixel_values=x)), ("traced", traced)):
                for size in {batch_sizes}:
                    batch = torch.randn(size, 3, 224, 224)
                    forward(batch); forward(batch)
                    count, began = 0, time.perf_counter()
                    while time.perf_counter() - began < {seconds}:
                        forward(batch); count += size
                    results[name][size] = count / (time.perf_counter() - began)
        print(json.dumps(results))
        """
    )
    completed = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True)
    raw = json.loads(completed.stdout.strip().splitlines()[-1])
    return {name: {int(size): value for size, value in sizes.items()} for name, sizes in raw.items()}


def compile_model(regime: Regime, model_dir: Path, out: Path) -> Path:
    """The compile stage's artifact for the model (`python -m serve.compile`, as `bake build` runs it): what a
    built image serves."""
    command = [sys.executable, "-m", "serve.compile", "--model-dir", str(model_dir), "--out", str(out)]
    command += ["--model", str(model_dir), "--max-batch-size", str(regime.max_batch_size)]
    result = subprocess.run(command, check=True, capture_output=True, text=True, cwd=REPO_ROOT)
    print(f"  {result.stdout.strip().splitlines()[-1]}", flush=True)
    return out


def servers(regime: Regime, model_dir: Path, compiled: Path) -> list[ServerUnderTest]:
    """bake (default and with JPEG draft decoding) serving the compiled forward pass, as a built image
    does, the naive endpoint and LitServe."""
    python = sys.executable
    bake_env = {
        "BAKE_MODEL": str(model_dir),
        "BAKE_COMPILED": str(compiled),
        "BAKE_MAX_BATCH_SIZE": str(regime.max_batch_size),
        "BAKE_MAX_WAIT_MS": str(regime.max_wait_ms),
        "BAKE_HOST": "127.0.0.1",
        "BAKE_LOG_LEVEL": "warning",
    }
    return [
        ServerUnderTest("bake", [python, "-m", "serve"], bake_env, "/ready"),
        ServerUnderTest(
            "bake (JPEG draft)", [python, "-m", "serve"], {**bake_env, "BAKE_JPEG_DRAFT": "1"}, "/ready"
        ),
        ServerUnderTest(
            "naive FastAPI", [python, "-m", "benchmarks.competitors.naive_server", str(model_dir), "{port}"]
        ),
        ServerUnderTest(
            "LitServe",
            [
                python,
                "-m",
                "benchmarks.competitors.litserve_server",
                str(model_dir),
                "{port}",
                str(regime.max_batch_size),
                str(regime.max_wait_ms / 1000),
            ],
        ),
    ]


def measure(server: ServerUnderTest, body: bytes, *, clients: int, seconds: float, log: Path) -> LoadResult:
    """Start `server`, check one answer, warm it up, load it for `seconds`, stop it."""
    port = free_port()
    command = [arg.format(port=port) for arg in server.command]
    env = {**os.environ, "PORT": str(port), "PYTHONPATH": str(REPO_ROOT), **server.env}
    with log.open("ab") as output:
        process = subprocess.Popen(
            command, env=env, cwd=REPO_ROOT, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(url, 300, path=server.ready_path)
        time.sleep(1.0)  # let LitServe's worker finish its own setup after /health answers
        answer = httpx.post(
            url + "/predict", content=body, headers={"Content-Type": "application/json"}, timeout=120
        )
        answer.raise_for_status()
        assert isinstance(answer.json(), list) and "label" in answer.json()[0], answer.text
        target = Target(url + "/predict", body, {"Content-Type": "application/json"})
        run_load(target, connections=clients, seconds=min(5.0, seconds))
        return run_load(target, connections=clients, seconds=seconds)
    finally:
        stop_group(process)


def stop_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server and every process it started (LitServe's workers), then SIGKILL what is left."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(30)
    except subprocess.TimeoutExpired:
        pass
    except ProcessLookupError:
        return
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()
    time.sleep(1.0)


def median_result(results: list[LoadResult]) -> LoadResult:
    """The round with the median throughput."""
    ordered = sorted(results, key=lambda result: result.throughput)
    return ordered[len(ordered) // 2]


def run_regime(
    regime: Regime, image: tuple[int, int], args: argparse.Namespace, root: Path
) -> dict[str, object]:
    """Everything measured for one regime and photo size, as a JSON-able dict."""
    root.mkdir(parents=True, exist_ok=True)
    model_dir = make_model(regime, root)
    width, height = image
    body = json.dumps({"inputs": base64.b64encode(images.photo(width, height)).decode()}).encode()
    buckets = [size for size in (1, 2, 4, 8, 16, 32) if size <= regime.max_batch_size]
    raw = raw_forward(model_dir, buckets, seconds=3.0 if regime.name == "tiny" else 8.0)
    contenders = servers(regime, model_dir, compile_model(regime, model_dir, root / "compiled"))
    rounds: dict[str, list[LoadResult]] = {server.name: [] for server in contenders}
    for round_index in range(args.rounds):
        for server in rotated(contenders, round_index):
            result = measure(
                server, body, clients=args.clients, seconds=args.seconds, log=root / "servers.log"
            )
            rounds[server.name].append(result)
            print(
                f"  [{regime.name} {width}x{height} round {round_index + 1}] "
                f"{server.name:18s} {result.throughput:8.1f} req/s "
                f"p50 {result.p50_ms:7.1f} ms  p99 {result.p99_ms:7.1f} ms  failures {result.failures}",
                flush=True,
            )
    medians = {name: median_result(results) for name, results in rounds.items()}
    limit = max(raw["eager"][regime.max_batch_size], raw["traced"][regime.max_batch_size])
    best_other = max((medians["naive FastAPI"], medians["LitServe"]), key=lambda result: result.throughput)
    bake = medians["bake"]
    return {
        "regime": regime.name,
        "image": f"{width}x{height}",
        "max_batch_size": regime.max_batch_size,
        "max_wait_ms": regime.max_wait_ms,
        "raw_forward_images_per_s": raw,
        "servers": {name: result.as_dict() for name, result in medians.items()},
        "rounds": {name: [result.as_dict() for result in results] for name, results in rounds.items()},
        "bake_vs_raw_forward": bake.throughput / limit,
        "bake_vs_eager_best_batch": bake.throughput / max(raw["eager"].values()),
        "bake_vs_best_competitor": bake.throughput / best_other.throughput,
        "bake_p99_vs_best_competitor": bake.p99_ms / best_other.p99_ms,
    }


def print_table(result: dict[str, object]) -> None:
    """The regime's results as a text table."""
    raw = result["raw_forward_images_per_s"]
    print(
        f"\n== {result['regime']}, {result['image']} JPEG (max batch {result['max_batch_size']}, "
        f"wait {result['max_wait_ms']} ms) =="
    )
    print("raw forward, images/s by batch size:")
    for name, sizes in raw.items():  # type: ignore[union-attr]
        print(f"  {name:7s} " + "  ".join(f"b{size}: {value:8.1f}" for size, value in sizes.items()))
    print(f"  {'server':20s} {'req/s':>9s} {'p50 ms':>9s} {'p99 ms':>9s} {'failures':>9s}")
    for name, server in result["servers"].items():  # type: ignore[union-attr]
        print(
            f"  {name:20s} {server['throughput']:9.1f} {server['p50_ms']:9.1f} {server['p99_ms']:9.1f} "
            f"{server['failures']:9d}"
        )
    print(f"  bake / raw forward limit:       {result['bake_vs_raw_forward']:.2f}")
    print(f"  bake / eager forward, best batch: {result['bake_vs_eager_best_batch']:.2f}x (target >= 1.25)")
    print(
        f"  bake / best of naive, LitServe: {result['bake_vs_best_competitor']:.2f}x throughput, "
        f"{result['bake_p99_vs_best_competitor']:.2f}x p99"
    )


def main() -> int:
    """Run the benchmark; print tables; write JSON."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--regimes", default="tiny@640x480,tiny@1600x1200,resnet50@640x480")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "serving.json")
    args = parser.parse_args()
    if not wrk_available():
        print("wrk is not installed: apt-get install wrk", file=sys.stderr)
        return 2
    report: dict[str, object] = {"machine": machine(), "clients": args.clients}
    results = []
    with tempfile.TemporaryDirectory(prefix="bake-bench-") as tmp:
        for index, spec in enumerate(args.regimes.split(",")):
            name, _, size = spec.partition("@")
            image = tuple(int(part) for part in size.split("x")) if size else (640, 480)
            result = run_regime(REGIMES[name], image, args, Path(tmp) / str(index))
            print_table(result)
            results.append(result)
    report["regimes"] = results
    write_report(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
