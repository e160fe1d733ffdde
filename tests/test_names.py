"""Default names are valid on every target, stable, and distinct for models of the same name (issue 9)."""

from __future__ import annotations

import pytest

from bake.errors import ConfigError
from bake.launch.kubernetes import KubernetesOptions
from bake.launch.names import MAX_LENGTH, check_name, default_name
from fly.spec import FlyServiceSpec

MODELS = [
    "Falconsai/nsfw_image_detection",
    "google/vit-base-patch16-224",
    "facebook/dinov2-small-imagenet1k-1-layer",
    "timm/resnet50.a1_in1k",
    "PixArt-alpha/PixArt-XL-2-512x512",
    "/home/me/models/My Fine-Tuned ViT (v2)/",
    "org/" + "very-long-name-" * 8,
    "org/___",
]


@pytest.mark.parametrize("model", MODELS)
def test_the_default_name_is_valid_on_every_target(model: str) -> None:
    name = default_name(model)
    assert len(name) <= MAX_LENGTH
    for target in ("local", "docker", "fly", "kubernetes"):
        check_name(name, target)
    FlyServiceSpec(
        app=name, image="i", max_batch_size=1, max_queue=1, warmup_seconds=0, drain_seconds=0, weights_bytes=0
    )
    KubernetesOptions(name=name, kserve=True)


def test_the_default_name_is_stable_and_tells_namesakes_apart() -> None:
    assert default_name("Falconsai/nsfw_image_detection") == default_name("Falconsai/nsfw_image_detection")
    assert default_name("Falconsai/nsfw_image_detection").startswith("bake-nsfw-image-detection-")
    assert default_name("a/resnet-50") != default_name("b/resnet-50")


@pytest.mark.parametrize(
    ("name", "target"),
    [("nsfw_image_detection", "fly"), ("My-App", "kubernetes"), ("-x", "local"), ("a.b", "kubernetes")],
)
def test_a_given_name_is_checked_for_its_target(name: str, target: str) -> None:
    with pytest.raises(ConfigError, match="invalid"):
        check_name(name, target)
