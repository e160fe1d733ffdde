"""The image-classification task in process: parity with transformers' pipeline, and batching invariance."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from transformers import pipeline

from serve.contract.settings import Settings
from serve.device import choose_placement
from serve.model_source import locate_model
from serve.tasks.image_classification import ClassificationParameters, ImageClassification
from tests.fixtures import images

ARCHITECTURES = ("resnet", "convnext", "vit")
DEFAULT = ClassificationParameters()
PICTURES = {
    "landscape-jpeg": images.photo(200, 150),
    "portrait-png": images.photo(90, 160, seed=3, fmt="PNG"),
    "tiny-webp": images.photo(40, 30, seed=4, fmt="WEBP"),
    "exif-rotated": images.exif_rotated_jpeg(120, 80, orientation=8),
    "grayscale": images.grayscale_png(70, 70),
}


def load_task(folder: Path, *, torchscript: bool, max_batch_size: int = 4) -> ImageClassification:
    settings = Settings(model=str(folder), torchscript=torchscript, max_batch_size=max_batch_size)
    task = ImageClassification(
        locate_model(str(folder), "main", offline=True), settings, choose_placement("cpu", "float32")
    )
    task.load()
    task.optimize([1, 2, 4])
    return task


@pytest.fixture(scope="module", params=ARCHITECTURES)
def model(request: pytest.FixtureRequest, tiny_models: dict[str, Path]) -> tuple[str, Path]:
    return request.param, tiny_models[request.param]


@pytest.mark.parametrize("torchscript", [True, False], ids=["traced", "eager"])
def test_scores_equal_the_pipeline_within_1e_4(model: tuple[str, Path], torchscript: bool) -> None:
    _, folder = model
    task = load_task(folder, torchscript=torchscript)
    assert task.info().details["torchscript"] is torchscript
    reference = pipeline("image-classification", model=str(folder))
    params = ClassificationParameters(top_k=10)
    for name, data in PICTURES.items():
        prepared = task.prepare(data, params)
        (logits,) = task.run_batch([prepared.sample], 1)
        served = task.finish(logits, params)
        expected = reference(Image.open(io.BytesIO(data)), top_k=10)
        assert [item["label"] for item in served] == [item["label"] for item in expected], name
        np.testing.assert_allclose(
            [item["score"] for item in served], [item["score"] for item in expected], atol=1e-4, err_msg=name
        )


@pytest.mark.parametrize("torchscript", [True, False], ids=["traced", "eager"])
def test_batched_results_equal_unbatched_results(model: tuple[str, Path], torchscript: bool) -> None:
    _, folder = model
    task = load_task(folder, torchscript=torchscript)
    samples = [task.prepare(images.photo(160, 120, seed=seed), DEFAULT).sample for seed in range(3)]
    alone = [task.run_batch([sample], 1)[0] for sample in samples]
    together = task.run_batch(samples, 4)  # three real rows padded to the bucket of four
    assert len(together) == 3
    for single, batched in zip(alone, together):
        np.testing.assert_allclose(batched, single, rtol=1e-5, atol=1e-5)


def test_the_traced_forward_matches_eager_on_real_images(model: tuple[str, Path]) -> None:
    _, folder = model
    traced, eager = load_task(folder, torchscript=True), load_task(folder, torchscript=False)
    samples = [traced.prepare(data, DEFAULT).sample for data in PICTURES.values()][:4]
    np.testing.assert_allclose(
        traced.run_batch(samples, 4), eager.run_batch(samples, 4), rtol=1e-4, atol=1e-5
    )


def test_warmup_samples_have_the_served_shape(model: tuple[str, Path]) -> None:
    _, folder = model
    task = load_task(folder, torchscript=False)
    (warm,) = task.warmup_samples()
    real = task.prepare(images.photo(300, 200), DEFAULT)
    assert warm.batch_key == real.batch_key == real.sample.shape
