"""The model types bake serves for image classification, and what each one needs.

One entry per model type of transformers' `AutoModelForImageClassification` mapping (transformers
`TRANSFORMERS_VERSION`; `tests/test_classifier_zoo.py` keeps the two equal): the classes of the mapping, the
packages the image needs beyond the runtime's own (`serve.contract.packages`: `bake build` installs them), the
processor outputs the model's forward pass takes, whether its forward pass can be traced, and, for the types
bake cannot serve, why (`UnsupportedModel`, one line with the fix). `bake build` consults it before building
anything; the runtime consults it when it loads a model. docs/models.md shows it next to what the tests
measured for each type.

Standard library only: the host CLI imports this module.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from serve.contract.errors import UnsupportedModel
from serve.contract.packages import TIMM, TORCHVISION, Package

TRANSFORMERS_VERSION = "5.23.0"
"""The transformers release whose image-classification mapping this registry covers."""

TIMM_WRAPPER = "timm_wrapper"
"""The model type transformers gives timm checkpoints (config.json with `pretrained_cfg`, no `model_type`)."""


@dataclass(frozen=True)
class ModelType:
    """What bake knows about one model type."""

    name: str
    """transformers' `model_type`, as config.json says it."""
    architectures: tuple[str, ...]
    """The image-classification classes of this type (config.json's `architectures` names one of them)."""
    packages: tuple[Package, ...] = ()
    """Packages the image needs beyond the runtime's own; `bake build` installs them."""
    inputs: tuple[str, ...] = ("pixel_values",)
    """The image processor's outputs that the model's forward pass takes."""
    traceable: bool = True
    """Whether a traced forward pass can be right for every input (the runtime still checks it at warm-up)."""
    notes: str = ""
    """Why not traceable, or anything else a user should know about this type."""
    refusal: str = ""
    """Why bake cannot serve this type; empty when it can."""
    fix: str = ""
    """What a user can do instead, for a refused type."""


_SIGLIP2_INPUTS = ("pixel_values", "pixel_attention_mask", "spatial_shapes")
_NATTEN = (
    "its neighbourhood attention needs natten<0.20 (transformers calls natten2dqkrpb, removed in 0.20), "
    "which has no wheel for the image's torch and compiles from source only with a C++ toolchain"
)

IMAGE_CLASSIFIERS: dict[str, ModelType] = {
    kind.name: kind
    for kind in (
        ModelType("beit", ("BeitForImageClassification",)),
        ModelType("bit", ("BitForImageClassification",)),
        ModelType("clip", ("CLIPForImageClassification",)),
        ModelType("convnext", ("ConvNextForImageClassification",)),
        ModelType("convnextv2", ("ConvNextV2ForImageClassification",)),
        ModelType("cvt", ("CvtForImageClassification",)),
        ModelType("data2vec-vision", ("Data2VecVisionForImageClassification",)),
        ModelType("deit", ("DeiTForImageClassification", "DeiTForImageClassificationWithTeacher")),
        ModelType(
            "dinat",
            ("DinatForImageClassification",),
            refusal=_NATTEN,
            fix="no build option adds it; serve a DINOv2, Swin or ConvNeXt classifier instead",
        ),
        ModelType("dinov2", ("Dinov2ForImageClassification",)),
        ModelType("dinov2_with_registers", ("Dinov2WithRegistersForImageClassification",)),
        ModelType("donut-swin", ("DonutSwinForImageClassification",)),
        ModelType("efficientnet", ("EfficientNetForImageClassification",)),
        ModelType("focalnet", ("FocalNetForImageClassification",)),
        ModelType("hgnet_v2", ("HGNetV2ForImageClassification",)),
        ModelType("hiera", ("HieraForImageClassification",)),
        ModelType("ijepa", ("IJepaForImageClassification",)),
        ModelType(
            "imagegpt",
            ("ImageGPTForImageClassification",),
            inputs=("input_ids",),
            notes="the processor quantises pixels to colour clusters: the model reads input_ids",
        ),
        ModelType("levit", ("LevitForImageClassification", "LevitForImageClassificationWithTeacher")),
        ModelType("metaclip_2", ("MetaClip2ForImageClassification",)),
        ModelType("mobilenet_v1", ("MobileNetV1ForImageClassification",)),
        ModelType("mobilenet_v2", ("MobileNetV2ForImageClassification",)),
        ModelType("mobilevit", ("MobileViTForImageClassification",)),
        ModelType("mobilevitv2", ("MobileViTV2ForImageClassification",)),
        ModelType(
            "perceiver",
            (
                "PerceiverForImageClassificationLearned",
                "PerceiverForImageClassificationFourier",
                "PerceiverForImageClassificationConvProcessing",
            ),
        ),
        ModelType("poolformer", ("PoolFormerForImageClassification",)),
        ModelType(
            "pp_lcnet",
            ("PPLCNetForImageClassification",),
            packages=(TORCHVISION,),
            notes="its image processor exists for the torchvision backend only",
        ),
        ModelType("pvt", ("PvtForImageClassification",)),
        ModelType("pvt_v2", ("PvtV2ForImageClassification",)),
        ModelType("regnet", ("RegNetForImageClassification",)),
        ModelType("resnet", ("ResNetForImageClassification",)),
        ModelType("segformer", ("SegformerForImageClassification",)),
        ModelType(
            "shieldgemma2",
            ("ShieldGemma2ForImageClassification",),
            refusal="it is a vision-language safety checker that reads a policy prompt with the image "
            "(a Gemma 3 processor and tokenizer), not an image-only classifier",
            fix="bake serves image-only classifiers; serve ShieldGemma 2 with an image-text-to-text server",
        ),
        ModelType("siglip", ("SiglipForImageClassification",)),
        ModelType(
            "siglip2",
            ("Siglip2ForImageClassification",),
            inputs=_SIGLIP2_INPUTS,
            traceable=False,
            notes="NaFlex: position embeddings are resized per image from spatial_shapes",
        ),
        ModelType("swiftformer", ("SwiftFormerForImageClassification",)),
        ModelType("swin", ("SwinForImageClassification",)),
        ModelType("swinv2", ("Swinv2ForImageClassification",)),
        ModelType(
            "textnet",
            ("TextNetForImageClassification",),
            traceable=False,
            notes="the processor keeps the aspect ratio: the input shape varies per image",
        ),
        ModelType(
            TIMM_WRAPPER,
            ("TimmWrapperForImageClassification",),
            packages=TIMM,
            notes="timm checkpoints (config.json with pretrained_cfg), through transformers' TimmWrapper",
        ),
        ModelType("vit", ("ViTForImageClassification",)),
        ModelType("vit_msn", ("ViTMSNForImageClassification",)),
    )
}
"""Every model type of the image-classification mapping, by `model_type`."""

ARCHITECTURES = frozenset(name for kind in IMAGE_CLASSIFIERS.values() for name in kind.architectures)
"""Every image-classification class of the mapping."""


def model_type_of(config: Mapping[str, Any]) -> str | None:
    """The `model_type` of a config.json (`TIMM_WRAPPER` for a timm checkpoint), None if it names none."""
    model_type = config.get("model_type")
    if isinstance(model_type, str) and model_type:
        return model_type
    return TIMM_WRAPPER if "pretrained_cfg" in config else None


def is_image_classifier(config: Mapping[str, Any]) -> bool:
    """Whether config.json describes an image classifier (one bake may or may not serve)."""
    architectures = config.get("architectures") or []
    return model_type_of(config) == TIMM_WRAPPER or any(
        name in ARCHITECTURES or name.endswith("ForImageClassification") for name in architectures
    )


def image_classifier(config: Mapping[str, Any]) -> ModelType:
    """The registry entry of the image classifier config.json describes, if bake serves it.

    Raises `UnsupportedModel` for a config without a model type, a type without an image-classification
    class, a refused type, and `architectures` naming a class that is not an image classifier of its type.
    """
    model_type = model_type_of(config)
    if model_type is None:
        raise UnsupportedModel(
            "config.json names no model_type", "is this a transformers (or timm) image classifier?"
        )
    kind = IMAGE_CLASSIFIERS.get(model_type)
    if kind is None:
        raise UnsupportedModel(
            f"model type {model_type!r} has no image-classification class in transformers "
            f"{TRANSFORMERS_VERSION}",
            "see docs/models.md for the types bake serves",
        )
    if kind.refusal:
        raise UnsupportedModel(f"{model_type} models are not served: {kind.refusal}", kind.fix)
    architectures = [name for name in config.get("architectures") or [] if isinstance(name, str)]
    if architectures and not set(architectures) & set(kind.architectures):
        raise UnsupportedModel(
            f"{', '.join(architectures)} is not an image classifier of transformers' {model_type} type",
            f"bake serves {model_type} models as {' or '.join(kind.architectures)}",
        )
    return kind


def classifier_configs(kind: ModelType) -> tuple[str, ...]:
    """The JSON files a classifier of `kind` is loaded from (timm keeps its processor in config.json)."""
    return ("config.json",) if kind.name == TIMM_WRAPPER else ("config.json", "preprocessor_config.json")
