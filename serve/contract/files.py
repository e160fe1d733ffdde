"""Which task a model repository is for, and which of its files that task needs: `bake build` bakes exactly
these, and the runtime checks a cache or directory holds them before loading.

One weight format only: safetensors when the repository has them, else PyTorch `.bin` files (converted
to safetensors during the build). TensorFlow, Flax, ONNX, OpenVINO and Core ML copies are never fetched.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from serve.contract import pipelines
from serve.contract.errors import UnsupportedModel
from serve.contract.models import classifier_configs, image_classifier, is_image_classifier
from serve.contract.tasks import IMAGE_CLASSIFICATION, TASKS, TEXT_TO_IMAGE

_CLASSIFIER_CONFIGS = ("config.json", "preprocessor_config.json")


@dataclass(frozen=True)
class Selection:
    """The files to fetch, whether the weights must be converted to safetensors in the build, and the extra
    runtime packages (PyPI names) the model needs."""

    files: tuple[str, ...]
    convert_to_safetensors: bool
    packages: tuple[str, ...] = ()


def detect_task(names: Iterable[str], read_json: Callable[[str], dict | None]) -> str:
    """The task of a repository with files `names`; `read_json(name)` parses one of its JSON files."""
    names = set(names)
    if "model_index.json" in names:
        return TEXT_TO_IMAGE
    config = read_json("config.json") if "config.json" in names else None
    if config is None:
        raise UnsupportedModel(
            "the model has neither config.json nor model_index.json",
            "bake serves transformers image classifiers and diffusers text-to-image pipelines",
        )
    if is_image_classifier(config):
        return IMAGE_CLASSIFICATION
    architectures = config.get("architectures") or []
    raise UnsupportedModel(
        f"cannot serve architectures {architectures or '(none listed)'}",
        f"bake serves these tasks: {', '.join(TASKS)}; pass --task if the model fits one of them",
    )


def select_files(
    names: Iterable[str], task: str, *, device: str, read_json: Callable[[str], dict | None]
) -> Selection:
    """The files `task` needs out of a repository's `names` (paths relative to its root)."""
    names = sorted(set(names))
    if task == IMAGE_CLASSIFICATION:
        return _select_classifier(names, read_json("config.json") if "config.json" in names else None)
    if task == TEXT_TO_IMAGE:
        return _select_diffusion(names, device=device, read_json=read_json)
    raise UnsupportedModel(f"task {task!r} is not served", f"use one of: {', '.join(TASKS)}")


def _select_classifier(names: list[str], config: dict | None) -> Selection:
    """The configs and weights of an image classifier, and the packages its model type needs
    (`serve.contract.models`, which also refuses the types bake cannot serve)."""
    configs, packages = _CLASSIFIER_CONFIGS, ()
    if config is not None:
        kind = image_classifier(config)
        configs, packages = classifier_configs(kind), tuple(package.name for package in kind.packages)
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
    return Selection(files=(*configs, *weights), convert_to_safetensors=convert, packages=packages)


def _weights_in(names: list[str], folder: str, *, variants: bool = False) -> tuple[list[str], bool]:
    """Weight files directly in `folder` ("" for the root): safetensors if any, else .bin (to convert), with
    the index of sharded ones (with `variants`, also the variants' ones: `*.safetensors.index.fp16.json`)."""
    prefix = f"{folder}/" if folder else ""
    direct = [name for name in names if name.startswith(prefix) and "/" not in name[len(prefix) :]]
    for pattern, convert in (("*.safetensors", False), ("*.bin", True)):
        found = [name for name in direct if fnmatch.fnmatch(name[len(prefix) :], pattern)]
        if found:
            indexes = (
                (pattern + ".index.json", pattern + ".index.*.json")
                if variants
                else (pattern + ".index.json",)
            )
            index = [name for name in direct if any(fnmatch.fnmatch(name[len(prefix) :], i) for i in indexes)]
            return sorted(found) + index, convert
    return [], False


def _select_diffusion(names: list[str], *, device: str, read_json: Callable[[str], dict | None]) -> Selection:
    """Every component the pipeline loads (see `serve.contract.pipelines`), each in one weight format."""
    index = read_json("model_index.json") or {}
    try:
        family = pipelines.family_of(index)
    except pipelines.PipelineRefused as refused:
        raise UnsupportedModel(refused.reason, refused.fix) from None
    missing = pipelines.missing_components(family, index)
    if missing:
        raise UnsupportedModel(
            f"{family.pipeline} needs {', '.join(missing)}, which model_index.json does not name",
            "bake serves complete pipelines; use the repo of the full pipeline",
        )
    chosen = ["model_index.json"]
    convert = False
    for component in pipelines.loaded_components(index):
        prefix = f"{component}/"
        files = [name for name in names if name.startswith(prefix) and "/" not in name[len(prefix) :]]
        kind = pipelines.component_kind(index, component)
        configs = [name for name in files if name.endswith(".json") and not _is_weights_index(name)]
        if kind == "tokenizer":
            configs += [name for name in files if name[len(prefix) :] in pipelines.VOCABULARY_FILES]
        weights, needs_conversion = _diffusion_weights(files, component, device=device)
        if kind == "model" and not weights:
            raise UnsupportedModel(
                f"the pipeline's {component} has no PyTorch weights in the repository",
                "bake serves safetensors or PyTorch .bin weights, saved with save_pretrained()",
            )
        if not configs:
            raise UnsupportedModel(
                f"the pipeline's {component} has no configuration files in the repository",
                "bake serves pipelines saved with save_pretrained(); is the repo complete?",
            )
        chosen += configs + weights
        convert = convert or needs_conversion
    packages = tuple(package.name for package in pipelines.packages(family, names, index))
    return Selection(files=tuple(dict.fromkeys(chosen)), convert_to_safetensors=convert, packages=packages)


def _is_weights_index(name: str) -> bool:
    return ".safetensors.index." in name or ".bin.index." in name


def _diffusion_weights(files: list[str], component: str, *, device: str) -> tuple[list[str], bool]:
    """One weight format and one variant for a pipeline component: the default weights, or the fp16 variant
    on CUDA when the repo has it (or when it has nothing else). Other variants (`non_ema`, ...) never."""
    weights, convert = _weights_in(files, component, variants=True)
    if not weights:
        return [], False
    by_variant: dict[str | None, list[str]] = {}
    for name in weights:
        by_variant.setdefault(pipelines.weights_variant(name), []).append(name)
    if device == "cuda" and "fp16" in by_variant:
        return by_variant["fp16"], convert
    return by_variant.get(None) or by_variant.get("fp16", []), convert


def parse_json_bytes(data: bytes) -> dict | None:
    """Parse a small JSON file's bytes, None if it is not a JSON object."""
    try:
        value = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return value if isinstance(value, dict) else None
