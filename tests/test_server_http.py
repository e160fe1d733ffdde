"""`python -m serve` over real HTTP: input formats, answers equal to transformers' pipeline, errors, auth.

The model is a tiny ResNet published on the local Hub, downloaded into a fresh HF cache, then served with
HF_HUB_OFFLINE=1 while HF_ENDPOINT still points at the Hub, so any network attempt would be recorded.
"""

from __future__ import annotations

import base64
import io
import json
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from huggingface_hub import InferenceClient
from PIL import Image
from transformers import pipeline

from tests.fixtures import images
from tests.fixtures.hub import HubServer, offline_cache
from tests.fixtures.servers import ServerProcess

REPO = "bake-tests/tiny-resnet"
API_KEY = "s3cret-test-key-0123456789"
NUM_LABELS = 5


class Served:
    """A running server, the model it serves and the reference pipeline to compare against."""

    def __init__(self, server: ServerProcess, sha: str, snapshot: Path, hub: HubServer) -> None:
        self.server = server
        self.url = server.url
        self.sha = sha
        self.hub = hub
        self.reference = pipeline("image-classification", model=str(snapshot))

    def expected(self, data: bytes, top_k: int = 5) -> list[dict[str, Any]]:
        image = Image.open(io.BytesIO(data))
        return self.reference(image, top_k=top_k)


def start_served(
    hub: HubServer, folder: Path, tmp_path: Path, extra_env: dict[str, str] | None = None
) -> Iterator[Served]:
    sha, snapshot, base_env = offline_cache(hub, REPO, folder, tmp_path)
    env = {
        **base_env,
        "BAKE_MAX_BATCH_SIZE": "4",
        "BAKE_MAX_WAIT_MS": "20",
        "BAKE_MAX_BODY_BYTES": "3000000",
        "BAKE_MAX_IMAGE_PIXELS": "20000000",
        **(extra_env or {}),
    }
    hub.clear_requests()
    with ServerProcess(env, tmp_path / "server.log") as server:
        yield Served(server, sha, snapshot, hub)


@pytest.fixture(scope="module")
def served(
    hub: HubServer, tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    yield from start_served(hub, tiny_models["resnet"], tmp_path_factory.mktemp("served"))


@pytest.fixture(scope="module")
def secured(
    hub: HubServer, tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    yield from start_served(
        hub, tiny_models["resnet"], tmp_path_factory.mktemp("secured"), {"BAKE_API_KEY": API_KEY}
    )


def assert_same_scores(actual: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    assert [item["label"] for item in actual] == [item["label"] for item in expected]
    for got, want in zip(actual, expected):
        assert got["score"] == pytest.approx(want["score"], abs=1e-4)


PHOTO = images.photo(160, 120)


def test_serving_offline_never_touches_the_network(served: Served) -> None:
    httpx.post(served.url + "/predict", content=PHOTO).raise_for_status()
    assert [request for request in served.hub.requests if REPO in request.path] == []


def test_info_names_the_model_revision_task_device_and_batching(served: Served) -> None:
    info = httpx.get(served.url + "/info").json()
    assert info["model"] == REPO and info["revision"] == "main" and info["commit_sha"] == served.sha
    assert info["task"] == "image-classification" and info["state"] == "ready"
    assert info["device"] == "cpu" and info["dtype"] == "float32"
    assert info["batching"] == {
        "max_batch_size": 4,
        "max_wait_ms": 20.0,
        "max_queue": 256,
        "buckets": [1, 2, 4],
    }
    assert info["task_details"]["num_labels"] == NUM_LABELS and info["auth"] is False


@pytest.mark.parametrize(
    "data",
    [PHOTO, images.photo(90, 140, fmt="PNG"), images.photo(100, 100, fmt="WEBP"), images.animated_gif()],
    ids=["jpeg", "png", "webp", "gif"],
)
@pytest.mark.parametrize("content_type", ["", "image/jpeg", "application/octet-stream"])
def test_raw_bytes_are_sniffed_whatever_the_content_type(
    served: Served, data: bytes, content_type: str
) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    response = httpx.post(served.url + "/predict", content=data, headers=headers)
    assert response.status_code == 200
    assert_same_scores(response.json(), served.expected(data))


def test_exif_rotated_photo_is_classified_upright(served: Served) -> None:
    data = images.exif_rotated_jpeg(96, 64, orientation=6)
    assert_same_scores(httpx.post(served.url + "/predict", content=data).json(), served.expected(data))


@pytest.mark.parametrize("field", ["image", "file", "upload"])
def test_multipart_upload_in_any_single_file_field(served: Served, field: str) -> None:
    response = httpx.post(served.url + "/predict", files={field: ("cat.jpg", PHOTO, "image/jpeg")})
    assert response.status_code == 200
    assert_same_scores(response.json(), served.expected(PHOTO))


def test_multipart_form_fields_are_parameters(served: Served) -> None:
    response = httpx.post(served.url + "/predict", files={"image": PHOTO}, data={"top_k": "2"})
    assert_same_scores(response.json(), served.expected(PHOTO, top_k=2))


@pytest.mark.parametrize("encoding", ["base64", "data-url"])
def test_json_inputs_with_parameters(served: Served, encoding: str) -> None:
    encoded = base64.b64encode(PHOTO).decode()
    inputs = encoded if encoding == "base64" else f"data:image/jpeg;base64,{encoded}"
    response = httpx.post(served.url + "/", json={"inputs": inputs, "parameters": {"top_k": 3}})
    assert response.status_code == 200
    assert_same_scores(response.json(), served.expected(PHOTO, top_k=3))


def test_top_k_above_the_number_of_labels_returns_every_label(served: Served) -> None:
    response = httpx.post(served.url + "/predict?top_k=50", content=PHOTO)
    assert len(response.json()) == NUM_LABELS
    assert_same_scores(response.json(), served.expected(PHOTO, top_k=50))


def test_function_to_apply_changes_the_scores_as_the_pipeline_does(served: Served) -> None:
    response = httpx.post(served.url + "/predict?function_to_apply=sigmoid", content=PHOTO).json()
    image = Image.open(io.BytesIO(PHOTO))
    assert_same_scores(response, served.reference(image, function_to_apply="sigmoid"))


def test_huggingface_inference_client_works_unchanged(served: Served) -> None:
    client = InferenceClient(model=served.url)
    plain = client.image_classification(PHOTO)
    assert_same_scores([item.__dict__ for item in plain], served.expected(PHOTO))
    with_params = client.image_classification(PHOTO, top_k=2)
    assert_same_scores([item.__dict__ for item in with_params], served.expected(PHOTO, top_k=2))


def test_concurrent_requests_are_batched_and_answered_like_single_ones(served: Served) -> None:
    photos = [images.photo(120 + 8 * i, 100, seed=i) for i in range(12)]
    before = metric(served, "bake_batch_size_sum"), metric(served, "bake_batch_size_count")
    with ThreadPoolExecutor(12) as pool:
        answers = list(
            pool.map(lambda data: httpx.post(served.url + "/predict", content=data).json(), photos)
        )
    for data, answer in zip(photos, answers):
        assert_same_scores(answer, served.expected(data))
    requests = metric(served, "bake_batch_size_sum") - before[0]
    batches = metric(served, "bake_batch_size_count") - before[1]
    assert requests == 12 and batches < 12, "concurrent requests must share batches"


BAD_INPUTS: list[tuple[str, dict[str, Any], int, str]] = [
    ("empty body", {"content": b""}, 400, "empty"),
    ("not an image", {"content": images.not_an_image()}, 415, "not an image"),
    ("truncated jpeg", {"content": images.truncated(images.photo(200, 150))}, 400, "truncated"),
    ("decompression bomb", {"content": images.decompression_bomb_png()}, 413, "pixels"),
    ("body over the cap", {"content": b"\xff" * 3_000_001}, 413, "limit"),
    ("invalid json", {"content": b"{nope", "headers": {"Content-Type": "application/json"}}, 400, "JSON"),
    ("unknown json field", {"json": {"inputs": "aGk=", "extra": 1}}, 422, "extra: unknown field"),
    ("unknown parameter", {"json": {"inputs": "aGk=", "parameters": {"top_p": 1}}}, 422, "top_p"),
    ("top_k zero", {"json": {"inputs": "aGk=", "parameters": {"top_k": 0}}}, 422, "top_k"),
    ("top_k float", {"json": {"inputs": "aGk=", "parameters": {"top_k": 1.5}}}, 422, "top_k"),
    ("top_k string", {"json": {"inputs": "aGk=", "parameters": {"top_k": "3"}}}, 422, "top_k"),
    ("inputs not a string", {"json": {"inputs": 12}}, 422, "inputs"),
    ("bad base64", {"json": {"inputs": "***"}}, 400, "base64"),
    ("url input", {"json": {"inputs": "https://example.com/cat.jpg"}}, 422, "URL"),
    ("query top_k word", {"content": PHOTO, "params": {"top_k": "many"}}, 422, "top_k"),
    (
        "multipart without file",
        {
            "content": b'--x\r\nContent-Disposition: form-data; name="top_k"\r\n\r\n2\r\n--x--\r\n',
            "headers": {"Content-Type": "multipart/form-data; boundary=x"},
        },
        400,
        "no file",
    ),
]


@pytest.mark.parametrize(
    ("case", "request_args", "status", "fragment"), BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS]
)
def test_bad_input_gets_a_clear_json_error_and_the_server_keeps_serving(
    served: Served, case: str, request_args: dict[str, Any], status: int, fragment: str
) -> None:
    response = httpx.post(served.url + "/predict", **request_args)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert fragment.lower() in response.json()["error"].lower()
    assert httpx.post(served.url + "/predict", content=PHOTO).status_code == 200


@pytest.mark.parametrize(("method", "path", "status"), [("GET", "/predict", 405), ("GET", "/nowhere", 404)])
def test_wrong_routes_answer_json_errors(served: Served, method: str, path: str, status: int) -> None:
    response = httpx.request(method, served.url + path)
    assert response.status_code == status and "error" in response.json()


def test_metrics_count_requests_latency_batches_queue_and_preprocessing(served: Served) -> None:
    httpx.post(served.url + "/predict", content=b"")
    text = httpx.get(served.url + "/metrics").text
    for name in (
        "bake_requests_total",
        "bake_request_duration_seconds_bucket",
        "bake_batch_size_bucket",
        "bake_batch_duration_seconds_bucket",
        "bake_queue_depth",
        "bake_queue_wait_seconds_bucket",
        "bake_preprocess_seconds_bucket",
        "bake_ready",
    ):
        assert name in text, name
    assert re.search(
        r'bake_requests_total\{path="/predict",protocol="huggingface",status="200"\} [1-9]', text
    )
    assert re.search(
        r'bake_requests_total\{path="/predict",protocol="huggingface",status="400"\} [1-9]', text
    )
    assert "bake_ready 1.0" in text


def test_openapi_describes_predict_and_docs_render(served: Served) -> None:
    schema = httpx.get(served.url + "/openapi.json").json()
    operation = schema["paths"]["/predict"]["post"]
    assert {"image/*", "multipart/form-data", "application/json"} <= set(operation["requestBody"]["content"])
    assert {"200", "400", "413", "415", "422", "503", "504"} <= set(operation["responses"])
    assert "/" in schema["paths"] and "/health" in schema["paths"] and "/info" in schema["paths"]
    docs = httpx.get(served.url + "/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


def test_without_the_key_only_probes_answer(secured: Served) -> None:
    assert httpx.get(secured.url + "/health").status_code == 200
    assert httpx.get(secured.url + "/ready").status_code == 200
    for method, path in (
        ("POST", "/predict"),
        ("POST", "/"),
        ("GET", "/info"),
        ("GET", "/metrics"),
        ("GET", "/docs"),
    ):
        response = httpx.request(method, secured.url + path, content=PHOTO if method == "POST" else None)
        assert response.status_code == 401, path
        assert (
            response.headers["WWW-Authenticate"] == "Bearer" and "bearer" in response.json()["error"].lower()
        )


def test_wrong_key_is_refused_and_right_key_is_served(secured: Served) -> None:
    wrong = httpx.post(secured.url + "/predict", content=PHOTO, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    right = httpx.post(
        secured.url + "/predict", content=PHOTO, headers={"Authorization": f"Bearer {API_KEY}"}
    )
    assert right.status_code == 200
    assert_same_scores(right.json(), secured.expected(PHOTO))
    client = InferenceClient(model=secured.url, token=API_KEY)
    assert len(client.image_classification(PHOTO, top_k=2)) == 2


def test_the_key_never_appears_in_responses_or_logs(secured: Served) -> None:
    auth = {"Authorization": f"Bearer {API_KEY}"}
    bodies = [
        httpx.get(secured.url + path, headers=auth).text for path in ("/info", "/metrics", "/openapi.json")
    ]
    bodies.append(httpx.post(secured.url + "/predict", content=b"", headers=auth).text)
    bodies.append(
        httpx.post(secured.url + "/predict", content=PHOTO, headers={"Authorization": "Bearer x"}).text
    )
    info = json.loads(bodies[0])
    assert info["auth"] is True
    for body in bodies:
        assert API_KEY not in body
    assert API_KEY not in secured.server.log()


def metric(served: Served, name: str) -> float:
    text = httpx.get(served.url + "/metrics").text
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert match, name
    return float(match.group(1))
