"""Text-to-image with a diffusers pipeline of a family bake serves (`serve.contract.pipelines`: Stable
Diffusion 1.x/2.x and Turbo, SDXL and Turbo, PixArt-alpha/Sigma, SD3, FLUX), answering like the Hugging Face
Inference API.

Inputs: the prompt, and the Hugging Face text-to-image parameters (`negative_prompt`, `num_inference_steps`,
`guidance_scale`, `width`, `height`, `seed`, `num_images_per_prompt`), every one optional. The result: the
images (PIL), the seed of the first and timings; each protocol encodes them its own way.

Seeds: image j of a request with seed s (drawn at random when absent, and returned) comes from its own
CPU `torch.Generator` seeded s + j, so it is the image that request seed s + j alone would get, on any
device, whatever the request is batched with.

Batching: the pipeline runs one schedule, one size and one guidance scale per call, so only requests
with the same steps, width, height, guidance scale and use of a negative prompt share a batch (its key);
prompts, negative prompts and generators are per row. A request fills `num_images_per_prompt` rows, at
most `BAKE_MAX_BATCH_SIZE`. Rows are not padded up to the batch's bucket: a padding row would cost as
much denoising as a real one, and an eager pipeline has no shape-specialised code to keep warm. On the
CPU in float32 the pipeline is made batch-invariant (`serve.batch_invariance`), so a batched image is
the same bytes as the image made alone; on CUDA the kernels pick their algorithms by batch size, and
batched pixels may differ from lone ones by a rounding step.

Families (`serve.contract.pipelines`; a pipeline of another family is refused at load, as at build): `load`
reads what differs from the pipeline itself, its signature and the family's facts: the native size (the
denoiser's sample size times the VAE's scale; FLUX's is fixed), the size multiple (16 for SD3 and FLUX), the
longest prompt (a T5 encoder's `max_sequence_length` when shorter than its tokenizer's), the fewest steps
(2 for PixArt-alpha with a scheduler that returns no denoised sample), whether a negative prompt is read
(not by FLUX's distilled guidance) and how steps are reported (PixArt's older `callback`). A request leaves
out the parameters it does not set, so the pipeline's own defaults apply (PixArt's negative prompt is "").

Cancellation: after every denoising step the task reports progress on each request's channel and, once
every request of the batch is cancelled (clients gone, deadlines passed), stops the batch there, before
the remaining steps and the VAE decode.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import re
import secrets
import threading
import time
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import torch
from pydantic import ConfigDict, Field

from serve.batch_invariance import make_batch_invariant
from serve.channel import Channel
from serve.contract import packages, pipelines
from serve.contract.tasks import TEXT_TO_IMAGE
from serve.errors import ClientDisconnected, InvalidParameters, ModelLoadError
from serve.payload import StrictModel
from serve.tasks.base import Prepared, Task, TaskInfo

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline
    from PIL import Image

SIZE_MULTIPLE = 8
"""Widths and heights must be multiples of this, or of more where the pipeline needs it (16 for SD3 and FLUX:
the VAE's downsampling times the transformer's 2x2 patches)."""

WARMUP_STEPS = 2
"""Denoising steps of each warm-up batch: enough to run every component, few enough to start fast."""

MAX_PROMPT_CHARS = 16_384
"""Longest prompt (or negative prompt) read, in characters: text encoders read 77 tokens (a few hundred
characters); anything this long is refused before the tokenizer spends time on it."""

_SEED_LIMIT = 2**63
_CONTROL_CHARACTERS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")
"""C0 controls but tab and line breaks, DEL, and lone surrogates (not text: they cannot even be encoded)."""
_RANDOM_SEED_LIMIT = 2**32


class TargetSize(StrictModel):
    """An image size."""

    width: Annotated[int, Field(ge=SIZE_MULTIPLE)]
    height: Annotated[int, Field(ge=SIZE_MULTIPLE)]


class TextToImageParameters(StrictModel):
    """The `parameters` of a text-to-image request (Hugging Face Inference API)."""

    model_config = ConfigDict(StrictModel.model_config, use_attribute_docstrings=True)

    negative_prompt: str | None = None
    """What the image should not show (used when guidance is on: guidance_scale > 1)."""
    num_inference_steps: Annotated[int, Field(ge=1)] | None = None
    """Denoising steps; default: the model's (see /info), at most BAKE_MAX_STEPS."""
    guidance_scale: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = None
    """Classifier-free guidance; above 1 turns guidance on. Default: the model's (see /info)."""
    width: Annotated[int, Field(ge=SIZE_MULTIPLE)] | None = None
    """Image width in pixels, a multiple of 8 (of 16 for SD3 and FLUX, see /info); default: the model's native
    size."""
    height: Annotated[int, Field(ge=SIZE_MULTIPLE)] | None = None
    """Image height in pixels, a multiple of 8 (of 16 for SD3 and FLUX, see /info); default: the model's
    native size."""
    seed: Annotated[int, Field(ge=0, lt=_SEED_LIMIT)] | None = None
    """Seed of the first image (image j uses seed + j); default: a random one, returned with the answer."""
    num_images_per_prompt: Annotated[int, Field(ge=1)] = 1
    """Images to make (over the Hugging Face routes, more than one needs `Accept: application/json` or
    `text/event-stream`)."""
    scheduler: str | None = None
    """The scheduler (a diffusers class name the pipeline is compatible with, see /info); default: the
    pipeline's own."""
    target_size: TargetSize | None = None
    """The image size as {"width", "height"} (the Hugging Face spec's older form of width and height)."""


@dataclass(frozen=True)
class Recipe:
    """What every row of a batch shares (the batch key)."""

    steps: int
    width: int
    height: int
    guidance_scale: float
    negative: bool
    """Whether the requests have negative prompts (without one, some pipelines guide from zeros)."""
    scheduler: str
    """The scheduler's class name."""


@dataclass(frozen=True)
class Generation:
    """One request on its way to the device."""

    recipe: Recipe
    prompt: str
    negative_prompt: str | None
    seed: int
    images: int
    channel: Channel
    prepared_at: float
    """`time.perf_counter()` when the request was ready to queue."""


@dataclass(frozen=True)
class Generated:
    """One request's images, back from the device."""

    images: list[Image.Image]
    seed: int
    queue_s: float
    inference_s: float


class _Abandoned(Exception):
    """Raised between denoising steps to stop a batch nobody waits for any more."""


class TextToImage(Task):
    """A diffusers text-to-image pipeline (`AutoPipelineForText2Image`) on one device."""

    name = TEXT_TO_IMAGE
    Parameters = TextToImageParameters
    text_input = True

    pipe: DiffusionPipeline

    def load(self) -> None:
        """Load the pipeline offline onto the device, without unused components; read its defaults."""
        self.pipe = self._from_pretrained().to(self.placement.device)
        self._size_multiple = max(SIZE_MULTIPLE, self.pipe.vae_scale_factor * self._family.latent_multiple)
        self.pipe.set_progress_bar_config(disable=True)
        if self.settings.attention_slicing:
            self.pipe.enable_attention_slicing()
        if self.settings.vae_tiling:
            self.pipe.vae.enable_tiling()
        self._batch_invariant = self.placement.device.type == "cpu" and self.placement.dtype == torch.float32
        if self._batch_invariant:
            for component in self.pipe.components.values():
                if isinstance(component, torch.nn.Module):
                    make_batch_invariant(component)
        call = inspect.signature(self.pipe.__call__).parameters
        self._legacy_callback = "callback_on_step_end" not in call
        self._default_width, self._default_height = _native_size(self.pipe)
        self._default_steps = self.settings.default_steps or min(
            _default(call, "num_inference_steps", 50), self.settings.max_steps
        )
        guidance = self.settings.default_guidance
        self._default_guidance = float(
            _default(call, "guidance_scale", 7.5) if guidance is None else guidance
        )
        self._min_steps = 1 if _makes_images_in_one_step(self.pipe, self._family) else 2
        if self._min_steps > min(self._default_steps, self.settings.max_steps):
            raise ModelLoadError(
                f"{type(self.pipe).__name__} with {type(self.pipe.scheduler).__name__} makes no image in 1 "
                "step: set BAKE_DEFAULT_STEPS and BAKE_MAX_STEPS to 2 or more"
            )
        self._max_images = min(self.settings.max_images_per_prompt, self.settings.max_batch_size)
        self._tokenizer, self._max_prompt_tokens = _longest_tokenizer(self.pipe, call)
        self._tokenizer_lock = threading.Lock()
        self._schedulers = _schedulers(self.pipe.scheduler)
        self._default_scheduler = type(self.pipe.scheduler).__name__

    def _from_pretrained(self) -> DiffusionPipeline:
        """The pipeline from the model directory, in the compute dtype, its unused components left out.

        A pipeline bake does not serve, or one whose extra packages are missing, is refused before loading.
        """
        from diffusers import AutoPipelineForText2Image

        index = self.source.read_json("model_index.json") or {}
        self._family = _served_family(index, self.source.path)
        options: dict[str, Any] = {name: None for name in pipelines.UNUSED_COMPONENTS if name in index}
        if "requires_safety_checker" in index:
            options["requires_safety_checker"] = False
        self._variant = _weights_variant(self.source.path, self.placement.dtype)
        path = self.source.path
        try:
            pipe = AutoPipelineForText2Image.from_pretrained(
                str(path), dtype=self.placement.dtype, variant=self._variant, **options
            )
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            raise ModelLoadError(f"cannot load a text-to-image pipeline from {path}: {error}") from error
        call = inspect.signature(pipe.__call__).parameters
        if "callback_on_step_end" not in call and "callback" not in call:
            raise ModelLoadError(f"{type(pipe).__name__} cannot report its denoising steps: not served")
        return pipe

    def prepare(self, inputs: str, params: TextToImageParameters) -> Prepared:
        """Check the prompt and the limits; the batch key is the request's `Recipe`, its rows its images."""
        if not inputs:
            raise InvalidParameters("inputs: the prompt is empty")
        target = params.target_size
        if target is not None and (params.width or params.height):
            raise InvalidParameters("parameters.target_size: give either target_size or width and height")
        if params.scheduler is not None and params.scheduler not in self._schedulers:
            raise InvalidParameters(
                f"parameters.scheduler: {params.scheduler!r} is not one of this pipeline's schedulers: "
                f"{', '.join(sorted(self._schedulers))}"
            )
        recipe = Recipe(
            steps=params.num_inference_steps or self._default_steps,
            width=params.width or (target.width if target else self._default_width),
            height=params.height or (target.height if target else self._default_height),
            guidance_scale=self._default_guidance if params.guidance_scale is None else params.guidance_scale,
            negative=params.negative_prompt is not None,
            scheduler=params.scheduler or self._default_scheduler,
        )
        self._check_limits(inputs, params, recipe)
        seed = secrets.randbelow(_RANDOM_SEED_LIMIT) if params.seed is None else params.seed
        channel = Channel()
        generation = Generation(
            recipe=recipe,
            prompt=inputs,
            negative_prompt=params.negative_prompt,
            seed=seed,
            images=params.num_images_per_prompt,
            channel=channel,
            prepared_at=time.perf_counter(),
        )
        return Prepared(
            sample=generation, params=params, batch_key=recipe, rows=generation.images, channel=channel
        )

    def _check_limits(self, prompt: str, params: TextToImageParameters, recipe: Recipe) -> None:
        settings = self.settings
        if recipe.steps < self._min_steps:
            raise InvalidParameters(
                f"parameters.num_inference_steps: {type(self.pipe).__name__} with "
                f"{type(self.pipe.scheduler).__name__} makes no image in {recipe.steps} step; ask for "
                f"{self._min_steps} or more"
            )
        if recipe.steps > settings.max_steps:
            raise InvalidParameters(
                f"parameters.num_inference_steps: {recipe.steps} is over the limit of {settings.max_steps} "
                "(BAKE_MAX_STEPS)"
            )
        for name, value in (("width", recipe.width), ("height", recipe.height)):
            if value % self._size_multiple:
                raise InvalidParameters(
                    f"parameters.{name}: {value} is not a multiple of {self._size_multiple}"
                )
        area = recipe.width * recipe.height
        if area > settings.max_image_area:
            raise InvalidParameters(
                f"parameters.width x height: {recipe.width}x{recipe.height} = {area} pixels is over the "
                f"limit of {settings.max_image_area} (BAKE_MAX_IMAGE_AREA)"
            )
        if recipe.negative and not self._family.negative_prompt:
            raise InvalidParameters(
                f"parameters.negative_prompt: {self._family.pipeline} does not read a negative prompt (its "
                "guidance is distilled into the model); leave it out"
            )
        if params.num_images_per_prompt > self._max_images:
            raise InvalidParameters(
                f"parameters.num_images_per_prompt: {params.num_images_per_prompt} is over the limit of "
                f"{self._max_images} (BAKE_MAX_IMAGES_PER_PROMPT, at most BAKE_MAX_BATCH_SIZE)"
            )
        for where, text in (("inputs", prompt), ("parameters.negative_prompt", params.negative_prompt)):
            _check_text(where, text or "")
            tokens = self._count_tokens(text) if text else 0
            if tokens > self._max_prompt_tokens:
                raise InvalidParameters(
                    f"{where}: the prompt is {tokens} tokens long, over the text encoder's limit of "
                    f"{self._max_prompt_tokens}; shorten it"
                )

    def _count_tokens(self, text: str) -> int:
        """Tokens of `text`, start and end tokens included (CPU workers share one tokenizer copy)."""
        if self._tokenizer is None:
            return 0
        with self._tokenizer_lock:
            return len(self._tokenizer(text, truncation=False, verbose=False)["input_ids"])

    @torch.inference_mode()
    def run_batch(self, samples: Sequence[Generation], batch_size: int) -> list[Any]:
        """Denoise every row of the batch in one pipeline call; images split back per request.

        `batch_size` (the bucket) is not padded up to: see the module docstring.
        """
        recipe = samples[0].recipe
        rows = [(sample, image) for sample in samples for image in range(sample.images)]
        started = time.perf_counter()

        def step(done: int, total: int) -> None:
            for sample in samples:
                sample.channel.step(done, total)
            if all(sample.channel.cancelled for sample in samples):
                raise _Abandoned

        self.pipe.scheduler = self._schedulers[recipe.scheduler]
        arguments: dict[str, Any] = {
            "prompt": [sample.prompt for sample, _ in rows],
            "num_inference_steps": recipe.steps,
            "guidance_scale": recipe.guidance_scale,
            "width": recipe.width,
            "height": recipe.height,
            "generator": [torch.Generator().manual_seed(sample.seed + image) for sample, image in rows],
            "output_type": "pil",
        }
        if recipe.negative:  # else the pipeline's own default: None, or "" (PixArt)
            arguments["negative_prompt"] = [sample.negative_prompt for sample, _ in rows]
        if self._legacy_callback:  # PixArt: callback(step, timestep, latents) after each step
            arguments["callback"] = lambda index, _timestep, _latents: step(index + 1, recipe.steps)
            arguments["callback_steps"] = 1
        else:

            def on_step_end(pipe: Any, index: int, _timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
                step(index + 1, pipe.num_timesteps)
                return tensors

            arguments["callback_on_step_end"] = on_step_end
        try:
            images = self.pipe(**arguments).images
        except _Abandoned:
            return [ClientDisconnected() for _ in samples]
        finished = time.perf_counter()
        outputs = []
        first = 0
        for sample in samples:
            outputs.append(
                Generated(
                    images=images[first : first + sample.images],
                    seed=sample.seed,
                    queue_s=started - sample.prepared_at,
                    inference_s=finished - started,
                )
            )
            first += sample.images
        return outputs

    def warmup_samples(self) -> list[Prepared]:
        """One prompt at the default size and guidance, a few steps."""
        recipe = Recipe(
            steps=min(WARMUP_STEPS, self.settings.max_steps),
            width=self._default_width,
            height=self._default_height,
            guidance_scale=self._default_guidance,
            negative=False,
            scheduler=self._default_scheduler,
        )
        sample = Generation(recipe, "a photo of a cat", None, 0, 1, Channel(), time.perf_counter())
        return [
            Prepared(sample=sample, params=TextToImageParameters(), batch_key=recipe, channel=sample.channel)
        ]

    def info(self) -> TaskInfo:
        """The pipeline, its components, defaults and limits."""
        pipe = self.pipe
        return TaskInfo(
            task=self.name,
            details={
                "pipeline": type(pipe).__name__,
                "family": self._family.name,
                "components": {
                    name: type(component).__name__
                    for name, component in pipe.components.items()
                    if component is not None
                },
                "scheduler": self._default_scheduler,
                "schedulers": sorted(self._schedulers),
                "variant": self._variant,
                "defaults": {
                    "width": self._default_width,
                    "height": self._default_height,
                    "num_inference_steps": self._default_steps,
                    "guidance_scale": self._default_guidance,
                },
                "limits": {
                    "min_steps": self._min_steps,
                    "max_steps": self.settings.max_steps,
                    "max_image_area": self.settings.max_image_area,
                    "size_multiple": self._size_multiple,
                    "max_images_per_prompt": self._max_images,
                    "max_prompt_tokens": self._max_prompt_tokens,
                },
                "attention_slicing": self.settings.attention_slicing,
                "vae_tiling": self.settings.vae_tiling,
                "batch_invariant": self._batch_invariant,
            },
        )


def _schedulers(default: Any) -> dict[str, Any]:
    """The schedulers a request may choose: the pipeline's own and every compatible one that this image can
    make (some need packages the image lacks), each made once from the pipeline's scheduler config."""
    made = {type(default).__name__: default}
    for cls in getattr(default, "compatibles", []):
        if cls.__name__ in made:
            continue
        try:
            made[cls.__name__] = cls.from_config(default.config)
        except (ImportError, ValueError, TypeError, AttributeError):
            continue
    return made


def _default(parameters: Any, name: str, fallback: Any) -> Any:
    """The default of the pipeline call's parameter `name`, or `fallback` when it has none."""
    parameter = parameters.get(name)
    if parameter is None or parameter.default in (inspect.Parameter.empty, None):
        return fallback
    return parameter.default


def _served_family(index: dict[str, Any], path: Path) -> pipelines.Family:
    """The family of the pipeline in `path` (model_index.json: `index`), once it is one bake serves and every
    package it needs can be imported; else `ModelLoadError` with the reason."""
    try:
        family = pipelines.family_of(index)
    except pipelines.PipelineRefused as refused:
        raise ModelLoadError(f"cannot serve the pipeline in {path}: {refused}") from None
    names = [str(file.relative_to(path)) for file in path.rglob("*") if file.is_file()]
    missing = packages.missing(pipelines.packages(family, names, index))
    if missing:
        raise ModelLoadError(packages.missing_message(f"{family.pipeline} in {path}", missing))
    return family


def _makes_images_in_one_step(pipe: Any, family: pipelines.Family) -> bool:
    """Whether the pipeline can make an image in one step: always, but where it then takes the denoised sample
    from the scheduler's step output, which must hold more than the next sample (see `pipelines.Family`)."""
    if not family.one_step_takes_denoised:
        return True
    try:
        returned = typing.get_type_hints(type(pipe.scheduler).step).get("return")
    except (NameError, TypeError):  # annotations it cannot resolve: assume the worst
        return False
    outputs = [kind for kind in typing.get_args(returned) or (returned,) if dataclasses.is_dataclass(kind)]
    return bool(outputs) and len(dataclasses.fields(outputs[0])) > 1


def _native_size(pipe: Any) -> tuple[int, int]:
    """(width, height) the pipeline makes when asked for no size: its sample size times the VAE's scale."""
    denoiser = pipe.unet if getattr(pipe, "unet", None) is not None else pipe.transformer
    size = getattr(pipe, "default_sample_size", None) or denoiser.config.sample_size
    height, width = (size, size) if isinstance(size, int) else size
    return width * pipe.vae_scale_factor, height * pipe.vae_scale_factor


def _longest_tokenizer(pipe: Any, call: Any) -> tuple[Any, int]:
    """A private copy of the pipeline's tokenizer reading the longest prompts, and that length in tokens: the
    tokenizer's window, or the pipeline's `max_sequence_length` if shorter (T5 in PixArt-alpha: 120).

    A prompt longer than every text encoder's window would be cut silently, so it is refused instead.
    """
    tokenizers = [
        component
        for name, component in pipe.components.items()
        if name.startswith("tokenizer") and component is not None
    ]
    if not tokenizers:
        return None, 0
    longest = max(tokenizers, key=lambda tokenizer: tokenizer.model_max_length)
    return copy.deepcopy(longest), min(
        int(longest.model_max_length), _default(call, "max_sequence_length", 2**31)
    )


def _weights_variant(path: Path, dtype: torch.dtype) -> str | None:
    """ "fp16" when the pipeline must or should load its fp16 variant weights, else None.

    A CUDA build bakes only the `*.fp16.*` files of the components that have them: such a directory loads
    only with the variant. Where both exist, the variant is taken for half-precision compute only.
    """
    weights = [file for file in path.rglob("*") if file.suffix in (".safetensors", ".bin") and file.is_file()]
    variant = {file.parent for file in weights if pipelines.weights_variant(file.name) == "fp16"}
    full = {file.parent for file in weights if pipelines.weights_variant(file.name) is None}
    if variant - full or (variant and dtype == torch.float16):
        return "fp16"
    return None


def _check_text(where: str, text: str) -> None:
    """Refuse a prompt that is far too long, or holds characters that are no text (422)."""
    if len(text) > MAX_PROMPT_CHARS:
        raise InvalidParameters(
            f"{where}: the prompt is {len(text)} characters long, over the limit of {MAX_PROMPT_CHARS}; "
            "shorten it"
        )
    if (match := _CONTROL_CHARACTERS.search(text)) is not None:
        raise InvalidParameters(
            f"{where}: the prompt holds the control character U+{ord(match.group()):04X}; remove it"
        )
