"""`bake build` of a text-to-image pipeline end to end, with a real Docker engine and BuildKit.

A tiny random Stable Diffusion pipeline, published on the local Hub the way SD 1.x repos are (fp16 variant
weights next to the full ones, a safety checker and its feature extractor), is built for the CPU into an
image that serves with `--network none --read-only`: PNGs of the asked size, the same bytes for the same
seed, batched requests equal to lone ones, 422 for bad parameters, and a Hugging Face cache holding the
full-precision weights of the components the runtime loads, nothing else.
"""

from __future__ import annotations

import base64
import io
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from PIL import Image

from tests.fixtures.docker import (
    build_settings_toml,
    bytecode_at_start,
    docker,
    ensure_base_image,
    labels,
    request_inside,
    run_bake,
    run_offline,
)
from tests.fixtures.hub import HubServer
from tests.fixtures.models import make_text_to_image_pipeline

pytestmark = [pytest.mark.docker, pytest.mark.slow]

REPO = "e2e/tiny-sd"
SMALL = {"width": 32, "height": 32, "num_inference_steps": 2}
BAKED = [
    "model_index.json",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "text_encoder/model.safetensors",
    "tokenizer/tokenizer.json",
    "tokenizer/tokenizer_config.json",
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
]


@dataclass
class Built:
    tag: str
    sha: str


@pytest.fixture(scope="module")
def built(hub: HubServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    ensure_base_image()
    project = tmp_path_factory.mktemp("diffusion-project")
    (project / "bake.toml").write_text(build_settings_toml())
    model_dir = make_text_to_image_pipeline(
        tmp_path_factory.mktemp("model") / "tiny-sd", variant="fp16", safety_checker=True
    )
    sha = hub.add_repo(REPO, model_dir)
    tag = f"bake-e2e/tiny-sd:{uuid.uuid4().hex[:8]}"
    env = hub.client_env()
    result = run_bake(["build", "--model", REPO, "--tag", tag, "--max-batch-size", "4"], env, project)
    assert result.returncode == 0, result.stderr[-4000:]
    yield Built(tag, sha)
    subprocess.run(["docker", "rmi", "-f", tag], capture_output=True)


@pytest.fixture(scope="module")
def container(built: Built) -> Iterator[str]:
    name = f"bake-e2e-sd-{uuid.uuid4().hex[:8]}"
    run_offline(built.tag, name, "-e", "BAKE_MAX_WAIT_MS=300")
    yield name
    subprocess.run(["docker", "rm", "-f", name], capture_output=True)


def generate(prompt: str = "a red fox", accept: str = "", **parameters: Any) -> dict[str, Any]:
    request: dict[str, Any] = {
        "path": "/predict",
        "json": {"inputs": prompt, "parameters": {**SMALL, **parameters}},
    }
    if accept:
        request["headers"] = {"Accept": accept}
    return request


def test_the_image_serves_pngs_of_the_asked_size_offline_and_read_only(container: str) -> None:
    first = request_inside(container, generate(width=48, height=32, seed=5))[0]
    again, other = request_inside(
        container, generate(width=48, height=32, seed=5), generate(width=48, height=32, seed=6)
    )
    assert first.status == 200 and first.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(first.body)).size == (48, 32)
    assert first.body == again.body, "same seed, same bytes"
    assert first.body != other.body


def test_the_openai_and_cog_routes_give_the_hf_route_s_image_offline(container: str) -> None:
    hf, openai, cog = request_inside(
        container,
        generate(seed=9),
        {
            "path": "/v1/images/generations",
            "json": {
                "prompt": "a red fox",
                "size": "32x32",
                "seed": 9,
                "num_inference_steps": SMALL["num_inference_steps"],
            },
        },
        {"path": "/predictions", "json": {"input": {"prompt": "a red fox", "seed": 9, **SMALL}}},
    )
    assert base64.b64decode(openai.json()["data"][0]["b64_json"]) == hf.body
    (url,) = cog.json()["output"]
    assert base64.b64decode(url.split(",", 1)[1]) == hf.body


def test_batched_requests_get_their_lone_bytes(container: str) -> None:
    requests = [generate("a red fox", seed=1), generate("a lighthouse", seed=2), generate("soup", seed=3)]
    lone = [request_inside(container, request)[0].body for request in requests]
    before = batches(container)
    together = request_inside(container, *requests)
    assert [answer.status for answer in together] == [200, 200, 200]
    assert [answer.body for answer in together] == lone
    assert batches(container) - before < 3, "the three requests must share a batch"


def batches(container: str) -> float:
    metrics = request_inside(container, {"path": "/metrics"})[0].body.decode()
    return float(
        next(line.split()[1] for line in metrics.splitlines() if line.startswith("bake_batch_size_count"))
    )


def test_bad_parameters_get_422_and_the_image_keeps_serving(container: str) -> None:
    answers = request_inside(
        container, generate(width=30), generate(num_inference_steps=0), generate(seed="x"), generate(steps=2)
    )
    assert [answer.status for answer in answers] == [422, 422, 422, 422]
    assert (
        "multiple of 8" in answers[0].json()["error"] and "steps: unknown field" in answers[3].json()["error"]
    )
    assert request_inside(container, generate(seed=1))[0].status == 200


def test_info_shows_the_pipeline_without_its_safety_checker(container: str, built: Built) -> None:
    info = request_inside(container, {"path": "/info"})[0].json()
    assert info["task"] == "text-to-image" and info["commit_sha"] == built.sha and info["device"] == "cpu"
    details = info["task_details"]
    assert set(details["components"]) == {"unet", "vae", "text_encoder", "tokenizer", "scheduler"}
    assert details["variant"] is None and details["batch_invariant"] is True
    assert labels(built.tag)["dev.bake.task"] == "text-to-image"


def test_the_cache_holds_the_full_precision_weights_of_the_loaded_components_only(built: Built) -> None:
    listing = docker(
        "run", "--rm", "--entrypoint", "find", built.tag, "/opt/bake/hf", "-type", "l", "-o", "-type", "f"
    )
    lines = listing.stdout.decode().splitlines()
    files = sorted(line.split(f"/snapshots/{built.sha}/", 1)[1] for line in lines if "/snapshots/" in line)
    assert files == BAKED
    assert len([line for line in lines if "/blobs/" in line]) == len(BAKED)


def test_the_server_starts_from_compiled_bytecode(built: Built) -> None:
    compiled, from_source = bytecode_at_start(built.tag, generate(seed=1))
    assert len(compiled) > 2500, len(compiled)
    assert len(from_source) <= 10, from_source
