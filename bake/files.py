"""Which files of a model repository a served task needs, and which task a repository is for.

One weight format only: safetensors when the repository has them, else PyTorch `.bin` files (converted
to safetensors during the build). TensorFlow, Flax, ONNX, OpenVINO and Core ML copies are never fetched.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from bake.errors import UnsupportedModel
from serve.contract.models import (
    ModelType,
    UnsupportedModelType,
    classifier_configs,
    image_classifier,
    is_image_classifier,
)

TASKS = ("image-classification", "text-to-image")
"""The tasks the runtime serves."""

_CLASSIFIER_CONFIGS = ("config.json", "preprocessor_config.json")
UNUSED_DIFFUSION_COMPONENTS = ("safety_checker", "feature_extractor", "image_encoder")
"""Pipeline components the runtime never loads (the same list as serve.tasks.text_to_image.UNUSED_COMPONENTS;
bake never imports serve; a test keeps them equal): the safety checker, its image processor, the IP-Adapter
image encoder."""


@dataclass(frozen=True)
class Selection:
    """The files to fetch, and whether the weights must be converted to safetensors in the build."""

    files: tuple[str, ...]
    convert_to_safetensors: bool
    requirements: tuple[str, ...] = ()
    """pip requirements the model needs in the image beyond the runtime's own (e.g. timm)."""


def detect_task(names: Iterable[str], read_json: Callable[[str], dict | None]) -> str:
    """The task of a repository with files `names`; `read_json(name)` parses one of its JSON files."""
    names = set(names)
    if "model_index.json" in names:
        return "text-to-image"
    config = read_json("config.json") if "config.json" in names else None
    if config is None:
        raise UnsupportedModel(
            "the model has neither config.json nor model_index.json",
            "bake serves transformers image classifiers and diffusers text-to-image pipelines",
        )
    if is_image_classifier(config):
        return "image-classification"
    architectures = config.get("architectures") or []
    raise UnsupportedModel(
        f"cannot serve architectures {architectures or '(none listed)'}",
        f"bake serves these tasks: {', '.join(TASKS)}; pass --task if the model fits one of them",
    )


def select_files(names: Iterable[str], task: str, *, device: str, read_json: Callable[[str], dict | None]) -> Selection:
    """The files `task` needs out of a repository's `names` (paths relative to its root)."""
    names = sorted(set(names))
    if task == "image-classification":
        return _select_classifier(names, read_json("config.json") if "config.json" in names else None)
    if task == "text-to-image":
        return _select_diffusion(names, device=device, read_json=read_json)
    raise UnsupportedModel(f"task {task!r} is not served", f"use one of: {', '.join(TASKS)}")


def _select_classifier(names: list[str], config: dict | None) -> Selection:
    configs, requirements = _CLASSIFIER_CONFIGS, ()
    if config is not None:
        kind = _registered_classifier(config)
        configs, requirements = classifier_configs(kind), kind.requirements
    missing = [name for name in configs if name not in names]
    if "config.json" in missing:
        raise UnsupportedModel("the model has no config.json", "is this a transformers image classifier?")
    if missing:
        raise UnsupportedModel(
            "the model has no preprocessor_config.json (its image processor)",
            "add the processor the model was trained with (`processor.save_pretrained(dir)`)",
        )
    weights, convert = _weights_in(names, "")
    if not weights:
        raise UnsupportedModel(
            "the model has no PyTorch weights (model.safetensors or pytorch_model.bin)",
            "bake serves PyTorch models; export the weights with save_pretrained()",
        )
    return Selection(files=(*configs, *weights), convert_to_safetensors=convert, requirements=requirements)


def _registered_classifier(config: dict) -> ModelType:
    """The model type's entry in serve.contract.models; `UnsupportedModel` says why bake does not serve it."""
    try:
        return image_classifier(config)
    except UnsupportedModelType as error:
        raise UnsupportedModel(error.message, error.fix) from None


def _weights_in(names: list[str], folder: str) -> tuple[list[str], bool]:
    """Weight files directly in `folder` ("" for the root): safetensors if any, else .bin (to convert)."""
    prefix = f"{folder}/" if folder else ""
    direct = [name for name in names if name.startswith(prefix) and "/" not in name[len(prefix):]]
    for pattern, convert in (("*.safetensors", False), ("*.bin", True)):
        found = [name for name in direct if fnmatch.fnmatch(name[len(prefix):], pattern)]
        if found:
            index = [name for name in direct if fnmatch.fnmatch(name[len(prefix):], pattern + ".index.json")]
            return sorted(found) + index, convert
    return [], False


def _select_diffusion(names: list[str], *, device: str, read_json: Callable[[str], dict | None]) -> Selection:
    index = read_json("model_index.json") or {}
    components = [
        name for name, value in index.items()
        if not name.startswith("_") and isinstance(value, list) and len(value) == 2 and value[0] is not None
    ]
    chosen = ["model_index.json"]
    convert = False
    for component in components:
        if component in UNUSED_DIFFUSION_COMPONENTS:
            continue
        files = [name for name in names if name.startswith(f"{component}/")]
        configs = [name for name in files if name.endswith(".json") and "/" not in name[len(component) + 1:]
                   and not name.endswith(".index.json")]
        support = [name for name in files if _is_tokenizer_file(name)]
        weights, needs_conversion = _diffusion_weights(files, component, device=device)
        convert = convert or needs_conversion
        chosen += configs + support + weights
    return Selection(files=tuple(dict.fromkeys(chosen)), convert_to_safetensors=convert)


def _is_tokenizer_file(name: str) -> bool:
    return name.rsplit("/", 1)[-1] in ("vocab.json", "merges.txt", "spiece.model", "tokenizer.json", "vocab.txt")


def _diffusion_weights(files: list[str], component: str, *, device: str) -> tuple[list[str], bool]:
    """One weight format for a pipeline component; the fp16 variant on CUDA when the repo has it."""
    weights, convert = _weights_in(files, component)
    if not weights:
        return [], False
    fp16 = [name for name in weights if ".fp16." in name]
    full = [name for name in weights if ".fp16." not in name]
    if device == "cuda" and fp16:
        return fp16, convert
    return (full or fp16), convert


def parse_json_bytes(data: bytes) -> dict | None:
    """Parse a small JSON file's bytes, None if it is not a JSON object."""
    try:
        value = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return value if isinstance(value, dict) else None
