"""Every text-to-image family bake serves, through `TextToImage.load()` / `run_batch()` and over HTTP.

The pipelines are the tiny random-weight ones of `tests.fixtures.diffusion_zoo` (SD 1.x/2.x, SD-Turbo, SDXL,
SDXL-Turbo, PixArt-alpha/Sigma, SD3, FLUX). For each: a batched request gets the bytes it gets alone (CPU,
float32: the pipeline is made batch-invariant), the image equals the one the diffusers pipeline makes when
called directly with the same seed and parameters (within `PARITY_TOLERANCE`), the defaults are the
pipeline's own (or BAKE_DEFAULT_STEPS / BAKE_DEFAULT_GUIDANCE), and sizes the pipeline cannot make are
refused as bad parameters. Images are 32x32 to 64x32 in 2 steps.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from huggingface_hub import InferenceClient
from PIL import Image

from serve.contract.settings import Settings
from serve.device import choose_placement
from serve.errors import InvalidParameters, ModelLoadError
from serve.model_source import locate_model
from serve.tasks.base import Prepared
from serve.tasks.text_to_image import TextToImage, TextToImageParameters
from tests.fixtures.diffusion_zoo import (
    CARD_DEFAULTS,
    FAMILIES,
    Family,
    make_diffusion_pipeline,
    t5_tokenizer,
)
from tests.fixtures.hub import HubServer, offline_cache
from tests.fixtures.servers import ServerProcess

SMALL = {"width": 32, "height": 32, "num_inference_steps": 2}
PARITY_TOLERANCE = 1
"""Most a served pixel may differ from the diffusers pipeline's (uint8 steps): the served pipeline is made
batch-invariant (zero-row padding of small matrix products), which may round a last bit differently. Measured:
0 for every family (see docs/models-text-to-image.md)."""

NATIVE: dict[Family, dict[str, float]] = {
    "sd1": {"width": 16, "height": 16, "num_inference_steps": 50, "guidance_scale": 7.5},
    "sd2": {"width": 16, "height": 16, "num_inference_steps": 50, "guidance_scale": 7.5},
    "sd-turbo": {"width": 16, "height": 16, "num_inference_steps": 50, "guidance_scale": 7.5},
    "sdxl": {"width": 16, "height": 16, "num_inference_steps": 50, "guidance_scale": 5.0},
    "sdxl-turbo": {"width": 16, "height": 16, "num_inference_steps": 50, "guidance_scale": 5.0},
    "pixart-alpha": {"width": 256, "height": 256, "num_inference_steps": 20, "guidance_scale": 4.5},
    "pixart-sigma": {"width": 256, "height": 256, "num_inference_steps": 20, "guidance_scale": 4.5},
    "sd3": {"width": 32, "height": 32, "num_inference_steps": 28, "guidance_scale": 7.0},
    "flux": {"width": 1024, "height": 1024, "num_inference_steps": 28, "guidance_scale": 3.5},
    "flux-schnell": {"width": 1024, "height": 1024, "num_inference_steps": 28, "guidance_scale": 3.5},
}
"""Each tiny pipeline's own defaults: its `__call__`'s steps and guidance, its native size (the sample size
times the VAE's scale; FLUX's is fixed at 128 latent pixels)."""

SIXTEEN = {"sd3", "flux", "flux-schnell"}
"""Families whose sides must be multiples of 16 (VAE scale 8 x 2x2 transformer patches); the others: 8."""
NO_NEGATIVE = {"flux", "flux-schnell"}
"""Families whose pipeline does not read a negative prompt."""
T5_WINDOW = {"pixart-alpha": 120, "pixart-sigma": 300, "sd3": 256, "flux": 512, "flux-schnell": 512}
"""The T5 window (the pipeline's `max_sequence_length`), which the longest prompt must fit."""


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> Callable[[Family], Path]:
    root = tmp_path_factory.mktemp("families")
    made: dict[Family, Path] = {}

    def folder(family: Family) -> Path:
        if family not in made:
            made[family] = make_diffusion_pipeline(root / family, family)
        return made[family]

    return folder


def load_task(folder: Path, **overrides: Any) -> TextToImage:
    settings = Settings(model=str(folder), device="cpu", max_batch_size=4, **overrides)
    task = TextToImage(
        locate_model(settings.model, "main", offline=True), settings, choose_placement("cpu", "auto")
    )
    task.load()
    return task


@pytest.fixture(scope="module")
def tasks(folders: Callable[[Family], Path]) -> Callable[[Family], TextToImage]:
    loaded: dict[Family, TextToImage] = {}

    def task(family: Family) -> TextToImage:
        if family not in loaded:
            loaded[family] = load_task(folders(family))
        return loaded[family]

    return task


def prepare(task: TextToImage, prompt: str = "a red fox", **parameters: Any) -> Prepared:
    return task.prepare(prompt, TextToImageParameters(**{**SMALL, **parameters}))


def alone(task: TextToImage, prepared: Prepared) -> list[Image.Image]:
    return task.run_batch([prepared.sample], 1)[0].images


def reference(folder: Path, prompt: str, seed: int, **parameters: Any) -> Image.Image:
    """The image the diffusers pipeline makes when called directly."""
    from diffusers import AutoPipelineForText2Image

    pipe = AutoPipelineForText2Image.from_pretrained(str(folder))
    pipe.set_progress_bar_config(disable=True)
    return pipe(prompt, generator=torch.Generator().manual_seed(seed), **parameters).images[0]


def difference(first: Image.Image, second: Image.Image) -> int:
    assert first.size == second.size
    return int(np.abs(np.asarray(first, dtype=np.int16) - np.asarray(second, dtype=np.int16)).max())


@pytest.mark.parametrize("family", FAMILIES)
def test_a_batched_request_gets_the_bytes_it_gets_alone(
    tasks: Callable[[Family], TextToImage], family: Family
) -> None:
    task = tasks(family)
    size = {"width": 64 if family in SIXTEEN else 48, "height": 32}  # odd token counts, PixArt's 2:3 bin
    negative = {} if family in NO_NEGATIVE else {"negative_prompt": "blurry"}
    for extra in ({}, negative, {"guidance_scale": 0.0}):
        requests = [
            prepare(task, "a red fox", seed=1, **size, **extra),
            prepare(
                task, "a lighthouse at night, oil painting", seed=2, num_images_per_prompt=2, **size, **extra
            ),
            prepare(task, "x", seed=3, **size, **extra),
        ]
        assert len({request.batch_key for request in requests}) == 1
        lone = [alone(task, request) for request in requests]
        for batch in (requests, requests[:2], requests[1:]):
            outputs = task.run_batch([request.sample for request in batch], sum(r.rows for r in batch))
            for request, output in zip(batch, outputs):
                single = lone[requests.index(request)]
                assert len(output.images) == len(single) == request.rows
                for together, by_itself in zip(output.images, single):
                    assert together.tobytes() == by_itself.tobytes(), (extra, len(batch))
        assert lone[1][0].tobytes() != lone[1][1].tobytes()


@pytest.mark.parametrize("family", FAMILIES)
def test_images_match_the_diffusers_pipeline_called_directly(
    tasks: Callable[[Family], TextToImage], folders: Callable[[Family], Path], family: Family
) -> None:
    task = tasks(family)
    size = {"width": 64 if family in SIXTEEN else 48, "height": 32}
    cases: list[dict[str, Any]] = [{"guidance_scale": 0.0}, {"guidance_scale": 6.0}]
    if family not in NO_NEGATIVE:
        cases.append({"guidance_scale": 6.0, "negative_prompt": "snow"})
    for case in cases:
        parameters = {**SMALL, **size, **case}
        expected = reference(folders(family), "a red fox in the snow", 5, **parameters)
        served = alone(task, prepare(task, "a red fox in the snow", seed=5, **parameters))[0]
        assert served.size == (size["width"], 32)
        assert difference(served, expected) <= PARITY_TOLERANCE, case


@pytest.mark.parametrize("family", FAMILIES)
def test_defaults_are_the_pipelines_own(tasks: Callable[[Family], TextToImage], family: Family) -> None:
    task = tasks(family)
    native = NATIVE[family]
    assert task.info().details["defaults"] == native
    recipe = task.prepare("a red fox", TextToImageParameters()).batch_key
    assert (recipe.width, recipe.height, recipe.steps, recipe.guidance_scale) == (
        native["width"],
        native["height"],
        native["num_inference_steps"],
        native["guidance_scale"],
    )


@pytest.mark.parametrize("family", sorted(CARD_DEFAULTS))
def test_the_model_cards_defaults_come_from_the_settings(
    folders: Callable[[Family], Path], family: Family
) -> None:
    card = CARD_DEFAULTS[family]
    task = load_task(
        folders(family),
        default_steps=int(card["num_inference_steps"]),
        default_guidance=card["guidance_scale"],
    )
    prepared = task.prepare("a red fox", TextToImageParameters(width=32, height=32, seed=9))
    assert (prepared.batch_key.steps, prepared.batch_key.guidance_scale) == (
        card["num_inference_steps"],
        card["guidance_scale"],
    )
    expected = reference(folders(family), "a red fox", 9, width=32, height=32, **card)
    assert difference(alone(task, prepared)[0], expected) <= PARITY_TOLERANCE


@pytest.mark.parametrize("family", FAMILIES)
def test_sizes_are_honoured_or_refused_as_bad_parameters(
    tasks: Callable[[Family], TextToImage], family: Family
) -> None:
    task = tasks(family)
    multiple = 16 if family in SIXTEEN else 8
    assert task.info().details["limits"]["size_multiple"] == multiple
    image = alone(task, prepare(task, width=48, height=multiple * 2, seed=1))[0]
    assert image.size == (48, multiple * 2)
    if multiple == 16:
        with pytest.raises(InvalidParameters, match="width: 40 is not a multiple of 16"):
            prepare(task, width=40)
    else:
        assert alone(task, prepare(task, width=40, seed=1))[0].size == (40, 32)


@pytest.mark.parametrize("family", FAMILIES)
def test_one_step_makes_the_pipelines_image_or_is_refused_up_front(
    tasks: Callable[[Family], TextToImage], folders: Callable[[Family], Path], family: Family
) -> None:
    task = tasks(family)
    if family == "pixart-alpha":  # diffusers takes the denoised sample, which DPM-Solver does not return
        assert task.info().details["limits"]["min_steps"] == 2
        with pytest.raises(InvalidParameters, match="DPMSolverMultistepScheduler makes no image in 1 step"):
            prepare(task, num_inference_steps=1)
        with pytest.raises(ModelLoadError, match="BAKE_DEFAULT_STEPS"):
            load_task(folders(family), default_steps=1)
        return
    assert task.info().details["limits"]["min_steps"] == 1
    served = alone(task, prepare(task, seed=6, num_inference_steps=1))[0]
    expected = reference(folders(family), "a red fox", 6, **{**SMALL, "num_inference_steps": 1})
    assert difference(served, expected) <= PARITY_TOLERANCE


def test_flux_refuses_a_negative_prompt_it_would_ignore(tasks: Callable[[Family], TextToImage]) -> None:
    with pytest.raises(InvalidParameters, match="FluxPipeline does not read a negative prompt"):
        prepare(tasks("flux"), negative_prompt="blurry")


@pytest.mark.parametrize("family", sorted(T5_WINDOW))
def test_prompts_must_fit_the_t5_window(tasks: Callable[[Family], TextToImage], family: Family) -> None:
    task = tasks(family)
    window = T5_WINDOW[family]
    assert task.info().details["limits"]["max_prompt_tokens"] == window
    fits = " ".join(["a"] * (window - 1))  # a token per word, and the end token
    assert prepare(task, fits).batch_key is not None
    with pytest.raises(InvalidParameters, match=f"over the text encoder's limit of {window}"):
        prepare(task, fits + " a")


def test_pixart_reports_each_step_and_stops_when_cancelled(tasks: Callable[[Family], TextToImage]) -> None:
    task = tasks("pixart-alpha")
    prepared = prepare(task, num_inference_steps=3)
    steps: list[tuple[int, int]] = []
    assert prepared.channel is not None
    prepared.channel.listen(lambda done, total: steps.append((done, total)))
    alone(task, prepared)
    assert steps == [(1, 3), (2, 3), (3, 3)]
    cancelled = prepare(task, num_inference_steps=20)
    channel = cancelled.channel
    assert channel is not None
    channel.listen(lambda done, _total: channel.cancel() if done == 2 else None)
    from serve.errors import ClientDisconnected

    assert isinstance(task.run_batch([cancelled.sample], 1)[0], ClientDisconnected)


def test_a_sentencepiece_tokenizer_reads_prompts_as_its_tokenizer_json_does(
    tasks: Callable[[Family], TextToImage],
) -> None:
    loaded = tasks("pixart-alpha").pipe.tokenizer  # from spiece.model alone
    built = t5_tokenizer()
    for prompt in ("a red fox", "A Photo of  a CAT, 4k!", "über café"):
        assert loaded(prompt)["input_ids"] == built(prompt)["input_ids"]


@pytest.mark.parametrize(
    ("class_name", "fragment"),
    [
        ("StableDiffusionXLImg2ImgPipeline", "turns an image into another image"),
        ("KandinskyV22CombinedPipeline", "is not among the text-to-image pipelines bake serves"),
    ],
)
def test_the_runtime_refuses_an_unserved_pipeline_at_load(
    folders: Callable[[Family], Path], tmp_path: Path, class_name: str, fragment: str
) -> None:
    folder = shutil.copytree(folders("sdxl"), tmp_path / "edited")
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "_class_name": class_name}))
    with pytest.raises(ModelLoadError, match=fragment):
        load_task(folder)


# ---- over HTTP: a T5 family from the local Hub, offline ----


@pytest.fixture(scope="module")
def pixart_server(
    hub: HubServer, folders: Callable[[Family], Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    root = tmp_path_factory.mktemp("pixart-served")
    cache = offline_cache(hub, "families/pixart-sigma", folders("pixart-sigma"), root)
    env = {**cache.env, "BAKE_MAX_BATCH_SIZE": "4", "BAKE_MAX_WAIT_MS": "300", "BAKE_DEFAULT_STEPS": "2"}
    with ServerProcess(env, root / "server.log") as server:
        yield server.url


def test_pixart_sigma_serves_offline_like_the_pipeline(
    pixart_server: str, folders: Callable[[Family], Path]
) -> None:
    info = httpx.get(pixart_server + "/info").json()["task_details"]
    assert info["pipeline"] == "PixArtSigmaPipeline" and info["family"] == "pixart-sigma"
    image = InferenceClient(model=pixart_server).text_to_image("a red fox", width=48, height=32, seed=4)
    expected = reference(folders("pixart-sigma"), "a red fox", 4, width=48, height=32, num_inference_steps=2)
    assert difference(image.convert("RGB"), expected) <= PARITY_TOLERANCE
    answer = httpx.post(
        pixart_server + "/predict",
        json={
            "inputs": "a red fox",
            "parameters": {"width": 48, "height": 32, "seed": 4, "num_images_per_prompt": 2},
        },
        headers={"Accept": "application/json"},
        timeout=60,
    ).json()
    first = Image.open(io.BytesIO(base64.b64decode(answer["images"][0]))).convert("RGB")
    assert difference(first, expected) == 0, "the same bytes batched with another image"
