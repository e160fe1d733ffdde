"""`bake launch` on Docker engines, for real: the local engine, and a second engine standing in for a remote
one (image streamed with save/load, or moved through a real registry). Plus ps, logs, stop, predict and the
idle stop / wake cycle.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.fixtures import images
from tests.fixtures.docker import built_project, docker, run_bake
from tests.fixtures.dockerd import SecondEngine
from tests.fixtures.registry import LocalRegistry
from tests.fixtures.servers import free_port

pytestmark = [pytest.mark.docker, pytest.mark.slow]

PHOTO = images.photo(160, 120)


@dataclass
class Project:
    path: Path
    image: str

    def bake(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return run_bake(args, env, self.path)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Project]:
    with built_project(tmp_path_factory.mktemp("launch"), "convnext", "bake-launch/tiny") as (path, image):
        yield Project(path, image)


@pytest.fixture
def name() -> Iterator[str]:
    container = f"bake-test-{uuid.uuid4().hex[:8]}"
    yield container
    subprocess.run(["docker", "rm", "-f", container], capture_output=True)


def state(container: str, host: str | None = None) -> dict:
    command = ["docker", *(["-H", host] if host else []), "inspect", container, "--format", "{{json .State}}"]
    return json.loads(subprocess.run(command, capture_output=True, check=True).stdout)


def test_launch_waits_for_ready_prints_the_url_and_hints(project: Project, name: str) -> None:
    port = free_port()
    result = project.bake("launch", "--name", name, "--host-port", str(port))
    assert result.returncode == 0, result.stderr[-2000:]
    url = f"http://127.0.0.1:{port}"
    assert f"{name} is ready at {url}" in result.stdout
    assert f"bake logs {name}" in result.stdout and f"bake stop {name}" in result.stdout
    assert httpx.get(url + "/ready").status_code == 200
    answer = httpx.post(url + "/predict", content=PHOTO).json()
    assert len(answer) == 5 and {"label", "score"} <= set(answer[0])
    labels = json.loads(docker("inspect", name, "--format", "{{json .Config.Labels}}").stdout)
    assert labels["dev.bake.launched"] == "1" and labels["dev.bake.image"] == project.image
    policy = docker("inspect", name, "--format", "{{.HostConfig.RestartPolicy.Name}}").stdout.strip()
    assert policy == b"on-failure"
    # the endpoint is remembered: `bake bench` without a URL measures it
    bench = project.bake(
        "bench", "--json", "--concurrency", "1", "--duration", "1", "--warmup", "0", "--no-plot"
    )
    assert bench.returncode == 0, bench.stderr[-2000:]
    report = json.loads(bench.stdout)
    assert report["server"]["url"] == url and report["levels"][0]["client"]["requests"] > 0


def test_launch_without_an_image_takes_the_last_build(project: Project, name: str) -> None:
    result = project.bake("launch", "--name", name, "--host-port", str(free_port()))
    assert result.returncode == 0, result.stderr[-2000:]
    image = docker("inspect", name, "--format", "{{.Config.Image}}").stdout.decode().strip()
    assert image == project.image


def test_a_second_launch_replaces_the_container_cleanly(project: Project, name: str) -> None:
    port = str(free_port())
    assert project.bake("launch", project.image, "--name", name, "--host-port", port).returncode == 0
    first = docker("inspect", name, "--format", "{{.Id}}").stdout
    assert project.bake("launch", project.image, "--name", name, "--host-port", port).returncode == 0
    second = docker("inspect", name, "--format", "{{.Id}}").stdout
    assert first != second
    listed = docker("ps", "-a", "--filter", f"name=^{name}$", "--format", "{{.ID}}").stdout.split()
    assert len(listed) == 1
    assert httpx.post(f"http://127.0.0.1:{port}/predict", content=PHOTO).status_code == 200


def test_ps_logs_predict_and_stop(project: Project, name: str) -> None:
    port = str(free_port())
    assert project.bake("launch", project.image, "--name", name, "--host-port", port).returncode == 0
    listed = project.bake("ps")
    assert listed.returncode == 0 and name in listed.stdout and f"http://127.0.0.1:{port}" in listed.stdout
    photo = project.path / "photo.jpg"
    photo.write_bytes(PHOTO)
    predicted = project.bake("predict", str(photo), "--name", name, "--param", "top_k=2", "--json")
    assert predicted.returncode == 0, predicted.stderr
    assert len(json.loads(predicted.stdout)["output"]) == 2
    logs = project.bake("logs", name)
    assert "ready in" in logs.stdout + logs.stderr
    stopped = project.bake("stop", name)
    assert stopped.returncode == 0
    assert state(name)["Running"] is False and state(name)["ExitCode"] == 0, "SIGTERM must drain and exit 0"
    removed = project.bake("stop", name, "--rm")
    assert removed.returncode == 0
    assert subprocess.run(["docker", "inspect", name], capture_output=True).returncode != 0


def test_idle_container_stops_itself_and_the_next_predict_wakes_it(project: Project, name: str) -> None:
    port = str(free_port())
    launched = project.bake(
        "launch", project.image, "--name", name, "--host-port", port, "-e", "BAKE_IDLE_TIMEOUT_S=2"
    )
    assert launched.returncode == 0, launched.stderr[-2000:]
    deadline = time.monotonic() + 60
    while state(name)["Running"]:
        assert time.monotonic() < deadline, "the idle timeout did not stop the container"
        time.sleep(0.5)
    time.sleep(3)
    assert state(name)["Running"] is False and state(name)["ExitCode"] == 0, (
        "an idle exit must not be restarted"
    )
    photo = project.path / "photo.jpg"
    photo.write_bytes(PHOTO)
    predicted = project.bake("predict", str(photo), "--name", name)
    assert predicted.returncode == 0, predicted.stderr
    assert "is stopped (idle): starting it" in predicted.stderr
    assert len(predicted.stdout.splitlines()) == 5, "a label a line"
    docker("stop", name)
    woken = project.bake("launch", "--wake", "--name", name)
    assert woken.returncode == 0 and state(name)["Running"] is True


def test_port_in_use_is_one_clear_error(project: Project, name: str) -> None:
    with socket.socket() as blocker:
        blocker.bind(("0.0.0.0", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        result = project.bake("launch", project.image, "--name", name, "--host-port", str(port))
    assert result.returncode == 1
    line = result.stderr.strip().splitlines()[-1]
    assert line == f"bake: error: port {port} is already in use: pass --host-port with a free port"


def test_missing_image_is_one_clear_error(project: Project) -> None:
    result = project.bake("launch", "bake-launch/absent:nope")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "bake: error: image bake-launch/absent:nope is not on this Docker engine: build it with `bake build`"
    )


def test_no_engine_is_one_clear_error(project: Project, tmp_path: Path) -> None:
    result = project.bake("launch", project.image, DOCKER_HOST=f"unix://{tmp_path}/none.sock")
    assert result.returncode == 1
    assert "no Docker engine answers" in result.stderr.strip().splitlines()[-1]


def test_a_cuda_image_needs_an_nvidia_runtime(project: Project, tmp_path: Path, name: str) -> None:
    cuda = f"bake-launch/cuda:{uuid.uuid4().hex[:8]}"
    (tmp_path / "Dockerfile").write_text(f"FROM {project.image}\nLABEL dev.bake.device=cuda\n")
    docker("buildx", "build", "--load", "-t", cuda, str(tmp_path))
    try:
        result = project.bake("launch", cuda, "--name", name)
        assert result.returncode == 1
        line = result.stderr.strip().splitlines()[-1]
        assert "built for CUDA but this Docker engine has no NVIDIA runtime" in line
        assert "NVIDIA Container Toolkit" in line and "--device cpu" in line
    finally:
        subprocess.run(["docker", "rmi", "-f", cuda], capture_output=True)


@pytest.fixture(scope="module")
def remote() -> Iterator[SecondEngine]:
    with SecondEngine(size_mb=6000, subnet_octet=28) as engine:
        yield engine


def test_remote_engine_gets_the_image_streamed_without_a_registry(
    project: Project, remote: SecondEngine
) -> None:
    name = f"bake-remote-{uuid.uuid4().hex[:6]}"
    port = str(free_port())
    result = project.bake(
        "launch",
        project.image,
        "--target",
        "docker",
        "--host",
        remote.host,
        "--name",
        name,
        "--host-port",
        port,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert state(name, remote.host)["Running"] is True
    assert subprocess.run(["docker", "inspect", name], capture_output=True).returncode != 0, (
        "not on the local engine"
    )
    assert httpx.post(f"http://127.0.0.1:{port}/predict", content=PHOTO).status_code == 200
    listed = project.bake("ps", "--host", remote.host)
    assert name in listed.stdout
    assert project.bake("stop", name, "--host", remote.host, "--rm").returncode == 0


def test_remote_engine_pulls_the_image_through_a_registry(project: Project, remote: SecondEngine) -> None:
    name = f"bake-remote-{uuid.uuid4().hex[:6]}"
    port = str(free_port())
    subprocess.run(["docker", "-H", remote.host, "rmi", "-f", project.image], capture_output=True)
    with LocalRegistry() as registry:
        result = project.bake(
            "launch",
            project.image,
            "--target",
            "docker",
            "--host",
            remote.host,
            "--name",
            name,
            "--host-port",
            port,
            "--registry",
            registry.address,
        )
        assert result.returncode == 0, result.stderr[-2000:]
        repository, tag = project.image.rsplit(":", 1)
        assert registry.manifest_status(repository, tag) == 200
    running = (
        docker("-H", remote.host, "inspect", name, "--format", "{{.Config.Image}}").stdout.decode().strip()
    )
    assert running == f"{registry.address}/{project.image}"
    assert httpx.post(f"http://127.0.0.1:{port}/predict", content=PHOTO).status_code == 200
    subprocess.run(["docker", "-H", remote.host, "rm", "-f", name], capture_output=True)
