"""The forward pass compiled at build time, end to end: a real `bake build` of a tiny classifier from the
local Hub compiles it, says so and labels the image; the image starts on the compiled path (offline,
read-only) and answers like transformers' pipeline; a code-only change takes the compile stage from the
cache; `--no-compile` builds today's path and says why.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image
from transformers import pipeline

from bake.buildkit_log import BuildLog
from serve.contract.labels import COMPILED
from tests.fixtures import images
from tests.fixtures.docker import (
    build_settings_toml,
    docker,
    ensure_base_image,
    labels,
    predict_inside,
    run_bake,
    run_offline,
)
from tests.fixtures.hub import HubServer
from tests.fixtures.models import make_image_classifier
from tests.fixtures.servers import REPO_ROOT

pytestmark = [pytest.mark.docker, pytest.mark.slow]

REPO = "e2e/tiny-compiled-resnet"
PHOTO = images.photo(200, 150)
COMPILED_NOTE = "bake: forward pass compiled at build time"


@dataclass
class Project:
    path: Path
    env: dict[str, str]
    model_dir: Path

    def build(self, *args: str, **extra_env: str) -> tuple[str, str]:
        """`bake build` this project's model into a new tag; returns (tag, output)."""
        tag = f"bake-e2e/tiny-compiled:{uuid.uuid4().hex[:8]}"
        result = run_bake(
            ["build", "--model", REPO, "--tag", tag, *args], {**self.env, **extra_env}, self.path
        )
        assert result.returncode == 0, result.stderr[-4000:]
        return tag, result.stdout + result.stderr


@pytest.fixture(scope="module")
def project(hub: HubServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Project]:
    ensure_base_image()
    path = tmp_path_factory.mktemp("project")
    (path / "bake.toml").write_text(build_settings_toml())
    model_dir = make_image_classifier(tmp_path_factory.mktemp("model") / "resnet", "resnet", image_size=64)
    hub.add_repo(REPO, model_dir)
    env = hub.client_env()
    yield Project(path, env, model_dir)


@pytest.fixture(scope="module")
def compiled(project: Project) -> Iterator[tuple[str, str]]:
    tag, output = project.build()
    yield tag, output
    subprocess.run(["docker", "rmi", "-f", tag], capture_output=True)


def serve_once(tag: str) -> dict:
    """Start `tag` offline and read-only, predict PHOTO from inside, return the answer and /info."""
    name = f"bake-e2e-{uuid.uuid4().hex[:8]}"
    run_offline(tag, name)
    try:
        return predict_inside(name, PHOTO)
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)


def assert_like_the_pipeline(answer: list[dict], model_dir: Path) -> None:
    expected = pipeline("image-classification", model=str(model_dir))(Image.open(io.BytesIO(PHOTO)), top_k=10)
    assert [item["label"] for item in answer] == [item["label"] for item in expected]
    for got, want in zip(answer, expected):
        assert got["score"] == pytest.approx(want["score"], abs=1e-4)


def test_the_build_compiles_says_so_and_labels_the_image(compiled: tuple[str, str]) -> None:
    tag, output = compiled
    assert COMPILED_NOTE in output and "forward   torchscript" in output
    assert labels(tag)[COMPILED] == "torchscript"


def test_the_image_starts_on_the_compiled_path_and_answers_like_the_pipeline(
    compiled: tuple[str, str], project: Project
) -> None:
    served = serve_once(compiled[0])
    details = served["info"]["task_details"]
    assert details["load_path"] == "compiled" and details["torchscript"] is True
    assert details["compiled"].startswith("torchscript, compiled at build time")
    assert_like_the_pipeline(served["answer"], project.model_dir)


def test_a_code_only_change_takes_the_compile_stage_from_the_cache(
    compiled: tuple[str, str], project: Project, tmp_path: Path
) -> None:
    code = tmp_path / "code"
    shutil.copytree(REPO_ROOT / "serve", code / "serve", ignore=shutil.ignore_patterns("__pycache__"))
    with (code / "serve" / "runtime.py").open("a") as module:
        module.write(f"# a code-only change {uuid.uuid4().hex}\n")
    tag, output = project.build("--progress", "plain", PYTHONPATH=f"{code}:{REPO_ROOT}")
    try:
        report_run = BuildLog()
        for line in output.split(COMPILED_NOTE, 1)[0].splitlines():  # the compile report's build run
            report_run.feed(line)
        assert report_run.stage_cached("compile") and report_run.stage_cached("weights")
        assert labels(tag)[COMPILED] == "torchscript"
        changed = docker(
            "run", "--rm", "--entrypoint", "tail", tag, "-n", "1", "/opt/bake/app/serve/runtime.py"
        )
        assert b"a code-only change" in changed.stdout
    finally:
        subprocess.run(["docker", "rmi", "-f", tag], capture_output=True)


def test_no_compile_builds_the_eager_path_and_says_why(compiled: tuple[str, str], project: Project) -> None:
    tag, output = project.build("--no-compile")
    try:
        reason = "eager: compiling is turned off (--no-compile)"
        assert f"forward   {reason}" in output and COMPILED_NOTE not in output
        assert labels(tag)[COMPILED] == reason
        served = serve_once(tag)
        details = served["info"]["task_details"]
        assert details["load_path"] == "transformers" and details["compiled"] == reason
        assert_like_the_pipeline(served["answer"], project.model_dir)
    finally:
        subprocess.run(["docker", "rmi", "-f", tag], capture_output=True)
