"""Model types whose serving differs from the common path, over real HTTP (`python -m serve`).

The in-process parity of every type is tests/test_classifier_zoo.py; here a representative handful runs
through the whole server: SigLIP 2 (three processor outputs, eager by registry), ImageGPT (input_ids),
TextNet (an input shape per aspect ratio, eager by measurement), each answering like the pipeline, alone and
in concurrent batches, and saying in /info how it runs. A model whose scores overflow on one image answers
that image with a 500 naming the reason, counted in /metrics, while its batch-mates get their answers.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from transformers import pipeline

from serve.contract.models import IMAGE_CLASSIFIERS
from tests.fixtures import images
from tests.fixtures.classifier_parity import PHOTOS, SCORE_TOLERANCE
from tests.fixtures.classifier_zoo import NUM_LABELS, make_classifier, make_overflowing_classifier
from tests.fixtures.servers import ServerProcess

HTTP_TYPES = ("siglip2", "imagegpt", "textnet")
TRIGGER = Image.new("RGB", (64, 64), (255, 255, 255))


def serve(folder: Path, log: Path) -> ServerProcess:
    env = {
        "BAKE_MODEL": str(folder),
        "HF_HUB_OFFLINE": "1",
        "BAKE_MAX_BATCH_SIZE": "4",
        "BAKE_MAX_WAIT_MS": "100",
    }
    return ServerProcess(env, log).start(timeout=180)


def classify(url: str, data: bytes) -> httpx.Response:
    body = {"inputs": base64.b64encode(data).decode(), "parameters": {"top_k": NUM_LABELS}}
    return httpx.post(url + "/predict", json=body, timeout=60)


def by_label(answer: list[dict[str, Any]]) -> dict[str, float]:
    return {item["label"]: item["score"] for item in answer}


def assert_scores_close(got: list[dict[str, Any]], expected: list[dict[str, Any]], tolerance: float) -> None:
    ours, theirs = by_label(got), by_label(expected)
    assert ours.keys() == theirs.keys()
    assert max(abs(ours[label] - theirs[label]) for label in theirs) <= tolerance


@pytest.fixture(scope="module", params=HTTP_TYPES)
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str, Path]]:
    root = tmp_path_factory.mktemp(request.param)
    folder = make_classifier(request.param, root / "model")
    server = serve(folder, root / "server.log")
    try:
        yield request.param, server.url, folder
    finally:
        server.stop()


def test_answers_equal_the_pipeline_alone_and_in_concurrent_batches(
    served: tuple[str, str, Path], tmp_path: Path
) -> None:
    _, url, folder = served
    reference = pipeline("image-classification", model=str(folder))
    alone = {}
    for name, data in PHOTOS.items():
        response = classify(url, data)
        assert response.status_code == 200, response.text
        alone[name] = response.json()
        (tmp_path / name).write_bytes(data)
        assert_scores_close(alone[name], reference(str(tmp_path / name), top_k=NUM_LABELS), SCORE_TOLERANCE)
    names = list(PHOTOS) * 3
    with ThreadPoolExecutor(len(names)) as pool:
        answers = list(pool.map(lambda name: classify(url, PHOTOS[name]), names))
    for name, response in zip(names, answers, strict=True):
        assert response.status_code == 200, response.text
        assert_scores_close(response.json(), alone[name], 1e-5)
    metrics = httpx.get(url + "/metrics").text
    batched = re.search(r'^bake_batch_size_bucket\{le="1.0"\} (\S+)$', metrics, re.MULTILINE)
    total = re.search(r"^bake_batch_size_count (\S+)$", metrics, re.MULTILINE)
    assert batched and total and float(batched.group(1)) < float(total.group(1))  # some batches held several


def test_info_says_how_the_model_runs(served: tuple[str, str, Path]) -> None:
    model_type, url, _ = served
    details = httpx.get(url + "/info").json()["task_details"]
    kind = IMAGE_CLASSIFIERS[model_type]
    assert details["model_type"] == model_type
    assert details["inputs"] == list(kind.inputs)
    assert details["torchscript"] is kind.traceable
    assert (details["eager_reason"] is None) is kind.traceable


@pytest.fixture(scope="module")
def overflowing(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("overflow")
    server = serve(make_overflowing_classifier(root / "model", TRIGGER), root / "server.log")
    try:
        yield server.url
    finally:
        server.stop()


def test_scores_that_are_not_numbers_are_a_500_with_the_reason_and_batch_mates_are_answered(
    overflowing: str,
) -> None:
    trigger = images.encode(TRIGGER, "PNG")
    uploads = [trigger, *PHOTOS.values(), trigger]
    with ThreadPoolExecutor(len(uploads)) as pool:
        answers = list(pool.map(lambda data: classify(overflowing, data), uploads))
    statuses = [response.status_code for response in answers]
    assert statuses == [500, 200, 200, 200, 200, 500]
    assert "not finite numbers" in answers[0].json()["error"]
    assert all(len(response.json()) == NUM_LABELS for response in answers[1:-1])
    assert classify(overflowing, images.photo(64, 48)).status_code == 200  # and it keeps serving
    metrics = httpx.get(overflowing + "/metrics").text
    pattern = r'^bake_requests_total\{path="/predict",protocol="huggingface",status="500"\} 2\.0$'
    assert re.search(pattern, metrics, re.MULTILINE)
