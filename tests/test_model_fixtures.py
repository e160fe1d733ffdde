"""The tiny model factories (`tests.fixtures.models`) produce repos that load like the real ones."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from tests.fixtures.models import (
    EXTRA_FORMAT_FILES,
    class_labels,
    make_image_classifier,
    make_text_to_image_pipeline,
)


def listing(folder: Path) -> set[str]:
    """Return the repo paths of every file under `folder`."""
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def classify(folder: Path, top_k: int = 3) -> list[dict]:
    """Run the transformers image-classification pipeline of `folder` on a small image."""
    import transformers

    classifier = transformers.pipeline("image-classification", model=str(folder))
    return classifier(Image.new("RGB", (96, 72), (200, 120, 40)), top_k=top_k)


@pytest.mark.parametrize("arch", ["resnet", "convnext", "vit"])
def test_classifiers_load_in_the_transformers_pipeline(tiny_models: dict[str, Path], arch: str) -> None:
    folder = tiny_models[arch]
    config = json.loads((folder / "config.json").read_text())

    predictions = classify(folder, top_k=5)

    assert {p["label"] for p in predictions} == set(config["id2label"].values()) == set(class_labels(5))
    scores = [p["score"] for p in predictions]
    assert scores == sorted(scores, reverse=True)
    assert scores[0] - scores[-1] > 0.05  # the head is scaled so that the ranking means something
    assert listing(folder) == {
        ".gitattributes",
        "README.md",
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
    }


@pytest.mark.parametrize(
    ("arch", "expected"),
    [
        (
            "resnet",
            {
                "image_processor_type": "ConvNextImageProcessor",
                "size": {"shortest_edge": 224},
                "crop_pct": 0.875,
                "resample": 3,
                "image_mean": [0.485, 0.456, 0.406],
                "image_std": [0.229, 0.224, 0.225],
            },
        ),
        (
            "convnext",
            {
                "image_processor_type": "ConvNextImageProcessor",
                "size": {"shortest_edge": 224},
                "crop_pct": 0.875,
            },
        ),
        (
            "vit",
            {
                "image_processor_type": "ViTImageProcessor",
                "size": {"height": 224, "width": 224},
                "resample": 2,
                "image_mean": [0.5, 0.5, 0.5],
                "image_std": [0.5, 0.5, 0.5],
            },
        ),
    ],
)
def test_processor_configs_match_the_real_repos(tmp_path: Path, arch: str, expected: dict) -> None:
    folder = make_image_classifier(tmp_path / arch, arch)

    saved = json.loads((folder / "preprocessor_config.json").read_text())
    config = json.loads((folder / "config.json").read_text())

    assert expected.items() <= saved.items()
    assert config["architectures"][0].endswith("ForImageClassification")
    assert config["label2id"] == {label: i for i, label in enumerate(class_labels(5))}


def test_classifiers_are_tiny_and_deterministic(tmp_path: Path) -> None:
    from transformers import AutoModelForImageClassification

    first = make_image_classifier(tmp_path / "a", "vit", seed=3, image_size=32)
    again = make_image_classifier(tmp_path / "b", "vit", seed=3, image_size=32)
    other = make_image_classifier(tmp_path / "c", "vit", seed=4, image_size=32)

    weights = [(folder / "model.safetensors").read_bytes() for folder in (first, again, other)]
    assert weights[0] == weights[1] != weights[2]
    model = AutoModelForImageClassification.from_pretrained(first)
    assert 1_000 < model.num_parameters() < 100_000


def test_bin_weights_and_extra_formats(tmp_path: Path) -> None:
    bin_only = make_image_classifier(tmp_path / "bin", "resnet", weights_format="bin", image_size=32)
    everything = make_image_classifier(
        tmp_path / "all", "convnext", image_size=32, extra_formats=("bin", "flax", "tf", "onnx")
    )

    assert "model.safetensors" not in listing(bin_only)
    assert "pytorch_model.bin" in listing(bin_only)
    assert {p["label"] for p in classify(bin_only)} <= set(class_labels(5))
    assert set(EXTRA_FORMAT_FILES.values()) | {"model.safetensors"} <= listing(everything)
    assert classify(everything) == classify(everything)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"arch": "alexnet"},
        {"weights_format": "ckpt"},
        {"extra_formats": ("gguf",)},
        {"weights_format": "bin", "extra_formats": ("bin",)},
    ],
)
def test_invalid_classifier_options_are_refused(tmp_path: Path, kwargs: dict) -> None:
    with pytest.raises(ValueError):
        make_image_classifier(tmp_path / "model", **kwargs)


def test_labels_are_distinct_for_any_count() -> None:
    labels = class_labels(45)
    assert len(set(labels)) == 45
    assert labels[:2] == ["tabby cat", "golden retriever"]


def test_text_to_image_pipeline_generates_images_of_the_asked_size(tmp_path: Path) -> None:
    from diffusers import AutoPipelineForText2Image

    folder = make_text_to_image_pipeline(tmp_path / "sd")
    pipeline = AutoPipelineForText2Image.from_pretrained(folder)

    image = pipeline(
        "a photo of a cat",
        height=32,
        width=48,
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(0),
    ).images[0]

    assert image.size == (48, 32)
    assert json.loads((folder / "model_index.json").read_text())["_class_name"] == "StableDiffusionPipeline"
    assert not any(path.endswith(".fp16.safetensors") for path in listing(folder))


def test_text_to_image_pipeline_fp16_variant(tmp_path: Path) -> None:
    from diffusers import AutoPipelineForText2Image

    folder = make_text_to_image_pipeline(tmp_path / "sd", variant="fp16")

    variants = {path for path in listing(folder) if path.endswith(".fp16.safetensors")}
    assert variants == {
        "text_encoder/model.fp16.safetensors",
        "unet/diffusion_pytorch_model.fp16.safetensors",
        "vae/diffusion_pytorch_model.fp16.safetensors",
    }
    assert json.loads((folder / "text_encoder" / "config.json").read_text())["dtype"] == "float32"
    pipeline = AutoPipelineForText2Image.from_pretrained(folder, variant="fp16", dtype=torch.float16)
    assert pipeline.unet.dtype == torch.float16
    with pytest.raises(ValueError):
        make_text_to_image_pipeline(tmp_path / "bad", variant="bf16")  # type: ignore[arg-type]
