"""Text-to-image throughput: bake's server against the diffusers pipeline called in-process.

For each batch size b (default 1, 2, 4), on one machine, one after the other:
  (a) in-process: a fresh Python process loads the pipeline with diffusers (`AutoPipelineForText2Image`) and
      times `--batches` calls with b prompts and b per-row generators (the limit: no HTTP, no PNG);
  (b) bake: `python -m serve` with BAKE_MAX_BATCH_SIZE=b serves b concurrent clients, each sending
      `--batches` requests back to back (so every batch holds b requests); timed from the first request to
      the last PNG received, HTTP and PNG encoding included.
Both use the same torch thread count (`--threads`, default every core; the server's own choice is
`serve.threads`' business), and each is the best of `--rounds` interleaved rounds (other processes on a
shared machine only ever slow a round down). Both report images per second; bake's target is at least 90% of
in-process.

Models (random weights, built here; a tiny pipeline would measure overhead, not serving):
  mid   an SD-like pipeline for CPUs: UNet of 18M parameters (channels 64/128/256, 2 layers per block, cross
        attention 256), VAE of 3.9M (scale factor 8), CLIP text encoder 4x256; 128x128 images, 20 steps.
        The UNet is ~90% of the time.
  sd15  Stable Diffusion 1.5's architecture (860M UNet, 83M VAE, 123M text encoder); 512x512, 25 steps.
        For a GPU (--device cuda: fp16 in both).

Usage: python -m benchmarks.diffusion [--model mid] [--device cpu] [--batch-sizes 1,2,4] [--batches 3]
                                      [--rounds 3] [--threads N] [--out benchmarks/results/diffusion.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from benchmarks.report import machine, write_report
from benchmarks.serving import stop_group
from tests.fixtures.servers import REPO_ROOT, free_port, wait_until_ready

PROMPT = "a lighthouse on a cliff at sunset, oil painting"


@dataclass(frozen=True)
class Model:
    """A pipeline architecture and the images it is benchmarked on."""

    name: str
    size: int
    steps: int
    build: str
    """Python statements that set `pipeline` (a StableDiffusionPipeline with random weights)."""


_PIPELINE = """
import torch
from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel
from tests.fixtures.models import clip_tokenizer
torch.manual_seed(0)
tokenizer = clip_tokenizer()
unet = UNet2DConditionModel(**UNET)
vae = AutoencoderKL(
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, **VAE
)
text_encoder = CLIPTextModel(CLIPTextConfig(
    vocab_size=len(tokenizer), max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
    eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **TEXT))
scheduler = EulerDiscreteScheduler(
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1
)
pipeline = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
"""

MODELS = {
    "mid": Model(
        "mid",
        size=128,
        steps=20,
        build=textwrap.dedent(
            """
            UNET = dict(sample_size=16, block_out_channels=(64, 128, 256), layers_per_block=2,
                        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                        cross_attention_dim=256, attention_head_dim=8)
            VAE = dict(sample_size=128, block_out_channels=(32, 64, 128, 128), layers_per_block=1)
            TEXT = dict(hidden_size=256, intermediate_size=1024, projection_dim=256, num_attention_heads=4,
                        num_hidden_layers=4)
            """
        )
        + _PIPELINE,
    ),
    "sd15": Model(
        "sd15",
        size=512,
        steps=25,
        build=textwrap.dedent(
            """
            UNET = dict(sample_size=64, cross_attention_dim=768)
            VAE = dict(sample_size=512, block_out_channels=(128, 256, 512, 512), layers_per_block=2)
            TEXT = dict(hidden_size=768, intermediate_size=3072, projection_dim=768, num_attention_heads=12,
                        num_hidden_layers=12)
            """
        )
        + _PIPELINE,
    ),
}


@dataclass(frozen=True)
class Served:
    """What one bake measurement found."""

    images_per_s: float
    mean_batch: float
    """Requests per batch the server ran (b means every batch was full)."""
    cpu_threads: int | None
    """Torch threads the server chose for the device (CPU only)."""


def make_model(model: Model, folder: Path) -> Path:
    """Build the model's random-weight pipeline and save it (safetensors) into `folder`."""
    script = model.build + f"\npipeline.save_pretrained({str(folder)!r}, safe_serialization=True)\n"
    subprocess.run(
        [sys.executable, "-c", script],
        check=True,
        capture_output=True,
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    return folder


def in_process(model: Model, folder: Path, batch_size: int, batches: int, device: str, threads: int) -> float:
    """Images per second of the diffusers pipeline called directly, in a fresh process."""
    script = textwrap.dedent(
        f"""
        import json, time, torch
        from diffusers import AutoPipelineForText2Image
        torch.set_num_threads({threads})
        dtype = torch.float16 if {device!r} == "cuda" else torch.float32
        pipe = AutoPipelineForText2Image.from_pretrained({str(folder)!r}, dtype=dtype).to({device!r})
        pipe.set_progress_bar_config(disable=True)
        def run(steps):
            generators = [torch.Generator().manual_seed(seed) for seed in range({batch_size})]
            pipe([{PROMPT!r}] * {batch_size}, num_inference_steps=steps, width={model.size},
                 height={model.size},
                 generator=generators)
            if {device!r} == "cuda":
                torch.cuda.synchronize()
        run(2)
        began = time.perf_counter()
        for _ in range({batches}):
            run({model.steps})
        print(json.dumps({{"images_per_s": {batch_size * batches} / (time.perf_counter() - began)}}))
        """
    )
    completed = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True)
    return float(json.loads(completed.stdout.strip().splitlines()[-1])["images_per_s"])


def served(
    model: Model, folder: Path, batch_size: int, batches: int, device: str, threads: int, log: Path
) -> Served:
    """Images per second of `python -m serve` under `batch_size` closed-loop clients, and its batch sizes."""
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "PORT": str(port),
        "BAKE_HOST": "127.0.0.1",
        "BAKE_MODEL": str(folder),
        "BAKE_DEVICE": device,
        "BAKE_MAX_BATCH_SIZE": str(batch_size),
        "BAKE_MAX_WAIT_MS": "1000",
        "BAKE_TIMEOUT_S": "3600",
        "BAKE_CPU_THREADS": str(threads),
        "BAKE_LOG_LEVEL": "warning",
    }
    with log.open("ab") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "serve"],
            env=env,
            cwd=REPO_ROOT,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(url, 3600)
        parameters = {"num_inference_steps": model.steps, "width": model.size, "height": model.size}
        start = threading.Barrier(batch_size + 1)
        failures: list[str] = []

        def client(index: int) -> None:
            with httpx.Client(base_url=url, timeout=3600) as http:
                body = {"inputs": PROMPT, "parameters": {**parameters, "seed": index}}
                http.post("/predict", json=body).raise_for_status()  # one untimed round
                start.wait()
                for _ in range(batches):
                    answer = http.post("/predict", json=body)
                    if answer.status_code != 200 or not answer.content.startswith(b"\x89PNG"):
                        failures.append(answer.text[:200])

        threads = [threading.Thread(target=client, args=(index,)) for index in range(batch_size)]
        for thread in threads:
            thread.start()
        start.wait()
        began = time.perf_counter()
        before = _batch_counts(url)
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - began
        count, total = (after - start_value for after, start_value in zip(_batch_counts(url), before))
        if failures:
            raise RuntimeError(f"{len(failures)} requests failed, e.g. {failures[0]}")
        threads_used = httpx.get(url + "/info").json()["cpu_threads"]
        return Served(batch_size * batches / elapsed, total / count if count else 0.0, threads_used)
    finally:
        stop_group(process)


def _batch_counts(url: str) -> tuple[float, float]:
    """(batches run, requests in them) so far, from /metrics."""
    values = {}
    for line in httpx.get(url + "/metrics").text.splitlines():
        name, _, value = line.partition(" ")
        if name in ("bake_batch_size_count", "bake_batch_size_sum"):
            values[name] = float(value)
    return values["bake_batch_size_count"], values["bake_batch_size_sum"]


def main() -> int:
    """Run the benchmark; print a table; write JSON."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", choices=sorted(MODELS), default="mid")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--batch-sizes", default="1,2,4")
    parser.add_argument("--batches", type=int, default=3, help="timed batches per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="measurements of each kind; the best is kept")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads (CPU)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "diffusion.json")
    args = parser.parse_args()
    model = MODELS[args.model]
    sizes = [int(size) for size in args.batch_sizes.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bake-bench-diffusion-") as tmp:
        folder = make_model(model, Path(tmp) / model.name)
        print(f"{model.name}: {model.size}x{model.size}, {model.steps} steps, {args.device}", flush=True)
        for size in sizes:
            common = (model, folder, size, args.batches, args.device, args.threads)
            directs: list[float] = []
            servers: list[Served] = []
            for _ in range(args.rounds):  # interleaved, so that both see the same spells of load
                directs.append(in_process(*common))
                servers.append(served(*common, Path(tmp) / "server.log"))
            direct = max(directs)
            server = max(servers, key=lambda result: result.images_per_s)
            ratio = server.images_per_s / direct
            rows.append(
                {
                    "batch_size": size,
                    "in_process_images_per_s": direct,
                    "bake": asdict(server),
                    "bake_vs_in_process": ratio,
                }
            )
            print(
                f"  b{size}: in-process {direct:7.3f} img/s   bake {server.images_per_s:7.3f} img/s "
                f"(mean batch {server.mean_batch:.2f}, {server.cpu_threads} CPU threads)   "
                f"bake / in-process {ratio:.2f}",
                flush=True,
            )
    report = {
        "machine": machine(),
        "model": model.name,
        "device": args.device,
        "image": f"{model.size}x{model.size}",
        "steps": model.steps,
        "batches_per_measurement": args.batches,
        "rounds": args.rounds,
        "threads": args.threads,
        "results": rows,
    }
    write_report(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
