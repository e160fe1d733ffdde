"""Every protocol a bake server speaks, each with its own client from PyPI, against real servers (issue 11).

- Hugging Face Inference API: raw HTTP and `huggingface_hub.InferenceClient` (also in test_server_http.py).
- Replicate Cog: requests shaped as Cog's documentation defines them, compared with the shapes of Cog's own
  server (coglet, from the `cog` package on PyPI) run beside it, and a real webhook receiver.
- Open Inference Protocol v2: `tritonclient[http]` and KServe's `InferenceRESTClient`, JSON and binary.
- OpenAI images: the official `openai` client.

Requests of different protocols share the batcher (one batch holds requests of three protocols), give the
same answers for the same input, and answer errors (API key included) in their own shapes.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig
from openai import NotFoundError, OpenAI
from PIL import Image

from tests.fixtures import images
from tests.fixtures.hub import HubServer, offline_cache
from tests.fixtures.models import make_text_to_image_pipeline
from tests.fixtures.servers import ServerProcess, free_port

API_KEY = "protocol-test-key"
PHOTO = images.photo(160, 120)
SMALL = {"width": 32, "height": 32, "num_inference_steps": 2}


def data_url(data: bytes, media_type: str = "image/jpeg") -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode()}"


def metric(url: str, pattern: str) -> float:
    """The sum of the /metrics samples whose line matches `pattern` (a regular expression)."""
    text = httpx.get(url + "/metrics").text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if re.match(pattern, line))


class Webhooks:
    """A real HTTP server that records the JSON bodies POSTed to it."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.arrived = threading.Condition()
        received, arrived = self.received, self.arrived

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the name http.server calls
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with arrived:
                    received.append(body)
                    arrived.notify_all()
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, prediction_id: str, status: str, timeout: float = 60) -> list[dict[str, Any]]:
        """Every body received for `prediction_id`, once one with `status` has arrived."""
        deadline = time.monotonic() + timeout
        with self.arrived:
            while not any(b["id"] == prediction_id and b["status"] == status for b in self.received):
                assert self.arrived.wait(max(0.0, deadline - time.monotonic())), f"no {status} webhook"
            return [body for body in self.received if body["id"] == prediction_id]


@pytest.fixture(scope="module")
def classifier(
    hub: HubServer, tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    root = tmp_path_factory.mktemp("protocols-classifier")
    env = {
        **offline_cache(hub, "protocols/tiny-resnet", tiny_models["resnet"], root).env,
        "BAKE_MAX_BATCH_SIZE": "4",
        "BAKE_MAX_WAIT_MS": "400",
        "BAKE_MODEL_NAME": "resnet",
    }
    with ServerProcess(env, root / "server.log") as server:
        yield server.url


@pytest.fixture(scope="module")
def generator(hub: HubServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("protocols-t2i")
    pipeline = make_text_to_image_pipeline(root / "tiny-sd")
    env = {
        **offline_cache(hub, "protocols/tiny-sd", pipeline, root).env,
        "BAKE_MAX_BATCH_SIZE": "4",
        "BAKE_MAX_WAIT_MS": "400",
        "BAKE_MAX_STEPS": "5000",
        "BAKE_WEBHOOK_HOSTS": "127.0.0.1",
    }
    with ServerProcess(env, root / "server.log") as server:
        yield server.url


@pytest.fixture(scope="module")
def webhooks() -> Iterator[Webhooks]:
    receiver = Webhooks()
    yield receiver
    receiver.server.shutdown()


# ---- one prediction path: the same answer whichever protocol asks ----


def test_every_protocol_gives_the_same_scores_for_the_same_image(classifier: str) -> None:
    hf = httpx.post(classifier + "/predict", content=PHOTO, params={"top_k": 3}).json()
    cog = httpx.post(
        classifier + "/predictions", json={"input": {"image": data_url(PHOTO), "top_k": 3}}
    ).json()
    client = triton.InferenceServerClient(classifier.removeprefix("http://"))
    tensor = triton.InferInput("image", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([PHOTO], dtype=np.object_), binary_data=True)
    result = client.infer("resnet", [tensor], parameters={"top_k": 3})
    labels = [label.decode() for label in result.as_numpy("label")[0]]
    scores = result.as_numpy("score")[0]
    assert cog["status"] == "succeeded" and cog["output"] == hf
    assert labels == [item["label"] for item in hf]
    np.testing.assert_allclose(scores, [item["score"] for item in hf], rtol=1e-6)


def test_requests_of_three_protocols_share_one_batch(classifier: str) -> None:
    before = (metric(classifier, "bake_batch_size_count"), metric(classifier, "bake_batch_size_sum"))
    client = triton.InferenceServerClient(classifier.removeprefix("http://"))
    tensor = triton.InferInput("image", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([PHOTO], dtype=np.object_), binary_data=True)
    calls = [
        lambda: httpx.post(classifier + "/predict", content=PHOTO).json(),
        lambda: httpx.post(classifier + "/predictions", json={"input": {"image": data_url(PHOTO)}}).json(),
        lambda: client.infer("resnet", [tensor]).as_numpy("label"),
    ]
    with ThreadPoolExecutor(3) as pool:
        list(pool.map(lambda call: call(), calls))
    count = metric(classifier, "bake_batch_size_count") - before[0]
    rows = metric(classifier, "bake_batch_size_sum") - before[1]
    assert (count, rows) == (1, 3), "the three requests must have run as one batch"
    assert (
        metric(classifier, r'bake_requests_total\{path="/v2/models/\{model_name\}/infer",protocol="oip"') >= 1
    )
    assert metric(classifier, r'bake_requests_total\{path="/predictions",protocol="cog"') >= 1


# ---- Replicate Cog ----


def test_cog_health_check_and_discovery(classifier: str) -> None:
    health = httpx.get(classifier + "/health-check").json()
    assert health["status"] == "READY" and health["setup"]["status"] == "succeeded"
    assert health["setup"]["started_at"] <= health["setup"]["completed_at"]
    index = httpx.get(classifier + "/").json()
    assert index["predictions_url"] == "/predictions" and index["healthcheck_url"] == "/health-check"


def test_cog_validation_errors_and_failures_have_cog_s_shapes(classifier: str) -> None:
    bad = httpx.post(classifier + "/predictions", json={"input": {"image": data_url(PHOTO), "top_k": 0}})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "input", "top_k"]
    missing = httpx.post(classifier + "/predictions", json={"input": {}})
    assert missing.status_code == 422 and missing.json()["detail"][0]["loc"] == ["body", "input", "image"]
    broken = httpx.post(classifier + "/predictions", json={"input": {"image": data_url(b"not an image")}})
    assert broken.status_code == 422 and broken.json()["status"] == "failed" and broken.json()["error"]
    unknown = httpx.post(
        classifier + "/predictions", json={"input": {"image": data_url(PHOTO), "color": "red"}}
    )
    assert unknown.json()["status"] == "succeeded", "unknown input fields are dropped, as Cog does"
    url = httpx.post(classifier + "/predictions", json={"input": {"image": "http://example.com/cat.jpg"}})
    assert url.status_code == 422 and "BAKE_REMOTE_INPUT_HOSTS" in url.json()["error"]
    mismatch = httpx.put(
        classifier + "/predictions/abc", json={"id": "xyz", "input": {"image": data_url(PHOTO)}}
    )
    assert mismatch.status_code == 422 and mismatch.json()["detail"][0]["loc"] == ["body", "id"]
    assert httpx.post(classifier + "/predictions/nothing-here/cancel").status_code == 404


COGLET_PREDICTOR = """
from cog import BasePredictor, Input, Path

class Predictor(BasePredictor):
    def predict(
        self, image: Path = Input(description="image"), top_k: int = Input(default=5, ge=1)
    ) -> list[dict]:
        return [{"label": "cat", "score": 0.5}]
"""


def test_cog_responses_have_the_keys_and_types_of_cog_s_own_server(classifier: str, tmp_path: Path) -> None:
    """The same requests to coglet (Cog's server, from the `cog` package) and to bake: same shapes."""
    (tmp_path / "predict.py").write_text(COGLET_PREDICTOR)
    port = free_port()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    serve = f"import coglet; coglet.server.serve('predict.py:Predictor', host='127.0.0.1', port={port})"
    coglet = subprocess.Popen(
        [sys.executable, "-c", serve],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    reference = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(reference + "/health-check").json()["status"] == "READY":
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        body = {"input": {"image": data_url(PHOTO)}}
        for method, path, headers in (
            ("POST", "/predictions", {}),
            ("PUT", "/predictions/shape-check-1", {}),
            ("POST", "/predictions", {"Prefer": "respond-async"}),
        ):
            theirs = httpx.request(method, reference + path, json=body, headers=headers)
            ours = httpx.request(method, classifier + path, json=body, headers=headers)
            assert ours.status_code == theirs.status_code, (method, path, headers)
            their_keys = set(theirs.json())
            assert their_keys <= set(ours.json()), (method, path, their_keys - set(ours.json()))
            for key in their_keys - {"output"}:
                assert type(ours.json()[key]) is type(theirs.json()[key]), key
        their_health = httpx.get(reference + "/health-check").json()
        our_health = httpx.get(classifier + "/health-check").json()
        assert (
            set(their_health) - {"version"} <= set(our_health)
            and their_health["status"] == our_health["status"]
        )
        assert set(their_health["setup"]) <= set(our_health["setup"])
    finally:
        coglet.terminate()
        coglet.wait(10)


def test_cog_async_prediction_goes_to_the_webhook_with_the_events_asked_for(
    generator: str, webhooks: Webhooks
) -> None:
    body = {
        "id": "async-one",
        "input": {"prompt": "a red fox", "seed": 3, **SMALL},
        "webhook": webhooks.url,
        "webhook_events_filter": ["start", "completed"],
    }
    accepted = httpx.post(generator + "/predictions", json=body, headers={"Prefer": "respond-async"})
    assert accepted.status_code == 202 and accepted.json() == {"id": "async-one", "status": "starting"}
    received = webhooks.wait_for("async-one", "succeeded")
    assert [b["status"] for b in received] == ["processing", "succeeded"], "start and completed only"
    (output,) = received[-1]["output"]
    assert output.startswith("data:image/png;base64,") and received[-1]["metrics"]["predict_time"] > 0
    alone = httpx.post(
        generator + "/predict", json={"inputs": "a red fox", "parameters": {"seed": 3, **SMALL}}
    )
    assert base64.b64decode(output.split(",", 1)[1]) == alone.content, "the same image as the HF route"


def test_cog_cancel_stops_a_running_prediction_and_put_is_idempotent(
    generator: str, webhooks: Webhooks
) -> None:
    body = {
        "input": {"prompt": "a long one", "width": 32, "height": 32, "num_inference_steps": 4000},
        "webhook": webhooks.url,
    }
    first = httpx.put(generator + "/predictions/long-one", json=body, headers={"Prefer": "respond-async"})
    assert first.status_code == 202
    webhooks.wait_for("long-one", "processing")
    again = httpx.put(generator + "/predictions/long-one", json=body, headers={"Prefer": "respond-async"})
    assert (
        again.status_code == 202
        and again.json()["id"] == "long-one"
        and again.json()["status"] == "processing"
    )
    steps_before = metric(generator, "bake_inference_steps_total")
    assert httpx.post(generator + "/predictions/long-one/cancel").status_code == 200
    received = webhooks.wait_for("long-one", "canceled")
    assert received[-1]["status"] == "canceled" and "output" not in received[-1]
    time.sleep(0.5)
    assert metric(generator, "bake_inference_steps_total") - steps_before < 4000, "it stopped early"
    assert httpx.post(generator + "/predictions/long-one/cancel").status_code == 404, "it is gone"


# ---- Open Inference Protocol v2 ----


def test_oip_health_metadata_and_errors(classifier: str) -> None:
    client = triton.InferenceServerClient(classifier.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("resnet")
    metadata = client.get_model_metadata("resnet")
    assert metadata["name"] == "resnet" and metadata["inputs"][0] == {
        "name": "image",
        "datatype": "BYTES",
        "shape": [-1],
    }
    assert {output["name"] for output in metadata["outputs"]} == {"label", "score"}
    missing = httpx.get(classifier + "/v2/models/another")
    assert missing.status_code == 404 and "resnet" in missing.json()["error"]
    wrong = httpx.post(
        classifier + "/v2/models/resnet/infer",
        json={"inputs": [{"name": "image", "shape": [1], "datatype": "FP32", "data": [1]}]},
    )
    assert wrong.status_code == 400 and "BYTES" in wrong.json()["error"]


def test_oip_json_with_base64_and_a_batch_in_one_request(classifier: str) -> None:
    pictures = [images.photo(160, 120, seed=seed) for seed in range(3)]
    request = {
        "inputs": [
            {
                "name": "image",
                "shape": [3],
                "datatype": "BYTES",
                "data": [base64.b64encode(p).decode() for p in pictures],
            }
        ],
        "parameters": {"top_k": 2},
    }
    answer = httpx.post(classifier + "/v2/models/resnet/infer", json=request).json()
    label, score = answer["outputs"]
    assert label["shape"] == [3, 2] and score["datatype"] == "FP32" and len(score["data"]) == 6
    for index, picture in enumerate(pictures):
        expected = httpx.post(classifier + "/predict", content=picture, params={"top_k": 2}).json()
        assert label["data"][2 * index : 2 * index + 2] == [item["label"] for item in expected]


def test_kserve_rest_client_in_json_and_binary(classifier: str) -> None:
    expected = httpx.post(classifier + "/predict", content=PHOTO).json()

    async def infer(binary: bool) -> Any:
        client = InferenceRESTClient(RESTConfig(protocol="v2", retries=0))
        tensor = InferInput(name="image", shape=[1], datatype="BYTES")
        if binary:
            tensor.set_data_from_numpy(np.array([PHOTO], dtype=np.object_), binary_data=True)
        else:
            tensor.set_data_from_numpy(
                np.array([base64.b64encode(PHOTO).decode()], dtype=np.object_), binary_data=False
            )
        request = InferRequest(
            model_name="resnet", infer_inputs=[tensor], parameters={"binary_data_output": binary}
        )
        try:
            return await client.infer(classifier, request, model_name="resnet")
        finally:
            await client.close()

    for binary in (False, True):
        response = asyncio.run(infer(binary))
        labels = [
            item.decode() if isinstance(item, bytes) else item for item in response.outputs[0].as_numpy()[0]
        ]
        assert labels == [item["label"] for item in expected], binary


def test_oip_text_to_image_prompt_in_image_and_seed_out(generator: str) -> None:
    client = triton.InferenceServerClient(generator.removeprefix("http://"))
    prompts = triton.InferInput("prompt", [2], "BYTES")
    prompts.set_data_from_numpy(np.array([b"a red fox", b"a boat"], dtype=np.object_), binary_data=True)
    result = client.infer(
        client.get_model_metadata("tiny-sd")["name"],
        [prompts],
        parameters={"seed": 3, **SMALL},
        outputs=[
            triton.InferRequestedOutput("image", binary_data=True),
            triton.InferRequestedOutput("seed", binary_data=False),
        ],
    )
    pngs = result.as_numpy("image")
    assert len(pngs) == 2 and list(result.as_numpy("seed")) == [3, 3]
    alone = httpx.post(
        generator + "/predict", json={"inputs": "a red fox", "parameters": {"seed": 3, **SMALL}}
    )
    assert bytes(pngs[0]) == alone.content


# ---- OpenAI images ----


def test_openai_client_generates_images_equal_to_the_hf_route(generator: str) -> None:
    client = OpenAI(base_url=generator + "/v1", api_key="unused")
    assert [model.id for model in client.models.list()] == ["tiny-sd"]
    result = client.images.generate(
        prompt="a red fox",
        n=2,
        size="32x32",
        response_format="b64_json",
        extra_body={"seed": 11, "num_inference_steps": 2},
    )
    assert len(result.data) == 2 and result.created > 0
    first = base64.b64decode(result.data[0].b64_json)
    assert Image.open(io.BytesIO(first)).size == (32, 32)
    alone = httpx.post(
        generator + "/predict", json={"inputs": "a red fox", "parameters": {"seed": 11, **SMALL}}
    )
    assert first == alone.content
    second = httpx.post(
        generator + "/predict", json={"inputs": "a red fox", "parameters": {"seed": 12, **SMALL}}
    )
    assert base64.b64decode(result.data[1].b64_json) == second.content, "image j is seed + j"


def test_openai_errors_have_openai_s_shape(generator: str, classifier: str) -> None:
    client = OpenAI(base_url=generator + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(NotFoundError):
        client.images.generate(prompt="x", model="dall-e-3")
    bad = httpx.post(generator + "/v1/images/generations", json={"prompt": "x", "size": "big"})
    assert bad.status_code == 422 and bad.json()["error"]["param"] == "size"
    assert bad.json()["error"]["type"] == "invalid_request_error"
    not_images = httpx.post(classifier + "/v1/images/generations", json={"prompt": "x"})
    assert not_images.status_code == 404 and "makes no images" in not_images.json()["error"]["message"]


# ---- Hugging Face parameters that used to be refused ----


def test_hf_scheduler_and_target_size(generator: str) -> None:
    info = httpx.get(generator + "/info").json()
    schedulers = info["task_details"]["schedulers"]
    assert "DDIMScheduler" in schedulers and info["task_details"]["scheduler"] in schedulers
    euler = httpx.post(generator + "/predict", json={"inputs": "a fox", "parameters": {"seed": 1, **SMALL}})
    ddim = httpx.post(
        generator + "/predict",
        json={"inputs": "a fox", "parameters": {"seed": 1, "scheduler": "DDIMScheduler", **SMALL}},
    )
    assert ddim.status_code == 200 and ddim.content != euler.content
    unknown = httpx.post(
        generator + "/predict", json={"inputs": "a fox", "parameters": {"scheduler": "Nope"}}
    )
    assert unknown.status_code == 422 and "DDIMScheduler" in unknown.json()["error"]
    sized = httpx.post(
        generator + "/predict",
        json={
            "inputs": "a fox",
            "parameters": {"seed": 1, "num_inference_steps": 2, "target_size": {"width": 48, "height": 32}},
        },
    )
    assert Image.open(io.BytesIO(sized.content)).size == (48, 32)


# ---- one API key for every protocol, answered in each one's shape ----


@pytest.fixture(scope="module")
def secured(
    hub: HubServer, tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    root = tmp_path_factory.mktemp("protocols-secured")
    env = {
        **offline_cache(hub, "protocols/secured", tiny_models["resnet"], root).env,
        "BAKE_API_KEY": f"old-key,{API_KEY}",
        "BAKE_MODEL_NAME": "resnet",
    }
    with ServerProcess(env, root / "server.log") as server:
        yield server.url


def test_the_api_key_guards_every_protocol_in_its_own_error_shape(secured: str) -> None:
    cog = httpx.post(secured + "/predictions", json={"input": {"image": data_url(PHOTO)}})
    assert cog.status_code == 401 and cog.json()["status"] == "failed"
    oip = httpx.post(secured + "/v2/models/resnet/infer", json={"inputs": []})
    assert oip.status_code == 401 and isinstance(oip.json()["error"], str)
    openai = httpx.get(secured + "/v1/models")
    assert openai.status_code == 401 and openai.json()["error"]["type"] == "authentication_error"
    assert (
        httpx.get(secured + "/health").status_code == 200 and httpx.get(secured + "/ready").status_code == 200
    )
    for key in ("old-key", API_KEY):
        headers = {"Authorization": f"Bearer {key}"}
        assert httpx.get(secured + "/v1/models", headers=headers).status_code == 200, "both keys (rotation)"
    client = triton.InferenceServerClient(secured.removeprefix("http://"))
    with pytest.raises(Exception, match="401|bearer"):
        client.get_model_metadata("resnet")
    assert (
        client.get_model_metadata("resnet", headers={"Authorization": f"Bearer {API_KEY}"})["name"]
        == "resnet"
    )


def test_info_and_openapi_list_the_protocols(classifier: str) -> None:
    info = httpx.get(classifier + "/info").json()
    assert set(info["protocols"]) == {"huggingface", "cog", "oip", "openai"}
    assert (
        "/predictions" in info["protocols"]["cog"]
        and "/v2/models/{model_name}/infer" in info["protocols"]["oip"]
    )
    schema = httpx.get(classifier + "/openapi.json").json()
    assert {"Input", "Output", "PredictionRequest", "PredictionResponse"} <= set(
        schema["components"]["schemas"]
    )
    assert schema["components"]["schemas"]["Input"]["required"] == ["image"]
    for path in ("/predict", "/predictions", "/v2/models/{model_name}/infer", "/v1/images/generations"):
        assert path in schema["paths"], path
