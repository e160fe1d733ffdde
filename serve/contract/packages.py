"""The Python packages a model may need beyond its task's runtime, and the check that they are installed.

Which model needs which is decided by its entry in the registries: `serve.contract.models` per
image-classification model type (timm checkpoints need timm and torchvision), `serve.contract.pipelines` per
text-to-image family and files (PixArt's caption cleaning, SentencePiece tokenizers). `bake build` installs
them in the image (`Selection.packages`, under the image's constraints: torchvision is left to match the
image's torch); the runtime refuses a model whose packages cannot be imported before loading it
(`missing`, `missing_message`), so that a model never fails at request time for a package. Standard library
only.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Package:
    """A Python package the runtime imports: its name on PyPI and the module it provides."""

    name: str
    module: str
    why: str


SENTENCEPIECE = (
    Package("sentencepiece", "sentencepiece", "reads a SentencePiece tokenizer that has no tokenizer.json"),
    Package("protobuf", "google.protobuf", "parses the SentencePiece model file"),
)
"""What transformers needs to turn a `*.model` SentencePiece file into a tokenizer (T5 in PixArt repos)."""

CAPTION_CLEANING = (
    Package("ftfy", "ftfy", "PixArt cleans prompts (clean_caption=True) with it"),
    Package("beautifulsoup4", "bs4", "PixArt cleans prompts (clean_caption=True) with it"),
)
"""What PixArt pipelines clean prompts with, as their training captions were; without them diffusers skips the
cleaning with a warning on every call."""

TORCHVISION = Package(
    "torchvision", "torchvision", "its image processor has no implementation without torchvision"
)
TIMM = (
    Package("timm", "timm", "builds the network of a timm checkpoint (transformers' TimmWrapper)"),
    Package("torchvision", "torchvision", "timm's image transforms, which TimmWrapper's processor runs"),
)
"""What transformers' TimmWrapper needs to load and preprocess a timm checkpoint."""
BY_NAME = {package.name: package for package in (*SENTENCEPIECE, *CAPTION_CLEANING, TORCHVISION, *TIMM)}
"""Every package above by its PyPI name (`bake build` imports their modules in the image to check them)."""


def missing(packages: Iterable[Package]) -> list[Package]:
    """Those of `packages` whose module this interpreter cannot import."""
    return [package for package in dict.fromkeys(packages) if not _importable(package.module)]


def missing_message(what: str, packages: Iterable[Package]) -> str:
    """One line saying that `what` needs the (missing) `packages`, why, and how to install them."""
    packages = list(packages)
    return (
        f"{what} needs "
        + ", ".join(f"{package.name} ({package.why})" for package in packages)
        + f": pip install {' '.join(package.name for package in packages)} (bake build installs them)"
    )


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a dotted name whose parent package is missing
        return False
