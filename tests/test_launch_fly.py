"""`bake launch --target fly` from the CLI: fly.toml from the image's labels and a measured warm-up, the
deploy through the (spec-validated) Machines API with a push to a real registry, and the refusals."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest
import tomllib

from tests.fixtures.docker import built_project, docker, run_bake
from tests.fixtures.fly_api import SPECS_DIR, FlyApiServer
from tests.fixtures.registry import LocalRegistry

pytestmark = [pytest.mark.docker, pytest.mark.slow]

SCHEMA_PATH = SPECS_DIR / "fly.schema.json"
TOKEN = "FlyV1 fm2_" + uuid.uuid4().hex


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    with built_project(
        tmp_path_factory.mktemp("fly"), "vit", "bake-fly/tiny", "--max-batch-size", "4"
    ) as built:
        yield built


def test_dry_run_writes_a_schema_valid_fly_toml_with_the_measured_warm_up(image: tuple[Path, str]) -> None:
    path, tag = image
    result = run_bake(["launch", tag, "--target", "fly", "--dry-run", "--name", "bake-dry"], {}, path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "warm-up measured at" in result.stderr
    text = (path / "fly.toml").read_text()
    assert text in result.stdout, "--dry-run prints the file"
    document = tomllib.loads(text)
    jsonschema.Draft7Validator(json.loads(SCHEMA_PATH.read_text())).validate(document)
    assert document["app"] == "bake-dry" and document["build"]["image"] == tag
    service = document["http_service"]
    assert service["internal_port"] == 8080 and service["auto_stop_machines"] == "stop"
    assert service["concurrency"]["type"] == "requests" and service["concurrency"]["soft_limit"] == 4
    assert document["env"]["HF_HUB_OFFLINE"] == "1"


def test_a_gpu_image_is_refused_before_anything_else(image: tuple[Path, str], tmp_path: Path) -> None:
    path, tag = image
    cuda = f"bake-fly/cuda:{uuid.uuid4().hex[:8]}"
    (tmp_path / "Dockerfile").write_text(f"FROM {tag}\nLABEL dev.bake.device=cuda\n")
    docker("buildx", "build", "--load", "-t", cuda, str(tmp_path))
    try:
        with FlyApiServer(token=TOKEN) as fly_api:
            result = run_bake(
                ["launch", cuda, "--target", "fly", "--name", "bake-gpu"],
                {"FLY_API_TOKEN": TOKEN, "BAKE_FLY_API_URL": fly_api.url},
                path,
            )
            assert fly_api.requests == [], "no request may reach Fly"
        assert result.returncode == 1
        line = result.stderr.strip().splitlines()[-1]
        assert "2026-08-01" in line and "--target docker" in line and "--target kubernetes" in line
        assert len(result.stderr.strip().splitlines()) == 1, "refused before measuring or deploying anything"
    finally:
        subprocess.run(["docker", "rmi", "-f", cuda], capture_output=True)


def test_missing_token_is_one_clear_error(image: tuple[Path, str]) -> None:
    path, tag = image
    result = run_bake(
        ["launch", tag, "--target", "fly", "--name", "bake-notoken"], {"FLY_API_TOKEN": ""}, path
    )
    assert result.returncode == 1
    assert "FLY_API_TOKEN" in result.stderr.strip().splitlines()[-1]


def test_deploy_pushes_the_image_and_creates_a_machine_through_the_api(image: tuple[Path, str]) -> None:
    path, tag = image
    with LocalRegistry(password=TOKEN) as registry, FlyApiServer(token=TOKEN) as fly_api:
        result = run_bake(
            ["launch", tag, "--target", "fly", "--name", "bake-deployed", "--registry", registry.address],
            {"FLY_API_TOKEN": TOKEN, "BAKE_FLY_API_URL": fly_api.url, "PATH": "/usr/bin:/bin"},
            path,
        )
        assert result.returncode == 0, result.stderr[-2000:]
        [machine] = fly_api.machine_list("bake-deployed")
        assert fly_api.invalid_requests() == []
    assert "https://bake-deployed.fly.dev" in result.stdout
    config = machine["config"]
    assert config["image"].startswith(f"{registry.address}/bake-deployed:bake-")
    [service] = config["services"]
    assert service["autostart"] is True and service["autostop"] == "stop"
    assert TOKEN not in result.stdout + result.stderr
