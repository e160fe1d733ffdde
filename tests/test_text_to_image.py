"""Text-to-image: the task in-process, and `python -m serve` over real HTTP.

The model is the tiny random Stable Diffusion pipeline of `tests.fixtures.models` (with a safety checker, as
SD 1.x repos have, that must be left out). Over HTTP it is published on the local Hub, downloaded into a
fresh HF cache and served with HF_HUB_OFFLINE=1. Images are 32x32 or 48x32 in 2 steps: milliseconds each.
"""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from huggingface_hub import InferenceClient
from PIL import Image

from serve.contract.settings import Settings
from serve.device import choose_placement
from serve.errors import ClientDisconnected, InvalidParameters
from serve.image_encoding import encode_image
from serve.model_source import locate_model
from serve.tasks.base import Prepared
from serve.tasks.text_to_image import Generated, TextToImage, TextToImageParameters
from tests.fixtures.hub import HubServer, offline_cache
from tests.fixtures.models import make_text_to_image_pipeline
from tests.fixtures.servers import ServerProcess

REPO = "bake-tests/tiny-sd"
SMALL = {"width": 32, "height": 32, "num_inference_steps": 2}
MAX_STEPS = 1000
MAX_AREA = 128 * 128
MAX_IMAGES = 3


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_text_to_image_pipeline(tmp_path_factory.mktemp("t2i") / "tiny-sd", safety_checker=True)


def load_task(folder: Path, **overrides: Any) -> TextToImage:
    settings = Settings(model=str(folder), device="cpu", max_batch_size=4, **overrides)
    task = TextToImage(
        locate_model(settings.model, "main", offline=True), settings, choose_placement("cpu", "auto")
    )
    task.load()
    return task


@pytest.fixture(scope="module")
def task(pipeline_dir: Path) -> TextToImage:
    return load_task(pipeline_dir)


def prepare(task: TextToImage, prompt: str = "a red fox", **parameters: Any) -> Prepared:
    return task.prepare(prompt, TextToImageParameters(**{**SMALL, **parameters}))


def png_bytes(output: Generated) -> bytes:
    return encode_image(output.images[0], "image/png")


def alone(task: TextToImage, prepared: Prepared) -> Generated:
    return task.run_batch([prepared.sample], 1)[0]


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)


# ---- the task, in-process ----


def test_an_image_of_the_asked_size_with_its_seed(task: TextToImage) -> None:
    prepared = prepare(task, width=48, height=32, seed=7)
    generated = task.finish(alone(task, prepared), prepared.params)
    (image,) = generated.images
    assert (image.size, image.mode) == ((48, 32), "RGB")
    assert generated.seed == 7


def test_same_seed_same_bytes_other_seed_other_image(task: TextToImage) -> None:
    first, second, other = (prepare(task, seed=seed) for seed in (11, 11, 12))
    assert png_bytes(alone(task, first)) == png_bytes(alone(task, second))
    assert png_bytes(alone(task, first)) != png_bytes(alone(task, other))


def test_a_random_seed_is_drawn_when_absent_and_reproduces_the_image(task: TextToImage) -> None:
    drawn = prepare(task)
    again = prepare(task, seed=drawn.sample.seed)
    assert 0 <= drawn.sample.seed < 2**32
    assert png_bytes(alone(task, drawn)) == png_bytes(alone(task, again))


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"guidance_scale": 0.0},
        {"negative_prompt": "blurry"},
        {"guidance_scale": 3.0, "negative_prompt": ""},
    ],
    ids=["cfg", "no-guidance", "negative-prompt", "empty-negative"],
)
def test_a_batched_request_gets_the_bytes_it_gets_alone(task: TextToImage, extra: dict[str, Any]) -> None:
    requests = [
        prepare(task, "a red fox", seed=1, **extra),
        prepare(
            task,
            "a lighthouse at night, oil painting",
            seed=2,
            **{**extra, "num_images_per_prompt": 2},
        ),
        prepare(task, "x", seed=3, **extra),
    ]
    assert len({request.batch_key for request in requests}) == 1 and sum(r.rows for r in requests) == 4
    batched = task.run_batch([request.sample for request in requests], 4)
    for request, output in zip(requests, batched):
        single = alone(task, request)
        assert len(output.images) == len(single.images) == request.rows
        for together, by_itself in zip(output.images, single.images):
            assert together.tobytes() == by_itself.tobytes()


def test_image_j_of_a_request_is_what_seed_plus_j_gets_alone(task: TextToImage) -> None:
    several = prepare(task, seed=40, num_images_per_prompt=3)
    images = alone(task, several).images
    for index, image in enumerate(images):
        assert image.tobytes() == alone(task, prepare(task, seed=40 + index)).images[0].tobytes()
    assert images[0].tobytes() != images[1].tobytes()


def test_images_match_the_diffusers_pipeline_run_directly(task: TextToImage, pipeline_dir: Path) -> None:
    from diffusers import AutoPipelineForText2Image

    reference = AutoPipelineForText2Image.from_pretrained(str(pipeline_dir), safety_checker=None)
    reference.set_progress_bar_config(disable=True)
    expected = reference(
        "a red fox",
        negative_prompt="snow",
        generator=torch.Generator().manual_seed(5),
        guidance_scale=6.0,
        **SMALL,
    ).images[0]
    prepared = prepare(task, negative_prompt="snow", seed=5, guidance_scale=6.0)
    served = pixels(png_bytes(alone(task, prepared)))
    difference = np.abs(served - np.asarray(expected, dtype=np.int16))
    assert difference.max() <= 1, "only float rounding may differ (the served pipeline is batch-invariant)"


def test_progress_is_reported_after_every_step(task: TextToImage) -> None:
    prepared = prepare(task, num_inference_steps=4)
    assert prepared.channel is not None
    steps: list[tuple[int, int]] = []
    prepared.channel.listen(lambda done, total: steps.append((done, total)))
    alone(task, prepared)
    assert steps == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_a_batch_stops_at_the_next_step_once_all_its_requests_are_cancelled(task: TextToImage) -> None:
    first, second = (
        prepare(task, seed=1, num_inference_steps=50),
        prepare(task, seed=2, num_inference_steps=50),
    )
    assert first.channel is not None and second.channel is not None
    steps: list[int] = []

    def cancel_both_at_step_3(done: int, _total: int) -> None:
        steps.append(done)
        if done == 3:
            first.channel.cancel()  # type: ignore[union-attr]
            second.channel.cancel()  # type: ignore[union-attr]

    first.channel.listen(cancel_both_at_step_3)
    outputs = task.run_batch([first.sample, second.sample], 2)
    assert steps == [1, 2, 3]
    assert all(isinstance(output, ClientDisconnected) for output in outputs)


def test_a_batch_goes_on_while_one_of_its_requests_is_still_wanted(task: TextToImage) -> None:
    gone, wanted = prepare(task, seed=1, num_inference_steps=5), prepare(task, seed=2, num_inference_steps=5)
    assert gone.channel is not None
    gone.channel.cancel()
    outputs = task.run_batch([gone.sample, wanted.sample], 2)
    assert [len(output.images) for output in outputs] == [1, 1]
    assert outputs[1].images[0].tobytes() == alone(task, wanted).images[0].tobytes()


def test_unneeded_components_are_left_out_and_defaults_come_from_the_pipeline(task: TextToImage) -> None:
    details = task.info().details
    assert set(details["components"]) == {"unet", "vae", "text_encoder", "tokenizer", "scheduler"}
    assert (
        task.pipe.components.get("safety_checker") is None
        and task.pipe.components.get("feature_extractor") is None
    )
    assert details["defaults"] == {
        "width": 16,
        "height": 16,
        "num_inference_steps": 50,
        "guidance_scale": 7.5,
    }
    assert details["scheduler"] == "EulerDiscreteScheduler" and details["batch_invariant"] is True
    assert details["limits"]["max_prompt_tokens"] == 77 and details["variant"] is None


def test_fp16_only_weights_load_with_the_variant(tmp_path: Path) -> None:
    full = make_text_to_image_pipeline(tmp_path / "both", variant="fp16")
    only = tmp_path / "fp16-only"
    shutil.copytree(
        full,
        only,
        ignore=lambda _dir, names: [n for n in names if n.endswith(".safetensors") and ".fp16." not in n],
    )
    assert not [path for path in only.rglob("*.safetensors") if ".fp16." not in path.name]
    task = load_task(only)
    assert task.info().details["variant"] == "fp16" and task.pipe.unet.dtype == torch.float32
    assert load_task(full).info().details["variant"] is None, "full weights are preferred for float32"
    prepared = prepare(task, seed=3)
    assert Image.open(io.BytesIO(png_bytes(alone(task, prepared)))).size == (32, 32)


def test_settings_set_the_defaults_and_limits(pipeline_dir: Path) -> None:
    task = load_task(
        pipeline_dir, default_steps=3, default_guidance=0.0, max_images_per_prompt=8, max_steps=5
    )
    details = task.info().details
    assert details["defaults"]["num_inference_steps"] == 3 and details["defaults"]["guidance_scale"] == 0.0
    assert details["limits"]["max_images_per_prompt"] == 4, "never more than the batch size"
    prepared = task.prepare("a fox", TextToImageParameters())
    assert prepared.batch_key.steps == 3 and prepared.batch_key.guidance_scale == 0.0
    with pytest.raises(InvalidParameters, match="over the limit of 5"):
        task.prepare("a fox", TextToImageParameters(num_inference_steps=6))


def test_attention_slicing_and_vae_tiling_keep_batches_equal_to_lone_requests(pipeline_dir: Path) -> None:
    task = load_task(pipeline_dir, attention_slicing=True, vae_tiling=True)
    details = task.info().details
    assert details["attention_slicing"] is True and details["vae_tiling"] is True
    assert task.pipe.vae.use_tiling
    requests = [prepare(task, "a red fox", seed=1, width=48), prepare(task, "a boat", seed=2, width=48)]
    batched = task.run_batch([request.sample for request in requests], 2)
    for request, output in zip(requests, batched):
        assert output.images[0].size == (48, 32)
        assert output.images[0].tobytes() == alone(task, request).images[0].tobytes()


def test_the_batch_key_separates_what_cannot_share_a_pipeline_call(task: TextToImage) -> None:
    base = prepare(task).batch_key
    assert prepare(task, seed=99).batch_key == base
    assert prepare(task, "another prompt").batch_key == base
    for different in (
        {"num_inference_steps": 3},
        {"width": 40},
        {"guidance_scale": 2.0},
        {"negative_prompt": "x"},
    ):
        assert prepare(task, **different).batch_key != base, different


# ---- the server, over HTTP ----


class Served:
    def __init__(self, server: ServerProcess, hub: HubServer) -> None:
        self.server = server
        self.url = server.url
        self.hub = hub

    def post(self, accept: str = "", prompt: str = "a red fox", **parameters: Any) -> httpx.Response:
        headers = {"Accept": accept} if accept else {}
        document = {"inputs": prompt, "parameters": {**SMALL, **parameters}}
        return httpx.post(self.url + "/predict", json=document, headers=headers, timeout=60)

    def metric(self, name: str) -> float:
        text = httpx.get(self.url + "/metrics").text
        match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
        assert match, name
        return float(match.group(1))

    def batches(self) -> tuple[float, float]:
        return self.metric("bake_batch_size_count"), self.metric("bake_batch_size_sum")


@pytest.fixture(scope="module")
def served(hub: HubServer, pipeline_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("t2i-served")
    env = {
        **offline_cache(hub, REPO, pipeline_dir, root).env,
        "BAKE_MAX_BATCH_SIZE": "4",
        "BAKE_MAX_WAIT_MS": "150",
        "BAKE_MAX_STEPS": str(MAX_STEPS),
        "BAKE_MAX_IMAGE_AREA": str(MAX_AREA),
        "BAKE_MAX_IMAGES_PER_PROMPT": str(MAX_IMAGES),
    }
    hub.clear_requests()
    with ServerProcess(env, root / "server.log") as server:
        yield Served(server, hub)


def test_serves_a_png_of_the_asked_size_offline(served: Served) -> None:
    response = served.post(width=48, height=32, seed=3)
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(response.content)).size == (48, 32) and response.headers["X-Seed"] == "3"
    assert [request for request in served.hub.requests if REPO in request.path] == []


def test_same_seed_same_bytes_over_http(served: Served) -> None:
    assert served.post(seed=21).content == served.post(seed=21).content
    assert served.post(seed=21).content != served.post(seed=22).content


def test_the_root_path_answers_like_predict(served: Served) -> None:
    root = httpx.post(
        served.url + "/", json={"inputs": "a red fox", "parameters": {**SMALL, "seed": 23}}, timeout=60
    )
    assert root.status_code == 200 and root.content == served.post(seed=23).content


def test_huggingface_inference_client_works_unchanged(served: Served) -> None:
    client = InferenceClient(model=served.url)
    image = client.text_to_image(
        "a red fox",
        negative_prompt="snow",
        num_inference_steps=2,
        guidance_scale=5.0,
        width=40,
        height=24,
        seed=8,
    )
    assert image.size == (40, 24)
    direct = served.post(negative_prompt="snow", guidance_scale=5.0, width=40, height=24, seed=8)
    assert np.array_equal(np.asarray(image.convert("RGB")), pixels(direct.content))


def test_concurrent_compatible_requests_share_a_batch_and_get_their_lone_bytes(served: Served) -> None:
    prompts = [("a red fox", 31), ("a lighthouse", 32), ("a bowl of soup", 33)]
    lone = [served.post(prompt=prompt, seed=seed).content for prompt, seed in prompts]
    before = served.batches()
    with ThreadPoolExecutor(len(prompts)) as pool:
        together = list(pool.map(lambda item: served.post(prompt=item[0], seed=item[1]).content, prompts))
    count, total = (after - start for after, start in zip(served.batches(), before))
    assert total == 3 and count < 3, "the three requests must share a batch"
    assert together == lone


def test_incompatible_requests_are_not_batched_together(served: Served) -> None:
    variants = [
        {"num_inference_steps": 2},
        {"num_inference_steps": 3},
        {"width": 40},
        {"guidance_scale": 1.0},
    ]
    before = served.batches()
    with ThreadPoolExecutor(len(variants)) as pool:
        answers = list(pool.map(lambda extra: served.post(seed=1, **extra), variants))
    assert [answer.status_code for answer in answers] == [200] * 4
    count, total = (after - start for after, start in zip(served.batches(), before))
    assert (count, total) == (4, 4)


def test_several_images_per_prompt_share_one_batch(served: Served) -> None:
    before = served.batches()
    answer = served.post("application/json", seed=50, num_images_per_prompt=3)
    assert answer.status_code == 200
    images = [base64.b64decode(data) for data in answer.json()["images"]]
    assert len(images) == 3 and len(set(images)) == 3
    assert images[2] == served.post(seed=52).content, "image j is seed + j alone"
    count, total = (after - start for after, start in zip(served.batches(), before))
    assert (count, total) == (2, 2), "one batch for the three images, one for the check"


@pytest.mark.parametrize(
    ("accept", "media_type", "magic"),
    [
        ("image/jpeg", "image/jpeg", b"\xff\xd8\xff"),
        ("image/webp", "image/webp", b"RIFF"),
        ("image/png", "image/png", b"\x89PNG"),
        ("text/html, image/webp;q=0.9, image/jpeg;q=0.5", "image/webp", b"RIFF"),
        ("image/*", "image/png", b"\x89PNG"),
        ("text/html", "image/png", b"\x89PNG"),
    ],
)
def test_image_formats_by_accept(served: Served, accept: str, media_type: str, magic: bytes) -> None:
    response = served.post(accept, seed=4)
    assert response.status_code == 200 and response.headers["content-type"] == media_type
    assert response.content.startswith(magic)
    assert Image.open(io.BytesIO(response.content)).size == (32, 32)


def test_json_answer_has_base64_images_seed_and_timings(served: Served) -> None:
    response = served.post("application/json", seed=9)
    document = response.json()
    assert response.headers["content-type"] == "application/json"
    assert document["seed"] == 9 and document["media_type"] == "image/png"
    assert set(document["timings"]) == {"queue_s", "inference_s", "encode_s"}
    assert all(value >= 0 for value in document["timings"].values())
    assert base64.b64decode(document["images"][0]) == served.post(seed=9).content


def read_events(response: httpx.Response) -> list[tuple[str, Any]]:
    events = []
    for block in response.text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((lines["event"], json.loads(lines["data"])))
    return events


def test_progress_stream_sends_each_step_then_the_image(served: Served) -> None:
    response = served.post("text/event-stream", seed=12, num_inference_steps=4)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    events = read_events(response)
    assert [name for name, _ in events] == ["progress"] * 4 + ["image", "done"]
    assert [data for _, data in events[:4]] == [{"step": step, "total": 4} for step in range(1, 5)]
    image = events[4][1]
    assert image["seed"] == 12 and image["index"] == 0 and image["media_type"] == "image/png"
    assert base64.b64decode(image["image"]) == served.post(seed=12, num_inference_steps=4).content


def test_progress_stream_of_several_images(served: Served) -> None:
    events = read_events(served.post("text/event-stream", seed=60, num_images_per_prompt=2))
    images = [data for name, data in events if name == "image"]
    assert [(image["index"], image["seed"]) for image in images] == [(0, 60), (1, 61)]
    assert events[-1] == ("done", {})


BAD_PARAMETERS: list[tuple[str, dict[str, Any], str]] = [
    ("zero steps", {"num_inference_steps": 0}, "num_inference_steps"),
    ("too many steps", {"num_inference_steps": MAX_STEPS + 1}, "BAKE_MAX_STEPS"),
    ("width not a multiple of 8", {"width": 30}, "multiple of 8"),
    ("height not a multiple of 8", {"height": 44}, "multiple of 8"),
    ("tiny width", {"width": 0}, "width"),
    ("area over the cap", {"width": 256, "height": 256}, "BAKE_MAX_IMAGE_AREA"),
    ("too many images", {"num_images_per_prompt": MAX_IMAGES + 1}, "BAKE_MAX_IMAGES_PER_PROMPT"),
    ("several images as one png", {"num_images_per_prompt": 2}, "application/json"),
    ("zero images", {"num_images_per_prompt": 0}, "num_images_per_prompt"),
    ("unknown parameter", {"strength": 0.5}, "strength: unknown field"),
    ("steps as a string", {"num_inference_steps": "2"}, "num_inference_steps"),
    ("steps as a float", {"num_inference_steps": 2.0}, "num_inference_steps"),
    ("guidance as a word", {"guidance_scale": "high"}, "guidance_scale"),
    ("negative guidance", {"guidance_scale": -1}, "guidance_scale"),
    ("negative seed", {"seed": -1}, "seed"),
    ("huge seed", {"seed": 2**64}, "seed"),
    ("negative prompt too long", {"negative_prompt": "blurry " * 60}, "negative_prompt: the prompt is"),
]


@pytest.mark.parametrize(
    ("case", "parameters", "fragment"), BAD_PARAMETERS, ids=[c[0] for c in BAD_PARAMETERS]
)
def test_bad_parameters_get_422_and_the_server_keeps_serving(
    served: Served, case: str, parameters: dict[str, Any], fragment: str
) -> None:
    response = served.post(**parameters)
    assert response.status_code == 422, response.text
    assert fragment.lower() in response.json()["error"].lower()
    assert served.post(seed=1).status_code == 200


BAD_BODIES: list[tuple[str, bytes, int, str]] = [
    ("prompt too long", json.dumps({"inputs": "a fox " * 40}).encode(), 422, "tokens long"),
    ("empty prompt", b'{"inputs": ""}', 422, "inputs"),
    ("no prompt", b'{"parameters": {}}', 422, "inputs"),
    ("prompt not a string", b'{"inputs": ["a", "b"]}', 422, "inputs"),
    ("unknown top-level field", b'{"inputs": "a", "model": "x"}', 422, "model: unknown field"),
    ("not json", b"a red fox", 400, "JSON"),
    ("empty body", b"", 400, "empty"),
]


@pytest.mark.parametrize(("case", "data", "status", "fragment"), BAD_BODIES, ids=[c[0] for c in BAD_BODIES])
def test_bad_bodies_get_clear_errors(
    served: Served, case: str, data: bytes, status: int, fragment: str
) -> None:
    response = httpx.post(served.url + "/predict", content=data, headers={"Content-Type": "application/json"})
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert fragment.lower() in response.json()["error"].lower()


def test_a_bad_stream_request_gets_a_plain_422(served: Served) -> None:
    response = served.post("text/event-stream", width=30)
    assert response.status_code == 422 and "multiple of 8" in response.json()["error"]


def test_health_answers_during_a_long_generation_and_a_gone_client_stops_it(served: Served) -> None:
    steps_before = served.metric("bake_inference_steps_total")
    document = json.dumps({"inputs": "a long one", "parameters": {**SMALL, "num_inference_steps": MAX_STEPS}})
    with socket.create_connection(("127.0.0.1", served.server.port)) as sock:
        sock.sendall(
            b"POST /predict HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(document), document.encode())
        )
        wait_until(lambda: served.metric("bake_inference_steps_total") >= steps_before + 5)
        for _ in range(5):
            began = time.monotonic()
            assert httpx.get(served.url + "/health", timeout=2).status_code == 200
            assert time.monotonic() - began < 1.0
        assert served.metric("bake_inference_steps_total") < steps_before + MAX_STEPS
    settled = wait_for_steps_to_settle(served)
    assert settled - steps_before < MAX_STEPS / 4, f"ran {settled - steps_before} of {MAX_STEPS} steps"
    assert served.post(seed=1).status_code == 200


def test_closing_a_progress_stream_stops_its_generation(served: Served) -> None:
    steps_before = served.metric("bake_inference_steps_total")
    parameters = {**SMALL, "num_inference_steps": MAX_STEPS}
    headers = {"Accept": "text/event-stream"}
    with httpx.stream(
        "POST",
        served.url + "/predict",
        json={"inputs": "a fox", "parameters": parameters},
        headers=headers,
        timeout=30,
    ) as response:
        lines = response.iter_lines()
        seen = [next(lines) for _ in range(6)]  # three progress events
    assert seen[0] == "event: progress" and json.loads(seen[4].removeprefix("data: "))["step"] == 2
    settled = wait_for_steps_to_settle(served)
    assert settled - steps_before < MAX_STEPS / 4, f"ran {settled - steps_before} of {MAX_STEPS} steps"


def wait_until(condition: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def wait_for_steps_to_settle(served: Served) -> float:
    """The step counter once it stopped moving for half a second."""
    last = served.metric("bake_inference_steps_total")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = served.metric("bake_inference_steps_total")
        if now == last:
            return now
        last = now
    raise AssertionError("the step counter never settled")


def test_info_and_openapi_describe_the_task(served: Served) -> None:
    info = httpx.get(served.url + "/info").json()
    assert info["task"] == "text-to-image" and info["state"] == "ready"
    details = info["task_details"]
    assert "safety_checker" not in details["components"] and details["pipeline"] == "StableDiffusionPipeline"
    assert details["limits"]["max_steps"] == MAX_STEPS and details["limits"]["max_image_area"] == MAX_AREA
    schema = httpx.get(served.url + "/openapi.json").json()
    operation = schema["paths"]["/predict"]["post"]
    parameters = operation["requestBody"]["content"]["application/json"]["schema"]["properties"]["parameters"]
    assert {"num_inference_steps", "guidance_scale", "seed", "width", "height"} <= set(
        parameters["properties"]
    )
    assert {"image/png", "image/jpeg", "image/webp", "application/json", "text/event-stream"} <= set(
        operation["responses"]["200"]["content"]
    )


def test_concurrent_streams_and_plain_requests_batch_together(served: Served) -> None:
    results: dict[str, bytes] = {}

    def stream() -> None:
        events = read_events(served.post("text/event-stream", seed=70))
        results["stream"] = base64.b64decode(next(data for name, data in events if name == "image")["image"])

    def plain() -> None:
        results["plain"] = served.post(seed=71).content

    before = served.batches()
    threads = [threading.Thread(target=stream), threading.Thread(target=plain)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    count, total = (after - start for after, start in zip(served.batches(), before))
    assert (count, total) == (1, 2)
    assert (
        results["stream"] == served.post(seed=70).content and results["plain"] == served.post(seed=71).content
    )
