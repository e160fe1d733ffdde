"""`bake build` of the new file-selection shapes of text-to-image pipelines, end to end with BuildKit.

- PixArt-alpha: a T5 tokenizer as `spiece.model` only and a sharded T5 encoder; the image must get
  sentencepiece + protobuf (to read the tokenizer) and ftfy + beautifulsoup4 (PixArt's caption cleaning).
- Stable Diffusion 3: three text encoders, the T5 one sharded with fp16 variant shards and their own index
  next to the full ones, its tokenizer with both `tokenizer.json` and `spiece.model`.

Each tiny pipeline (tests/fixtures/diffusion_zoo.py) is published on the local Hub and built for the CPU; the
image serves with `--network none --read-only` the pixels the diffusers pipeline makes on this machine (same
torch), batched requests the bytes they get alone, and its cache holds exactly the files bake selected. A
pipeline bake does not serve is refused by `bake build` in one line, before anything is built. The other
families' shapes are the ones of Stable Diffusion (tests/test_build_diffusion_e2e.py), checked by
tests/test_bake_pipelines.py.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from bake.config import ModelSpec
from bake.env import read_environment
from bake.hub import resolve_model
from serve.contract import pipelines
from tests.fixtures.diffusion_zoo import Family, make_diffusion_pipeline
from tests.fixtures.docker import (
    build_settings_toml,
    docker,
    ensure_base_image,
    labels,
    request_inside,
    run_bake,
    run_offline,
)
from tests.fixtures.hub import HubServer

pytestmark = [pytest.mark.docker, pytest.mark.slow]

SIZE = {"width": 48, "height": 32, "num_inference_steps": 2}
PARITY_TOLERANCE = 1
"""As in tests/test_text_to_image_families.py: uint8 steps a served pixel may differ from diffusers' own."""


@dataclass
class Built:
    family: Family
    folder: Path
    tag: str
    sha: str
    files: set[str]
    """What bake selected for the build (resolved on the host)."""
    container: str = ""


@pytest.fixture(scope="module", params=["pixart-alpha", "sd3"])
def built(
    request: pytest.FixtureRequest, hub: HubServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Built]:
    family: Family = request.param
    ensure_base_image()
    project = tmp_path_factory.mktemp(f"{family}-project")
    (project / "bake.toml").write_text(build_settings_toml())
    folder = make_diffusion_pipeline(tmp_path_factory.mktemp("model") / family, family, variant="fp16")
    repo = f"e2e/tiny-{family}"
    sha = hub.add_repo(repo, folder)
    env = hub.client_env()
    selected = resolve_model(ModelSpec(repo, "main", None), read_environment(env), device="cpu")
    tag = f"bake-e2e/coverage-t2i-{family}:{uuid.uuid4().hex[:8]}"
    result = run_bake(["build", "--model", repo, "--tag", tag, "--max-batch-size", "4"], env, project)
    assert result.returncode == 0, result.stderr[-4000:]
    if selected.packages:
        assert f"extra packages: {', '.join(selected.packages)}" in result.stdout + result.stderr
    name = f"bake-e2e-coverage-t2i-{family}-{uuid.uuid4().hex[:8]}"
    built = Built(family, folder, tag, sha, {file.path for file in selected.files}, name)
    run_offline(tag, name, "-e", "BAKE_MAX_WAIT_MS=300")
    try:
        yield built
    finally:
        subprocess.run(["docker", "rm", "-f", name], check=False, capture_output=True)
        subprocess.run(["docker", "rmi", "-f", tag], check=False, capture_output=True)


def generate(prompt: str, seed: int) -> dict[str, Any]:
    return {"path": "/predict", "json": {"inputs": prompt, "parameters": {**SIZE, "seed": seed}}}


def test_the_image_answers_like_the_diffusers_pipeline(built: Built) -> None:
    from diffusers import AutoPipelineForText2Image

    answer = request_inside(built.container, generate("a red fox", 5))[0]
    assert answer.status == 200, answer.body[:500]
    served = Image.open(io.BytesIO(answer.body)).convert("RGB")
    pipe = AutoPipelineForText2Image.from_pretrained(str(built.folder))
    pipe.set_progress_bar_config(disable=True)
    expected = pipe("a red fox", generator=torch.Generator().manual_seed(5), **SIZE).images[0]
    assert served.size == expected.size == (48, 32)
    difference = np.abs(np.asarray(served, dtype=np.int16) - np.asarray(expected, dtype=np.int16)).max()
    assert difference <= PARITY_TOLERANCE


def test_batched_requests_get_their_lone_bytes(built: Built) -> None:
    requests = [generate("a red fox", 1), generate("a lighthouse at night", 2), generate("soup", 3)]
    lone = [request_inside(built.container, request)[0].body for request in requests]
    together = request_inside(built.container, *requests)
    assert [answer.status for answer in together] == [200, 200, 200]
    assert [answer.body for answer in together] == lone
    metrics = request_inside(built.container, {"path": "/metrics"})[0].body.decode()
    count = next(line for line in metrics.splitlines() if line.startswith("bake_batch_size_count"))
    assert float(count.split()[1]) < 6, "the three concurrent requests must have shared a batch"


def test_info_names_the_family_and_the_cache_holds_the_selected_files_only(built: Built) -> None:
    info = request_inside(built.container, {"path": "/info"})[0].json()
    details = info["task_details"]
    index = json.loads((built.folder / "model_index.json").read_text())
    assert info["commit_sha"] == built.sha and details["pipeline"] == index["_class_name"]
    assert details["family"] == pipelines.family_of(index).name
    assert details["variant"] is None and details["batch_invariant"] is True
    assert labels(built.tag)["dev.bake.task"] == "text-to-image"
    listing = docker(
        "run", "--rm", "--entrypoint", "find", built.tag, "/opt/bake/hf", "-type", "l", "-o", "-type", "f"
    )  # fmt: skip
    lines = listing.stdout.decode().splitlines()
    files = {line.split(f"/snapshots/{built.sha}/", 1)[1] for line in lines if "/snapshots/" in line}
    assert files == built.files
    assert not any(".fp16" in name for name in files)
    assert any(name.endswith(".safetensors.index.json") for name in files), "the sharded T5 encoder's index"


def test_the_image_has_the_extra_packages_its_pipeline_needs_and_no_others(built: Built) -> None:
    modules = {
        "bs4": "beautifulsoup4",
        "ftfy": "ftfy",
        "google.protobuf": "protobuf",
        "sentencepiece": "sentencepiece",
    }
    check = (
        "import importlib.util, json; "
        f"print(json.dumps([m for m in {sorted(modules)!r} if importlib.util.find_spec(m.split('.')[0])]))"
    )
    result = docker("run", "--rm", "--network", "none", "--entrypoint", "python", built.tag, "-c", check)
    installed = {modules[module] for module in json.loads(result.stdout)}
    expected = (
        {"beautifulsoup4", "ftfy", "protobuf", "sentencepiece"} if built.family == "pixart-alpha" else set()
    )
    assert installed == expected


def test_an_unserved_pipeline_is_refused_before_building(hub: HubServer, tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "bake.toml").write_text(build_settings_toml())
    folder = shutil.copytree(make_diffusion_pipeline(tmp_path / "sdxl", "sdxl"), tmp_path / "refiner")
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(
        json.dumps({**index, "_class_name": "StableDiffusionXLImg2ImgPipeline", "text_encoder": [None, None]})
    )
    result = run_bake(
        ["build", "--model", str(folder), "--tag", f"bake-e2e/never:{uuid.uuid4().hex[:8]}"], {}, project
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bake: error: "), result.stderr
    assert "StableDiffusionXLImg2ImgPipeline turns an image into another image" in lines[0]
