"""`bake build` failures: one line on stderr, naming the problem and the fix, and a non-zero exit status.

Each cause is produced for real: a Hub that lacks the model or revision, a gated or private repository, a
model type bake refuses, no engine behind DOCKER_HOST, an engine without the buildx plugin (hidden in a
private mount namespace), a base image that cannot be pulled, and an engine whose disk is really full.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.fixtures.classifier_zoo import config_only_repo
from tests.fixtures.docker import build_settings_toml, ensure_base_image, run_bake
from tests.fixtures.dockerd import SecondEngine
from tests.fixtures.hub import HubServer
from tests.fixtures.models import make_image_classifier
from tests.fixtures.servers import REPO_ROOT

TOKEN = "hf_errors_" + uuid.uuid4().hex


@pytest.fixture(scope="module")
def project(hub: HubServer, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    path = tmp_path_factory.mktemp("errors")
    (path / "bake.toml").write_text(build_settings_toml())
    folder = make_image_classifier(path / "model", "resnet", image_size=64)
    hub.add_repo("errors/classifier", folder)
    hub.add_repo("errors/private", folder, token=TOKEN)
    hub.add_repo("errors/gated", folder, token=TOKEN, gated=True)
    hub.add_repo("errors/dinat", config_only_repo("dinat", path / "dinat"))
    bert = path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(
        json.dumps({"architectures": ["BertForMaskedLM"], "model_type": "bert"})
    )
    (bert / "model.safetensors").write_bytes(b"\0" * 16)
    hub.add_repo("errors/bert", bert)
    return path, hub.client_env()


def one_line_error(result: subprocess.CompletedProcess[str], *fragments: str, exit_code: int = 1) -> str:
    """The error line: the last line of stderr, `bake: error: ...`, holding every fragment."""
    assert result.returncode == exit_code, result.stderr[-2000:]
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("bake: error: "), line
    for fragment in fragments:
        assert fragment in line, line
    return line


def only_line(result: subprocess.CompletedProcess[str]) -> None:
    """Errors found before the build starts print nothing else."""
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.parametrize(
    ("args", "env", "fragments"),
    [
        (
            ["--model", "errors/nope"],
            {},
            ["model errors/nope was not found", "set HF_TOKEN if the model is private"],
        ),
        (["--model", "errors/classifier", "--revision", "v404"], {}, ["no revision 'v404'", "--revision"]),
        (["--model", "errors/private"], {}, ["was not found", "HF_TOKEN"]),
        (["--model", "errors/gated"], {}, ["errors/gated is gated", "set HF_TOKEN"]),
        (
            ["--model", "errors/gated"],
            {"HF_TOKEN": "hf_someone_else"},
            ["refused access to errors/gated", "set HF_TOKEN to a valid token"],
        ),
        (
            ["--model", "errors/classifier", "--task", "text-to-image"],
            {},
            ["image-classification model", "--task image-classification"],
        ),
        (["--model", "errors/bert"], {}, ["BertForMaskedLM", "bake serves these tasks"]),
        (
            ["--model", "errors/dinat"],
            {},
            ["dinat models are not served", "natten<0.20", "no build option adds it"],
        ),
    ],
    ids=[
        "unknown-model",
        "unknown-revision",
        "private-no-token",
        "gated-no-token",
        "gated-wrong-token",
        "wrong-task",
        "unservable-architecture",
        "refused-model-type",
    ],
)
def test_model_problems(
    project: tuple[Path, dict[str, str]], args: list[str], env: dict[str, str], fragments: list[str]
) -> None:
    path, base_env = project
    result = run_bake(["build", *args], {**base_env, **env}, path)
    one_line_error(result, *fragments)
    only_line(result)


def test_bad_setting_exits_2(project: tuple[Path, dict[str, str]]) -> None:
    path, env = project
    result = run_bake(["build", "--model", "errors/classifier"], {**env, "BAKE_MAX_QUEUE": "many"}, path)
    one_line_error(result, "BAKE_MAX_QUEUE='many'", exit_code=2)


def test_no_docker_engine(project: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    path, env = project
    result = run_bake(
        ["build", "--model", "errors/classifier"],
        {**env, "DOCKER_HOST": f"unix://{tmp_path}/nothing.sock"},
        path,
    )
    one_line_error(result, "no Docker engine answers", "start dockerd")
    only_line(result)


@pytest.mark.docker
def test_engine_without_buildx(project: tuple[Path, dict[str, str]]) -> None:
    path, env = project
    hide_plugins = 'mount -t tmpfs none /usr/libexec/docker/cli-plugins && exec "$@"'
    command = [
        "unshare",
        "-m",
        "sh",
        "-c",
        hide_plugins,
        "sh",
        sys.executable,
        "-m",
        "bake",
        "build",
        "--model",
        "errors/classifier",
    ]
    environ = {**os.environ, "PYTHONPATH": str(REPO_ROOT), **env}
    result = subprocess.run(command, env=environ, cwd=path, capture_output=True, text=True, timeout=300)
    one_line_error(result, "buildx plugin is missing", "docker-buildx")
    only_line(result)


@pytest.mark.docker
@pytest.mark.slow
def test_base_image_that_cannot_be_pulled(project: tuple[Path, dict[str, str]]) -> None:
    path, env = project
    result = run_bake(
        ["build", "--model", "errors/classifier", "--base-image", "bake-missing/base:nope"], env, path
    )
    one_line_error(result, "base image bake-missing/base:nope cannot be pulled", "--base-image")


@pytest.mark.docker
@pytest.mark.slow
def test_full_disk_during_the_build(project: tuple[Path, dict[str, str]]) -> None:
    path, env = project
    ensure_base_image()
    with SecondEngine(size_mb=700, subnet_octet=29) as engine:
        result = run_bake(
            ["build", "--model", "errors/classifier"], {**env, "DOCKER_HOST": engine.host}, path
        )
    one_line_error(result, "the disk filled up during the build", "free space")


@pytest.mark.docker
@pytest.mark.slow
def test_base_image_whose_python_bundles_no_pip_wheel(project: tuple[Path, dict[str, str]]) -> None:
    path, env = project
    tag = f"bake-errors-nopip:{uuid.uuid4().hex[:8]}"
    dockerfile = f"FROM {ensure_base_image()}\nRUN rm /usr/share/python-wheels/pip-*.whl\n"
    subprocess.run(["docker", "build", "--quiet", "--tag", tag, "-"], input=dockerfile, text=True, check=True)
    try:
        result = run_bake(["build", "--model", "errors/classifier", "--base-image", tag], env, path)
    finally:
        subprocess.run(["docker", "rmi", "-f", tag], capture_output=True, check=False)
    one_line_error(result, f"base image {tag} cannot bootstrap pip", "install python3-venv")
