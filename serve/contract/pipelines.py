"""Which diffusers text-to-image pipelines bake serves, what each one needs, and why the others are refused.

`bake build` consults this before building anything (which files to bake, which extra packages of
`serve.contract.packages` the image needs, a one-line refusal otherwise) and the runtime at load (the same
refusal, then the family's facts), so that a pipeline bake cannot serve fails at build time, never at request
time. Standard library only.

A pipeline is recognised by the `_class_name` of its `model_index.json`. Only the text-to-image classes of
the families below are served, each one covered by tests of a tiny random-weight pipeline shaped like its
Hub repos (tests/fixtures/diffusion_zoo.py); results in docs/models-text-to-image.md.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from serve.contract.packages import CAPTION_CLEANING, SENTENCEPIECE, Package


@dataclass(frozen=True)
class Family:
    """A family of pipelines served by one diffusers text-to-image class."""

    name: str
    pipeline: str
    """The `_class_name` in model_index.json, and the class the runtime runs."""
    components: tuple[str, ...]
    """The components the pipeline cannot run without (each must be in the repo)."""
    latent_multiple: int = 1
    """Widths and heights must be multiples of the VAE's scale factor times this: 2 where the denoiser packs
    2x2 latent patches (FLUX) or patchifies them by 2 (SD3)."""
    negative_prompt: bool = True
    """Whether the pipeline's guidance reads `negative_prompt` (FLUX's distilled guidance does not)."""
    packages: tuple[Package, ...] = ()
    """Extra runtime packages the family's pipeline uses, whatever its files."""
    one_step_takes_denoised: bool = False
    """In 1 step the pipeline takes the denoised sample from its scheduler's step (PixArt-α): with a
    scheduler that returns only the next sample (DPM-Solver, as the repos have), it needs 2 steps or more."""


_CLIP = ("text_encoder", "tokenizer")
FAMILIES = (
    Family(
        "stable-diffusion",
        "StableDiffusionPipeline",
        ("unet", "vae", *_CLIP, "scheduler"),
    ),
    Family(
        "stable-diffusion-xl",
        "StableDiffusionXLPipeline",
        ("unet", "vae", *_CLIP, "text_encoder_2", "tokenizer_2", "scheduler"),
    ),
    Family(
        "pixart-alpha",
        "PixArtAlphaPipeline",
        ("transformer", "vae", *_CLIP, "scheduler"),
        packages=CAPTION_CLEANING,
        one_step_takes_denoised=True,
    ),
    Family(
        "pixart-sigma",
        "PixArtSigmaPipeline",
        ("transformer", "vae", *_CLIP, "scheduler"),
        packages=CAPTION_CLEANING,
    ),
    Family(
        "stable-diffusion-3",
        "StableDiffusion3Pipeline",
        (
            "transformer",
            "vae",
            *_CLIP,
            "text_encoder_2",
            "tokenizer_2",
            "text_encoder_3",
            "tokenizer_3",
            "scheduler",
        ),
        latent_multiple=2,
    ),
    Family(
        "flux",
        "FluxPipeline",
        ("transformer", "vae", *_CLIP, "text_encoder_2", "tokenizer_2", "scheduler"),
        latent_multiple=2,
        negative_prompt=False,
    ),
)
"""The served families (docs/models-text-to-image.md lists the Hub repos each covers)."""

UNUSED_COMPONENTS = ("safety_checker", "feature_extractor", "image_encoder")
"""Components the request path never runs (the safety checker and its image processor, the IP-Adapter image
encoder): never baked, never loaded."""

VOCABULARY_FILES = ("vocab.json", "merges.txt", "vocab.txt", "spiece.model")
"""The files besides JSON ones a tokenizer folder may need: the vocabulary a tokenizer without
`tokenizer.json` is built from (CLIP's `vocab.json` + `merges.txt`, T5's `spiece.model`, BERT's
`vocab.txt`)."""


_REFUSALS = (
    ("Img2Img", "turns an image into another image"),
    ("Image2Image", "turns an image into another image"),
    ("Inpaint", "repaints the masked part of an image"),
    ("Fill", "repaints the masked part of an image"),
    ("ControlNet", "needs a control image with every prompt"),
    ("Adapter", "needs a control image with every prompt"),
    ("Upscale", "upscales an image"),
    ("SuperRes", "upscales an image"),
    ("Depth2Img", "turns an image into another image"),
    ("Pix2Pix", "edits an image"),
    ("Kontext", "edits an image"),
    ("Variation", "makes variations of an image"),
    ("Video", "makes videos"),
    ("Audio", "makes audio"),
    ("Music", "makes audio"),
)
"""Parts of pipeline class names that mean "not text-to-image", and what such a pipeline does instead."""

_SERVED = ", ".join(family.pipeline for family in FAMILIES)
_VARIANT_WEIGHTS = re.compile(r"\.(?P<variant>[A-Za-z0-9_]+)(\.|-\d{5}-of-\d{5}\.)(safetensors|bin)$")
_VARIANT_INDEX = re.compile(r"\.(safetensors|bin)\.index\.(?P<variant>[A-Za-z0-9_]+)\.json$")


class PipelineRefused(Exception):
    """bake cannot serve this pipeline: `reason` says why (one line), `fix` what to do instead."""

    def __init__(self, reason: str, fix: str) -> None:
        super().__init__(f"{reason}: {fix}")
        self.reason = reason
        self.fix = fix


def family_of(index: Mapping[str, object]) -> Family:
    """The served family of the pipeline whose model_index.json is `index`; raises `PipelineRefused`."""
    name = index.get("_class_name")
    if not isinstance(name, str) or not name:
        raise PipelineRefused(
            "model_index.json names no pipeline class (_class_name)"
            if name is None
            else f"model_index.json names custom pipeline code ({name!r}), which bake does not run",
            f"bake serves these diffusers pipelines: {_SERVED}",
        )
    for family in FAMILIES:
        if family.pipeline == name:
            return family
    for part, what in _REFUSALS:
        if part.lower() in name.lower():
            raise PipelineRefused(
                f"{name} {what}; bake serves text-to-image only", f"use a text-to-image pipeline: {_SERVED}"
            )
    raise PipelineRefused(
        f"{name} is not among the text-to-image pipelines bake serves ({_SERVED})",
        "open an issue with the model id; its family needs tests before bake serves it",
    )


def loaded_components(index: Mapping[str, object]) -> list[str]:
    """The components of `index` the runtime loads: those naming a class, but the unused ones."""
    return [
        name
        for name, value in index.items()
        if not name.startswith("_")
        and isinstance(value, list)
        and len(value) == 2
        and value[0] is not None
        and name not in UNUSED_COMPONENTS
    ]


def component_kind(index: Mapping[str, object], component: str) -> str:
    """ "tokenizer", "scheduler" or "model": what the class `index` names for `component` is."""
    value = index.get(component)
    class_name = value[1] if isinstance(value, list) and len(value) == 2 and isinstance(value[1], str) else ""
    for kind in ("tokenizer", "scheduler"):
        if kind in class_name.lower() or component.startswith(kind):
            return kind
    return "model"


def missing_components(family: Family, index: Mapping[str, object]) -> list[str]:
    """The components `family`'s pipeline needs that `index` does not name."""
    present = set(loaded_components(index))
    return [name for name in family.components if name not in present]


def packages(family: Family, names: Iterable[str], index: Mapping[str, object]) -> tuple[Package, ...]:
    """The extra packages a pipeline with files `names` needs at run time: the family's own, and
    SentencePiece's for a tokenizer that comes as a `*.model` file without `tokenizer.json`."""
    names = set(names)
    needed = list(family.packages)
    for component in loaded_components(index):
        if not component.startswith("tokenizer"):
            continue
        folder = [name.split("/", 1)[1] for name in names if name.startswith(f"{component}/")]
        if "tokenizer.json" not in folder and any(name.endswith(".model") for name in folder):
            needed += [package for package in SENTENCEPIECE if package not in needed]
    return tuple(needed)


def weights_variant(filename: str) -> str | None:
    """The variant of a weights file or shard index ("fp16" for `model.fp16.safetensors`,
    `model.fp16-00001-of-00002.safetensors` and `model.safetensors.index.fp16.json`), None for the default."""
    name = filename.rsplit("/", 1)[-1]
    match = _VARIANT_WEIGHTS.search(name) or _VARIANT_INDEX.search(name)
    return match.group("variant") if match else None
