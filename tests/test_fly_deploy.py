"""Deploys against a local Machines API that checks every request against Fly's OpenAPI spec, and through a
fake flyctl (flyctl cannot be installed here; the fake only records its command line)."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from fly import (
    FlyApiError,
    FlyAuthError,
    FlyError,
    FlyGpuUnsupported,
    FlyMachines,
    FlyServiceSpec,
    deploy,
    machine_config,
    render_fly_toml,
    token_from_env,
    vm_size,
)
from tests.fixtures.fly_api import FlyApiServer

TOKEN = "FlyV1 fm2_test-secret-4f1c9a"
SPEC = FlyServiceSpec(
    app="resnet-demo",
    image="registry.fly.io/resnet-demo:bake-0123456789ab",  # already in Fly's registry: nothing to push
    max_batch_size=8,
    max_queue=256,
    warmup_seconds=12.3,
    drain_seconds=30,
    weights_bytes=102_000_000,
    env={"BAKE_MAX_BATCH_SIZE": "8"},
)


@pytest.fixture
def fly_api() -> Iterator[FlyApiServer]:
    with FlyApiServer(token=TOKEN) as server:
        yield server


def api_deploy(
    server: FlyApiServer, spec: FlyServiceSpec, fly_toml: Path, token: str | None = TOKEN, **kwargs
):
    return deploy(
        spec, token, fly_toml=fly_toml, flyctl=None, api_url=server.url, poll_interval_s=0.01, **kwargs
    )


def assert_all_valid(server: FlyApiServer) -> None:
    assert server.requests, "the deploy made no request"
    assert server.invalid_requests() == []
    assert all(request.operation for request in server.requests)


# -- refused before the network ------------------------------------------------------------------------------


@pytest.mark.parametrize("changes", [{"device": "cuda"}, {"gpu_kind": "a100-80gb"}])
def test_gpu_fails_before_any_request_or_file(fly_api: FlyApiServer, tmp_path: Path, changes: dict) -> None:
    with pytest.raises(FlyGpuUnsupported) as caught:
        api_deploy(fly_api, dataclasses.replace(SPEC, **changes), tmp_path / "fly.toml")

    assert fly_api.requests == []
    assert not (tmp_path / "fly.toml").exists()
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("Fly.io ended GPU Machines on 2026-08-01")
    for target in ("--target local", "--target docker", "--target kubernetes", "--device cpu"):
        assert target in message


def test_gpu_in_the_user_s_fly_toml_fails_before_any_request(fly_api: FlyApiServer, tmp_path: Path) -> None:
    path = tmp_path / "fly.toml"
    path.write_text(render_fly_toml(SPEC).replace("[[vm]]\n", "[[vm]]\n  gpus = 1\n"), encoding="utf-8")
    before = path.read_text(encoding="utf-8")

    with pytest.raises(FlyGpuUnsupported, match="gpus = 1"):
        api_deploy(fly_api, SPEC, path)

    assert fly_api.requests == []
    assert path.read_text(encoding="utf-8") == before


@pytest.mark.parametrize("token", [None, "", "  \n"])
def test_missing_token_is_one_clear_line(fly_api: FlyApiServer, tmp_path: Path, token: str | None) -> None:
    with pytest.raises(FlyAuthError) as caught:
        api_deploy(fly_api, SPEC, tmp_path / "fly.toml", token=token)

    assert str(caught.value) == (
        "FLY_API_TOKEN is not set, and deploying to Fly needs an API token: set "
        "FLY_API_TOKEN to a Fly token (fly tokens create deploy -a <app>, or fly tokens "
        "create org)"
    )
    assert fly_api.requests == []


def test_token_comes_from_fly_api_token() -> None:
    assert token_from_env({"FLY_API_TOKEN": f" {TOKEN}\n"}) == TOKEN
    assert token_from_env({"FLY_API_TOKEN": " "}) is None
    assert token_from_env({}) is None


def test_dry_run_writes_the_file_and_nothing_else(fly_api: FlyApiServer, tmp_path: Path) -> None:
    result = api_deploy(fly_api, SPEC, tmp_path / "fly.toml", token=None, dry_run=True)

    assert result.method == "dry-run"
    assert (
        result.fly_toml_text == (tmp_path / "fly.toml").read_text(encoding="utf-8") == render_fly_toml(SPEC)
    )
    assert result.url == "https://resnet-demo.fly.dev"
    assert fly_api.requests == []


# -- the Machines API path -----------------------------------------------------------------------------------


def test_deploy_creates_the_app_its_ips_and_one_machine(fly_api: FlyApiServer, tmp_path: Path) -> None:
    result = api_deploy(fly_api, SPEC, tmp_path / "fly.toml")

    assert_all_valid(fly_api)
    assert result.method == "machines-api"
    assert result.url == "https://resnet-demo.fly.dev"
    assert fly_api.apps["resnet-demo"]["organization"]["slug"] == "personal"
    assert [request.body for request in fly_api.calls("Apps_create")] == [
        {"name": "resnet-demo", "org_slug": "personal"}
    ]
    assert sorted(request.body["type"] for request in fly_api.calls("App_IPAssignments_create")) == [
        "shared_v4",
        "v6",
    ]
    [machine] = fly_api.machine_list("resnet-demo")
    assert result.machine_ids == (machine["id"],)
    assert machine["region"] == "iad"

    config = machine["config"]
    assert config["image"] == SPEC.image == result.image
    assert config["env"] == {
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "PORT": "8080",
        "BAKE_MAX_BATCH_SIZE": "8",
    }
    assert config["guest"] == {"cpu_kind": "shared", "cpus": 1, "memory_mb": 1280}
    [service] = config["services"]
    assert service["autostart"] is True
    assert service["autostop"] == "stop"
    assert service["min_machines_running"] == 0
    assert service["internal_port"] == 8080
    assert service["concurrency"] == {"type": "requests", "soft_limit": 8, "hard_limit": 264}
    [check] = service["checks"]
    assert (check["type"], check["path"], check["grace_period"]) == ("http", "/ready", "29s")
    assert config["stop_config"] == {"signal": "SIGTERM", "timeout": "35s"}
    assert config["metadata"]["fly_process_group"] == "app"

    [wait] = fly_api.calls("Machines_wait")
    assert dict(wait.query) == {"state": "started", "timeout": "60", "version": machine["instance_id"]}
    assert all(request.authorization == f"Bearer {TOKEN}" for request in fly_api.requests)


def test_machine_config_says_what_fly_toml_says() -> None:
    data = json.loads(json.dumps(machine_config(SPEC)))
    from tomlkit import parse

    toml = parse(render_fly_toml(SPEC)).unwrap()
    service = data["services"][0]
    assert data["image"] == toml["build"]["image"]
    assert data["env"] == toml["env"]
    assert service["internal_port"] == toml["http_service"]["internal_port"]
    assert service["autostop"] == toml["http_service"]["auto_stop_machines"]
    assert service["autostart"] == toml["http_service"]["auto_start_machines"]
    assert service["min_machines_running"] == toml["http_service"]["min_machines_running"]
    assert service["concurrency"] == toml["http_service"]["concurrency"]
    assert service["checks"][0]["grace_period"] == toml["http_service"]["checks"][0]["grace_period"]
    assert data["stop_config"] == {"signal": toml["kill_signal"], "timeout": toml["kill_timeout"]}
    assert f"{data['guest']['memory_mb']}mb" == toml["vm"][0]["memory"]
    assert vm_size(SPEC).preset == toml["vm"][0]["size"]


def test_second_deploy_updates_the_machine_instead_of_adding_one(
    fly_api: FlyApiServer, tmp_path: Path
) -> None:
    first = api_deploy(fly_api, SPEC, tmp_path / "fly.toml")
    newer = dataclasses.replace(
        SPEC, image="registry.fly.io/resnet-demo:bake-ba9876543210", max_batch_size=16
    )

    second = api_deploy(fly_api, newer, tmp_path / "fly.toml")

    assert_all_valid(fly_api)
    assert second.machine_ids == first.machine_ids
    assert len(fly_api.calls("Apps_create")) == len(fly_api.calls("Machines_create")) == 1
    assert len(fly_api.calls("App_IPAssignments_create")) == 2
    [update] = fly_api.calls("Machines_update")
    assert update.body["config"]["image"] == newer.image
    [machine] = fly_api.machine_list("resnet-demo")
    assert machine["config"]["services"][0]["concurrency"]["soft_limit"] == 16
    assert machine["config"]["services"][0]["autostart"] is True
    assert fly_api.calls("Machines_wait")[-1].query[-1] == ("version", machine["instance_id"])


def test_overrides_reach_the_machine(fly_api: FlyApiServer, tmp_path: Path) -> None:
    spec = dataclasses.replace(
        SPEC,
        auto_stop="suspend",
        auto_start=False,
        min_machines_running=1,
        primary_region="ams",
        internal_port=9000,
        cpu_kind="performance",
    )
    api_deploy(fly_api, spec, tmp_path / "fly.toml")

    assert_all_valid(fly_api)
    [machine] = fly_api.machine_list("resnet-demo")
    service = machine["config"]["services"][0]
    assert (service["autostop"], service["autostart"], service["min_machines_running"]) == (
        "suspend",
        False,
        1,
    )
    assert service["internal_port"] == service["checks"][0]["port"] == 9000
    assert machine["config"]["env"]["PORT"] == "9000"
    assert machine["config"]["guest"] == {"cpu_kind": "performance", "cpus": 1, "memory_mb": 2048}
    assert machine["region"] == "ams"


def test_machines_of_other_process_groups_are_left_alone(fly_api: FlyApiServer, tmp_path: Path) -> None:
    fly_api.apps["resnet-demo"] = {
        "id": "resnet-demo",
        "name": "resnet-demo",
        "organization": {"slug": "personal"},
    }
    fly_api.machines["resnet-demo"], fly_api.ips["resnet-demo"] = {}, []
    worker = dataclasses.replace(SPEC, image="registry.fly.io/resnet-demo:worker")
    with FlyMachines(TOKEN, fly_api.url) as api:
        config = machine_config(worker)
        config["metadata"]["fly_process_group"] = "worker"
        worker_id = api.create_machine("resnet-demo", config, region="iad")["id"]

    api_deploy(fly_api, SPEC, tmp_path / "fly.toml")

    assert_all_valid(fly_api)
    assert fly_api.calls("Machines_update") == []
    machines = {machine["id"]: machine for machine in fly_api.machine_list("resnet-demo")}
    assert len(machines) == 2 and machines[worker_id]["config"]["image"].endswith(":worker")


def test_a_machine_that_needs_a_while_to_get_ready_is_waited_for(
    fly_api: FlyApiServer, tmp_path: Path
) -> None:
    fly_api.failing_check_polls = 3

    api_deploy(fly_api, SPEC, tmp_path / "fly.toml")

    assert len(fly_api.calls("Machines_show")) == 4
    assert fly_api.failing_check_polls == 0


def test_wait_for_state_reports_a_machine_that_never_gets_there(
    fly_api: FlyApiServer, tmp_path: Path
) -> None:
    [machine_id] = api_deploy(fly_api, SPEC, tmp_path / "fly.toml").machine_ids
    fly_api.machines["resnet-demo"][machine_id]["state"] = "stopped"

    with FlyMachines(TOKEN, fly_api.url) as api, pytest.raises(FlyApiError) as caught:
        api.wait_for_state("resnet-demo", machine_id, "started", timeout_s=0)

    assert caught.value.status == 408
    assert_all_valid(fly_api)


def test_api_errors_carry_status_and_message(fly_api: FlyApiServer, tmp_path: Path) -> None:
    fly_api.fail_next("Machines_create", 422, "invalid config.guest.memory_mb")

    with pytest.raises(FlyApiError) as caught:
        api_deploy(fly_api, SPEC, tmp_path / "fly.toml")

    error = caught.value
    assert (error.status, error.api_message) == (422, "invalid config.guest.memory_mb")
    assert (
        str(error)
        == "Fly Machines API POST /apps/resnet-demo/machines answered 422: invalid config.guest.memory_mb"
    )


def test_capacity_errors_suggest_another_region(fly_api: FlyApiServer, tmp_path: Path) -> None:
    fly_api.fail_next(
        "Machines_create", 503, "no capacity for performance-8x in iad", status="insufficient_capacity"
    )

    with pytest.raises(FlyApiError, match="choose another primary_region"):
        api_deploy(fly_api, SPEC, tmp_path / "fly.toml")


def test_a_refused_token_is_an_auth_error_that_does_not_repeat_it(
    fly_api: FlyApiServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = "FlyV1 fm2_wrong-secret-77aa"
    caplog.set_level(logging.DEBUG)

    with pytest.raises(FlyAuthError) as caught:
        api_deploy(fly_api, SPEC, tmp_path / "fly.toml", token=wrong)

    assert "refused the API token" in str(caught.value) and "\n" not in str(caught.value)
    assert wrong not in str(caught.value) and "wrong-secret" not in caplog.text
    assert fly_api.invalid_requests()[0].problem == "missing or wrong Authorization header"


def test_the_token_is_never_logged_or_raised(
    fly_api: FlyApiServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    messages = []
    api_deploy(fly_api, SPEC, tmp_path / "fly.toml")
    fly_api.fail_next("Machines_update", 500, "internal error")
    with pytest.raises(FlyError) as caught:
        api_deploy(fly_api, SPEC, tmp_path / "fly.toml")
    messages.append(str(caught.value))

    assert "fly" in {record.name for record in caplog.records}
    assert "test-secret" not in caplog.text
    assert not any("test-secret" in message for message in messages)
    assert "test-secret" not in (tmp_path / "fly.toml").read_text(encoding="utf-8")


# -- the flyctl path -----------------------------------------------------------------------------------------

FAKE_FLYCTL = """\
#!{python}
import json, os, sys
with open(os.environ["FAKE_FLYCTL_LOG"], "a") as log:
    log.write(json.dumps({{"argv": sys.argv[1:], "token": os.environ.get("FLY_API_TOKEN")}}) + "\\n")
sys.exit(int(os.environ.get("FAKE_FLYCTL_EXIT", "0")))
"""


@pytest.fixture
def fake_flyctl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A `flyctl` on PATH that records its arguments and FLY_API_TOKEN in the returned log file."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "flyctl"
    script.write_text(FAKE_FLYCTL.format(python=sys.executable), encoding="utf-8")
    script.chmod(0o755)
    log = tmp_path / "flyctl.log"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv("FAKE_FLYCTL_LOG", str(log))
    monkeypatch.delenv("FLY_API_TOKEN", raising=False)
    return log


def test_flyctl_deploys_the_image_with_the_written_fly_toml(
    fly_api: FlyApiServer, fake_flyctl: Path, tmp_path: Path
) -> None:
    spec = dataclasses.replace(SPEC, image="bake/resnet-50:3f2a")
    path = tmp_path / "fly.toml"

    result = deploy(spec, TOKEN, fly_toml=path, api_url=fly_api.url)

    [call] = [json.loads(line) for line in fake_flyctl.read_text().splitlines()]
    assert call["argv"] == [
        "deploy",
        "--config",
        str(path),
        "--app",
        "resnet-demo",
        "--image",
        "bake/resnet-50:3f2a",
        "--ha=false",
    ]
    assert call["token"] == TOKEN
    assert TOKEN not in " ".join(result.command)
    assert result.method == "flyctl" and result.url == "https://resnet-demo.fly.dev"
    assert path.read_text(encoding="utf-8") == render_fly_toml(spec)
    assert_all_valid(fly_api)
    assert len(fly_api.calls("Apps_create")) == 1 and fly_api.calls("Machines_create") == []


def test_a_failing_flyctl_is_reported(
    fly_api: FlyApiServer, fake_flyctl: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_FLYCTL_EXIT", "3")

    with pytest.raises(FlyError, match="flyctl deploy exited with status 3"):
        deploy(SPEC, TOKEN, fly_toml=tmp_path / "fly.toml", api_url=fly_api.url)


def test_flyctl_none_forces_the_api_path(fly_api: FlyApiServer, fake_flyctl: Path, tmp_path: Path) -> None:
    result = api_deploy(fly_api, SPEC, tmp_path / "fly.toml")

    assert result.method == "machines-api"
    assert not fake_flyctl.exists()


def test_fly_imports_no_bake_and_of_serve_only_its_contract() -> None:
    code = (
        "import sys, fly\n"
        "print(sorted(m for m in sys.modules "
        "if m.split('.')[0] in ('bake', 'serve', 'torch', 'transformers')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    modules = eval(out)  # a printed list of module names
    assert modules and all(name == "serve" or name.startswith("serve.contract") for name in modules), modules
