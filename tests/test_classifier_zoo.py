"""Every model type of transformers' image-classification mapping, served like the pipeline serves it.

For each type of the pinned transformers a tiny random-weight model with its real repo's processor config
(tests/fixtures/classifier_zoo.py) is served in process through the runtime's own task (load, warm-up,
prepare, run_batch, finish) and compared with `pipeline("image-classification")` on photo-like uploads,
alone and batched. The registry (serve/contract/models.py) must say what the runtime found: which inputs
the model takes and whether its forward pass was traced. Types bake refuses, or that need a package this
machine lacks, must be refused with the reason.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES

from serve.compile import run
from serve.contract import packages
from serve.contract.errors import UnsupportedModel
from serve.contract.models import IMAGE_CLASSIFIERS, TRANSFORMERS_VERSION, image_classifier
from serve.errors import ModelLoadError
from serve.tasks.image_classification import ClassificationParameters
from tests.fixtures.classifier_parity import BATCH_TOLERANCE, SCORE_TOLERANCE, load_task, measure
from tests.fixtures.classifier_zoo import CONFIG_ONLY, REPO_SHAPES, ZOO, config_only_repo, make_classifier

NEEDS_MISSING_PACKAGE = sorted(
    name for name, kind in IMAGE_CLASSIFIERS.items() if name in ZOO and packages.missing(kind.packages)
)
"""Zoo types whose extra packages this machine lacks (torchvision: PyPI's wheels need CUDA torch)."""
SERVED_HERE = sorted(set(ZOO) - set(NEEDS_MISSING_PACKAGE))


def test_the_registry_covers_the_pinned_transformers_mapping() -> None:
    import transformers

    assert transformers.__version__ == TRANSFORMERS_VERSION
    mapping = {
        name: classes if isinstance(classes, tuple) else (classes,)
        for name, classes in MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES.items()
    }
    assert {name: kind.architectures for name, kind in IMAGE_CLASSIFIERS.items()} == mapping


def test_the_zoo_has_a_model_or_a_config_of_every_type() -> None:
    assert set(ZOO) | set(CONFIG_ONLY) == set(IMAGE_CLASSIFIERS)
    assert not set(ZOO) & set(CONFIG_ONLY)
    refused = {name for name, kind in IMAGE_CLASSIFIERS.items() if kind.refusal}
    assert refused <= set(CONFIG_ONLY)
    assert len(refused) / len(IMAGE_CLASSIFIERS) <= 0.05  # the target: at least 95 % serve


@pytest.mark.parametrize("model_type", SERVED_HERE)
def test_served_scores_equal_the_pipeline_alone_and_batched(model_type: str, tmp_path: Path) -> None:
    folder = make_classifier(model_type, tmp_path / model_type)
    parity = measure(folder)
    kind = IMAGE_CLASSIFIERS[model_type]
    assert parity.score_difference <= SCORE_TOLERANCE, parity
    assert parity.batch_difference <= BATCH_TOLERANCE, parity
    assert parity.inputs == kind.inputs
    if kind.traceable:  # traced, unless this machine is so busy that tracing would not fit the warm-up budget
        assert parity.traced or parity.eager_reason.startswith("one forward pass takes"), parity.eager_reason
    else:
        assert not parity.traced and parity.eager_reason.startswith(f"{model_type} models cannot be traced")


@pytest.mark.parametrize("model_type", SERVED_HERE)
def test_the_archive_compiled_at_build_time_serves_like_the_pipeline(model_type: str, tmp_path: Path) -> None:
    """What a built image serves by default: the compile stage's archive (weights attached from the model's
    safetensors), or, for a model it refuses, today's path with the reason."""
    folder = make_classifier(model_type, tmp_path / model_type)
    report = run(folder, model=str(folder), commit_sha=None, max_batch_size=8, out=tmp_path / "compiled")
    kind = IMAGE_CLASSIFIERS[model_type]
    if not report.compiled:
        assert not kind.traceable or "not on the fast path" in report.reason, report.reason
        return
    parity = measure(folder, compiled=str(tmp_path / "compiled"))
    assert parity.load_path == "compiled" and parity.traced
    assert parity.score_difference <= SCORE_TOLERANCE, parity
    assert parity.batch_difference <= BATCH_TOLERANCE, parity


@pytest.mark.parametrize("model_type", NEEDS_MISSING_PACKAGE)
def test_a_type_whose_package_is_missing_is_a_load_error_naming_it(model_type: str, tmp_path: Path) -> None:
    folder = make_classifier(model_type, tmp_path / model_type)
    missing = packages.missing(IMAGE_CLASSIFIERS[model_type].packages)
    with pytest.raises(ModelLoadError, match=f"a {model_type} model needs {missing[0].name} .*bake build"):
        load_task(folder)


@pytest.mark.parametrize("model_type", sorted(CONFIG_ONLY))
def test_types_that_cannot_be_built_here_are_refused_or_need_a_package(
    model_type: str, tmp_path: Path
) -> None:
    kind = IMAGE_CLASSIFIERS[model_type]
    folder = config_only_repo(model_type, tmp_path / model_type)
    if kind.refusal:
        with pytest.raises(UnsupportedModel, match=f"{model_type} models are not served"):
            load_task(folder)
    else:  # timm: its package is installed in the image, not on this machine
        missing = packages.missing(kind.packages)
        assert missing
        with pytest.raises(ModelLoadError, match=missing[0].name):
            load_task(folder)


@pytest.mark.parametrize("shape", REPO_SHAPES, ids=[shape.name for shape in REPO_SHAPES])
def test_repo_shapes_serve_like_the_pipeline(shape: object, tmp_path: Path) -> None:
    folder = shape.make(tmp_path / shape.name)  # type: ignore[attr-defined]
    parity = measure(folder)
    assert parity.serves_with_parity, parity


def test_a_config_without_id2label_gives_label_n(tmp_path: Path) -> None:
    task = load_task(make_classifier("vit", tmp_path / "vit", labels=False))
    assert task.info().details["num_labels"] == 11
    scores = task.finish(
        task.run_batch([task.transform.example()], 1)[0], ClassificationParameters(top_k=100)
    )
    assert {item["label"] for item in scores} == {f"LABEL_{i}" for i in range(11)}


def test_an_architecture_outside_the_mapping_is_refused() -> None:
    with pytest.raises(UnsupportedModel, match="ViTForMaskedImageModeling is not an image classifier"):
        image_classifier({"model_type": "vit", "architectures": ["ViTForMaskedImageModeling"]})
    with pytest.raises(UnsupportedModel, match="'llama' has no image-classification class"):
        image_classifier({"model_type": "llama", "architectures": ["LlamaForImageClassification"]})


def test_a_model_whose_logits_are_not_numbers_at_warm_up_is_a_load_error(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    folder = make_classifier("resnet", tmp_path / "resnet")
    weights = load_file(folder / "model.safetensors")
    weights["classifier.1.bias"][0] = float("inf")
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match="logits on a warm-up image are not finite numbers"):
        load_task(folder)
