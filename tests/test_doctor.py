"""`bake doctor` against the real world: this machine's Docker engine, an engine that is not there
(DOCKER_HOST at a dead socket), a second real dockerd with a small disk that is then stopped, and the local
Hub (reachable, valid and invalid tokens, and an endpoint nobody answers at).

Every run is the real CLI in a subprocess; the JSON output is read back, the text output checked for one line
per check with the fix below each failure, and no traceback.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.fixtures.docker import BASE_IMAGE, LOCAL_WHEELS, TORCH_VERSION, ensure_base_image, run_bake
from tests.fixtures.dockerd import SecondEngine
from tests.fixtures.hub import HubServer
from tests.fixtures.models import make_image_classifier

pytestmark = [pytest.mark.docker, pytest.mark.slow]

TOKEN = "hf_doctor_" + uuid.uuid4().hex
LOCAL_TORCH = {"BAKE_PIP_FIND_LINKS": str(LOCAL_WHEELS)}
"""This machine's CPU torch wheel: PyTorch's own index is not reachable from here."""
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_TOKEN": "", **LOCAL_TORCH}


def doctor(cwd: Path, env: dict[str, str], *args: str) -> tuple[int, dict[str, dict[str, str]]]:
    """Run `bake doctor --json`; return its exit status and its checks by name."""
    result = run_bake(["doctor", "--json", *args], env, cwd, timeout=300)
    assert "Traceback" not in result.stderr, result.stderr
    document = json.loads(result.stdout)
    checks = {check["name"]: check for check in document["checks"]}
    assert document["ok"] == (result.returncode == 0)
    assert document["ok"] == all(check["status"] != "fail" for check in checks.values())
    return result.returncode, checks


def test_this_machine_is_ready(tmp_path: Path) -> None:
    ensure_base_image()
    server_version = subprocess.run(
        ["docker", "version", "--format", "{{.Server.Version}}"], capture_output=True, text=True, check=True
    ).stdout.strip()
    code, checks = doctor(tmp_path, OFFLINE, "--base-image", BASE_IMAGE)
    assert code == 0, checks
    assert checks["docker engine"]["status"] == "ok"
    assert f"Docker {server_version} " in checks["docker engine"]["detail"]
    assert checks["buildx"]["status"] == "ok"
    buildkit = checks["buildkit"]
    assert buildkit["status"] == "ok" and f"ran a probe build on {BASE_IMAGE}" in buildkit["detail"], buildkit
    assert checks["image store disk"]["status"] in ("ok", "warn")
    assert checks["hub"]["status"] == "skipped" and "HF_HUB_OFFLINE" in checks["hub"]["detail"]
    for name in ("nvidia", "fly token", "flyctl", "kubectl", "remote engine"):
        assert checks[name]["status"] == "skipped", checks[name]
    sources = checks["package sources"]
    assert sources["status"] in ("ok", "warn"), sources  # warn: PyPI unreachable, the wheel folder alone
    assert f"torch=={TORCH_VERSION}+cpu from the --pip-find-links folder" in sources["detail"], sources


def test_no_engine_fails_with_the_fix(tmp_path: Path) -> None:
    socket = f"unix:///tmp/bake-doctor-{uuid.uuid4().hex[:8]}.sock"
    code, checks = doctor(tmp_path, {**OFFLINE, "DOCKER_HOST": socket})
    assert code == 1
    engine = checks["docker engine"]
    assert engine["status"] == "fail" and socket in engine["detail"], engine
    assert "start dockerd" in engine["fix"]
    assert {checks[name]["status"] for name in ("buildx", "buildkit", "image store disk")} == {"skipped"}

    text = run_bake(["doctor"], {**OFFLINE, "DOCKER_HOST": socket}, tmp_path)
    assert text.returncode == 1 and "Traceback" not in text.stderr
    lines = text.stdout.splitlines()
    failing = next(
        index for index, line in enumerate(lines) if line.startswith("FAIL") and "docker engine" in line
    )
    assert lines[failing + 1].strip().startswith("fix: start dockerd"), lines
    assert lines[-1].startswith("1 check failed (docker engine)")


def test_second_engine_small_disk_then_stopped(tmp_path: Path) -> None:
    engine = SecondEngine(size_mb=512, subnet_octet=37).start(load_images=())
    try:
        code, checks = doctor(tmp_path, {**OFFLINE, "DOCKER_HOST": engine.host})
        assert checks["docker engine"]["status"] == "ok" and engine.host in checks["docker engine"]["detail"]
        assert checks["buildkit"]["status"] == "ok"  # parsed only: the empty engine has no base image
        disk = checks["image store disk"]
        assert disk["status"] == "fail" and str(engine.root / "data") in disk["detail"], disk
        free_gib = float(disk["detail"].split(" GiB free")[0])
        assert 0 < free_gib <= 0.5
        assert "free space" in disk["fix"]
        assert code == 1
    finally:
        engine.stop()
    code, checks = doctor(tmp_path, {**OFFLINE, "DOCKER_HOST": engine.host})
    assert code == 1
    assert checks["docker engine"]["status"] == "fail" and engine.host in checks["docker engine"]["detail"]


@pytest.fixture(scope="module")
def hub_env(hub: HubServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    folder = make_image_classifier(tmp_path_factory.mktemp("doctor") / "model", "resnet", image_size=32)
    hub.add_repo("doctor/private", folder, token=TOKEN)
    return {
        "HF_ENDPOINT": hub.url,
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_OFFLINE": "",
        "DOCKER_HOST": "",
        **LOCAL_TORCH,
    }


def test_hub_reachable_and_token_valid(tmp_path: Path, hub_env: dict[str, str]) -> None:
    code, checks = doctor(tmp_path, {**hub_env, "HF_TOKEN": TOKEN}, "--model", "doctor/private")
    assert checks["hub"]["status"] == "ok" and hub_env["HF_ENDPOINT"] in checks["hub"]["detail"]
    token = checks["hf token"]
    assert token["status"] == "ok" and token["detail"].startswith("valid: user-"), token
    assert TOKEN not in json.dumps(checks)
    assert code == 0, checks


def test_invalid_token_fails_when_the_model_is_on_the_hub(tmp_path: Path, hub_env: dict[str, str]) -> None:
    bad = "hf_not_a_token_" + uuid.uuid4().hex
    code, checks = doctor(tmp_path, {**hub_env, "HF_TOKEN": bad}, "--model", "doctor/private")
    token = checks["hf token"]
    assert token["status"] == "fail" and "HTTP 401" in token["detail"], token
    assert f"{hub_env['HF_ENDPOINT']}/settings/tokens" in token["fix"]
    assert bad not in json.dumps(checks)
    assert code == 1

    local = make_image_classifier(tmp_path / "local", "resnet", image_size=32)
    code, checks = doctor(tmp_path, {**hub_env, "HF_TOKEN": bad}, "--model", str(local))
    assert checks["hf token"]["status"] == "warn" and code == 0, checks


def test_unreachable_endpoint_and_offline(tmp_path: Path, hub_env: dict[str, str]) -> None:
    dead = {**hub_env, "HF_ENDPOINT": "http://127.0.0.1:9", "HF_TOKEN": TOKEN}
    code, checks = doctor(tmp_path, dead, "--model", "doctor/private")
    assert checks["hub"]["status"] == "fail" and "cannot reach http://127.0.0.1:9" in checks["hub"]["detail"]
    assert "HF_ENDPOINT" in checks["hub"]["fix"]
    assert checks["hf token"]["status"] == "skipped"
    assert code == 1

    code, checks = doctor(tmp_path, {**dead, "HF_HUB_OFFLINE": "1"}, "--model", "doctor/private")
    assert checks["hub"]["status"] == "skipped" and "offline" in checks["hub"]["detail"]
    assert "doctor/private" in checks["hub"]["detail"]


def test_configured_targets_bring_their_checks(tmp_path: Path) -> None:
    (tmp_path / "bake.toml").write_text('[build]\ndevice = "cuda"\n')
    code, checks = doctor(tmp_path, OFFLINE)
    nvidia = checks["nvidia"]
    assert nvidia["status"] == "fail" and "no NVIDIA runtime" in nvidia["detail"], nvidia
    assert "NVIDIA Container Toolkit" in nvidia["fix"]
    assert code == 1

    code, checks = doctor(tmp_path, {**OFFLINE, "FLY_API_TOKEN": ""}, "--device", "cpu", "--target", "fly")
    assert checks["fly token"]["status"] == "fail" and "FLY_API_TOKEN" in checks["fly token"]["fix"]
    assert checks["flyctl"]["status"] == "ok" and checks["nvidia"]["status"] == "skipped"
    assert code == 1
    code, checks = doctor(
        tmp_path, {**OFFLINE, "FLY_API_TOKEN": "fly-token"}, "--device", "cpu", "--target", "fly"
    )
    assert checks["fly token"]["status"] == "ok" and code == 0
    code, checks = doctor(tmp_path, {**OFFLINE, "FLY_API_TOKEN": "fly-token"}, "--target", "fly")
    assert checks["fly token"]["status"] == "fail" and "GPU" in checks["fly token"]["detail"]

    code, checks = doctor(
        tmp_path, {**OFFLINE, "KUBECONFIG": str(tmp_path / "none")}, "--target", "kubernetes"
    )
    kubectl = checks["kubectl"]
    assert kubectl["status"] == "warn" and "no current context" in kubectl["detail"], kubectl
    assert checks["nvidia"]["status"] == "skipped" and code == 0

    code, checks = doctor(tmp_path, OFFLINE, "--device", "cpu", "--target", "docker")
    assert checks["remote engine"]["status"] == "fail" and "--host" in checks["remote engine"]["fix"]
    code, checks = doctor(
        tmp_path, OFFLINE, "--device", "cpu", "--target", "docker", "--host", "unix:///var/run/docker.sock"
    )
    assert checks["remote engine"]["status"] == "ok" and code == 0, checks
