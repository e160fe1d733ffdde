"""Text-to-image coverage: every family bake serves, measured, and the pipelines it refuses, with the reasons.

For each tiny random-weight pipeline of `tests.fixtures.diffusion_zoo` (one per family, shaped like its Hub
repos), on this machine's CPU in float32:
  - what `bake build` would bake: the files (and their size), the extra packages of the image;
  - start-up: `python -m serve` from spawn to /ready (load, batch-invariance, warm-up of 2 steps at the native
    size; BAKE_MAX_BATCH_SIZE=1), against the floor: a fresh Python process that imports diffusers, loads the
    pipeline and makes one image of 2 steps at the native size. Best of `--rounds` interleaved rounds;
  - parity: the largest difference (uint8 steps) between the served image and the one the diffusers pipeline
    makes when called directly with the same seed, over guidance off, guidance on, and a negative prompt;
  - batch equality: whether 3 requests (4 images) batched get the bytes they get alone, in each of those
    cases;
  - the defaults the server uses, its size multiple and prompt window.
The refused rows come from `serve.contract.pipelines` applied to the `_class_name` of real Hub repos.

The tiny pipelines make start-up a measure of overhead (imports, loading code, warm-up), not of weights.

Usage: python -m benchmarks.text_to_image_coverage [--families sd1,flux] [--rounds 2]
                                                  [--out docs/models-text-to-image.json]
then:  python -m benchmarks.text_to_image_table   (writes docs/models-text-to-image.md from the JSON)
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.report import machine, write_report
from tests.fixtures.diffusion_zoo import CARD_DEFAULTS, FAMILIES, Family, make_diffusion_pipeline
from tests.fixtures.servers import REPO_ROOT, ServerProcess

SMALL = {"width": 32, "height": 32, "num_inference_steps": 2}
PROMPTS = ("a red fox in the snow", "a lighthouse at night, oil painting", "x")

LIKE: dict[Family, str] = {
    "sd1": "Stable Diffusion 1.x (stable-diffusion-v1-5/stable-diffusion-v1-5)",
    "sd2": "Stable Diffusion 2.x (stabilityai/stable-diffusion-2-1)",
    "sd-turbo": "SD-Turbo (stabilityai/sd-turbo)",
    "sdxl": "SDXL (stabilityai/stable-diffusion-xl-base-1.0)",
    "sdxl-turbo": "SDXL-Turbo (stabilityai/sdxl-turbo)",
    "pixart-alpha": "PixArt-α (PixArt-alpha/PixArt-XL-2-512x512)",
    "pixart-sigma": "PixArt-Σ (PixArt-alpha/PixArt-Sigma-XL-2-1024-MS)",
    "sd3": "Stable Diffusion 3 (stabilityai/stable-diffusion-3-medium-diffusers)",
    "flux": "FLUX.1-dev (black-forest-labs/FLUX.1-dev)",
    "flux-schnell": "FLUX.1-schnell (black-forest-labs/FLUX.1-schnell)",
}
"""What each tiny pipeline stands for."""

NOTES: dict[Family, str] = {
    "sd1": "Safety checker and its feature extractor are neither baked nor loaded.",
    "sd2": "v-prediction (DDIM); the 768 model's native size is its own sample size x 8.",
    "sd-turbo": "The pipeline's defaults are SD's (50 steps, guidance 7.5); the card's 1 step without "
    "guidance needs `BAKE_DEFAULT_STEPS=1 BAKE_DEFAULT_GUIDANCE=0` (or the request's parameters).",
    "sdxl": "`add_time_ids` from the asked size; no negative prompt: zero embeddings "
    "(`force_zeros_for_empty_prompt`). No invisible watermark (the package is not in the image).",
    "sdxl-turbo": "Euler ancestral: the per-step noise comes from each row's own generator, so batches stay "
    "exact. Card defaults (1 step, guidance 0) via `BAKE_DEFAULT_STEPS` / `BAKE_DEFAULT_GUIDANCE`.",
    "pixart-alpha": "Sizes are snapped to the model's aspect-ratio bins and the image resized back "
    "(`use_resolution_binning`); prompts are cleaned (`clean_caption`) and may be 120 T5 tokens long "
    "(longer: 422). With DPM-Solver (the repos' scheduler) 2 steps or more: diffusers' 1-step path needs a "
    "scheduler that returns the denoised sample (1 step: 422).",
    "pixart-sigma": "As PixArt-α, but 1 step works; prompts up to 300 T5 tokens.",
    "sd3": "Sides multiples of 16; prompts up to 256 T5 tokens (the CLIP encoders read the first 77).",
    "flux": "Sides multiples of 16; native size 1024; guidance is distilled into the model, so "
    "`negative_prompt` is refused (422) rather than ignored; prompts up to 512 T5 tokens.",
    "flux-schnell": "As FLUX.1-dev, but the model has no guidance input (`guidance_scale` has no effect); "
    "card defaults (4 steps, guidance 0) via `BAKE_DEFAULT_STEPS` / `BAKE_DEFAULT_GUIDANCE`.",
}

REFUSED_EXAMPLES = (
    ("stabilityai/stable-diffusion-xl-refiner-1.0", "StableDiffusionXLImg2ImgPipeline"),
    ("stable-diffusion-v1-5/stable-diffusion-inpainting", "StableDiffusionInpaintPipeline"),
    ("stabilityai/stable-diffusion-x4-upscaler", "StableDiffusionUpscalePipeline"),
    ("black-forest-labs/FLUX.1-Fill-dev", "FluxFillPipeline"),
    ("black-forest-labs/FLUX.1-Kontext-dev", "FluxKontextPipeline"),
    ("stabilityai/stable-video-diffusion-img2vid-xt", "StableVideoDiffusionPipeline"),
    ("timbrooks/instruct-pix2pix", "StableDiffusionInstructPix2PixPipeline"),
    ("SimianLuo/LCM_Dreamshaper_v7", "LatentConsistencyModelPipeline"),
    ("kandinsky-community/kandinsky-2-2-decoder", "KandinskyV22Pipeline"),
    ("DeepFloyd/IF-I-XL-v1.0", "IFPipeline"),
    ("Efficient-Large-Model/Sana_1600M_1024px_diffusers", "SanaPipeline"),
    ("fal/AuraFlow", "AuraFlowPipeline"),
)
"""Hub repos people try and the `_class_name` of their model_index.json."""

_OWN = textwrap.dedent(
    """
    import sys, time
    import torch
    from diffusers import AutoPipelineForText2Image
    pipe = AutoPipelineForText2Image.from_pretrained(sys.argv[1])
    pipe.set_progress_bar_config(disable=True)
    pipe("a photo of a cat", num_inference_steps=2, generator=torch.Generator().manual_seed(0))
    """
)


def serve_startup(folder: Path, log: Path) -> float:
    """Seconds from spawning `python -m serve` to /ready."""
    env = {"BAKE_MODEL": str(folder), "BAKE_DEVICE": "cpu", "BAKE_MAX_BATCH_SIZE": "1", "HF_HUB_OFFLINE": "1"}
    server = ServerProcess(env, log)
    started = time.perf_counter()
    server.start(timeout=600)
    ready = time.perf_counter() - started
    server.stop()
    return ready


def own_startup(folder: Path) -> float:
    """Seconds for a fresh Python process to load the pipeline with diffusers and make one 2-step image."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", _OWN, str(folder)], cwd=REPO_ROOT, check=True, capture_output=True)
    return time.perf_counter() - started


def startups(folder: Path, log: Path, rounds: int) -> tuple[float, float]:
    """The best of `rounds` interleaved rounds of `serve_startup` and `own_startup` (a busy machine only ever
    slows a round down)."""
    serve, own = [], []
    for _ in range(rounds):
        serve.append(serve_startup(folder, log))
        own.append(own_startup(folder))
    return min(serve), min(own)


def load_task(folder: Path, **overrides: Any) -> Any:
    from serve.contract.settings import Settings
    from serve.device import choose_placement
    from serve.model_source import locate_model
    from serve.tasks.text_to_image import TextToImage

    settings = Settings(model=str(folder), device="cpu", max_batch_size=4, **overrides)
    task = TextToImage(
        locate_model(str(folder), "main", offline=True), settings, choose_placement("cpu", "auto")
    )
    task.load()
    return task


def prepare(task: Any, prompt: str, **parameters: Any) -> Any:
    from serve.tasks.text_to_image import TextToImageParameters

    return task.prepare(prompt, TextToImageParameters(**parameters))


def pixels(image: Any) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def parity_and_batches(folder: Path, family: Family) -> dict[str, Any]:
    """Served vs diffusers called directly, and batched vs alone, in each case."""
    from diffusers import AutoPipelineForText2Image

    task = load_task(folder)
    reference = AutoPipelineForText2Image.from_pretrained(str(folder))
    reference.set_progress_bar_config(disable=True)
    cases: dict[str, dict[str, Any]] = {
        "guidance off": {"guidance_scale": 0.0},
        "guidance on": {"guidance_scale": 6.0},
    }
    if _reads_negative_prompts(task.info().details["family"]):
        cases["negative prompt"] = {"guidance_scale": 6.0, "negative_prompt": "blurry"}
    parity: dict[str, int] = {}
    batched_equal: dict[str, bool] = {}
    for name, case in cases.items():
        parameters = {**SMALL, **case}
        expected = reference(PROMPTS[0], generator=torch.Generator().manual_seed(5), **parameters).images[0]
        served = task.run_batch([prepare(task, PROMPTS[0], seed=5, **parameters).sample], 1)[0].images[0]
        parity[name] = int(np.abs(pixels(served) - pixels(expected)).max())
        requests = [
            prepare(task, PROMPTS[0], seed=1, **parameters),
            prepare(task, PROMPTS[1], seed=2, num_images_per_prompt=2, **parameters),
            prepare(task, PROMPTS[2], seed=3, **parameters),
        ]
        together = task.run_batch([request.sample for request in requests], 4)
        alone = [task.run_batch([request.sample], 1)[0] for request in requests]
        batched_equal[name] = all(
            first.tobytes() == second.tobytes()
            for output, single in zip(together, alone)
            for first, second in zip(output.images, single.images)
        )
    details = task.info().details
    card = CARD_DEFAULTS.get(family)
    return {
        "pipeline": details["pipeline"],
        "family": details["family"],
        "components": details["components"],
        "scheduler": details["scheduler"],
        "defaults": details["defaults"],
        "card_defaults": card,
        "size_multiple": details["limits"]["size_multiple"],
        "max_prompt_tokens": details["limits"]["max_prompt_tokens"],
        "parity_max_difference": parity,
        "batched_equals_alone": batched_equal,
    }


def _reads_negative_prompts(family_name: str) -> bool:
    from serve.contract import pipelines

    return next(family for family in pipelines.FAMILIES if family.name == family_name).negative_prompt


def baked(folder: Path) -> dict[str, Any]:
    """What `bake build` would bake for a CPU image."""
    from bake.config import ModelSpec
    from bake.env import read_environment
    from bake.hub import resolve_model

    model = resolve_model(ModelSpec(str(folder), "main", None), read_environment({}), device="cpu")
    return {"files": len(model.files), "bytes": model.weights_bytes, "packages": list(model.packages)}


def refused() -> list[dict[str, str]]:
    from serve.contract import pipelines

    rows = []
    for repo, class_name in REFUSED_EXAMPLES:
        try:
            pipelines.family_of({"_class_name": class_name})
        except pipelines.PipelineRefused as refusal:
            rows.append({"repo": repo, "pipeline": class_name, "reason": refusal.reason})
        else:
            raise AssertionError(f"{class_name} is served; take it out of REFUSED_EXAMPLES")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "models-text-to-image.json")
    args = parser.parse_args(argv)
    families: list[Family] = [family for family in args.families.split(",") if family]  # type: ignore[misc]
    unknown = set(families) - set(FAMILIES)
    if unknown:
        parser.error(f"unknown families {sorted(unknown)}; expected some of {', '.join(FAMILIES)}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="t2i-coverage-") as scratch:
        for family in families:
            folder = make_diffusion_pipeline(Path(scratch) / family, family)
            serve_s, own_s = startups(folder, Path(scratch) / f"{family}.log", args.rounds)
            row = {
                "name": family,
                "like": LIKE[family],
                **parity_and_batches(folder, family),
                "baked": baked(folder),
                "startup_s": round(serve_s, 2),
                "own_load_and_call_s": round(own_s, 2),
                "notes": NOTES[family],
            }
            rows.append(row)
            print(
                f"{family:13} {row['pipeline']:27} start-up {serve_s:5.1f} s (own {own_s:4.1f} s)  "
                f"parity {max(row['parity_max_difference'].values())}  "
                f"batched == alone {all(row['batched_equals_alone'].values())}",
                flush=True,
            )
    report = {"machine": machine(), "rounds": args.rounds, "families": rows, "refused": refused()}
    write_report(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
