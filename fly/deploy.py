"""Deploy a bake image to Fly: write fly.toml, then hand it to flyctl or drive the Machines API directly.

Order of work (every check that can fail without the network runs before the first request):

1. `check_no_gpu`: a CUDA image or a GPU request stops here; Fly ended GPU Machines on 2026-08-01.
2. The token must be there (not for a dry run).
3. fly.toml is written (created, or updated keeping the user's edits). A dry run stops here.
4. The app is created through the Machines API when it does not exist.
5. With flyctl on PATH: `flyctl deploy --config fly.toml --app <app> --image <image> --ha=false`, with
   the token in flyctl's environment; flyctl pushes the image, allocates IPs, rolls the Machines out and
   waits for their checks, honouring everything in fly.toml (including the user's own sections).
   Without flyctl: the app gets a shared IPv4 and an IPv6 address if it has none, the image is pushed to
   registry.fly.io/<app>:bake-<id>, the app's Machine is created (or each of its Machines updated) from
   `machine_config(spec)`, and the deploy waits until every Machine is started and passes `/ready`.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
from python_on_whales import DockerClient

from fly.auth import TOKEN_ENV, require_token
from fly.errors import FlyError
from fly.machines import DEFAULT_API_URL, PROCESS_GROUP, FlyMachines, machine_config
from fly.registry import FLY_REGISTRY, is_in_registry, push_image
from fly.spec import FlyServiceSpec, app_url, check_grace_period_s, check_no_gpu
from fly.toml import write_fly_toml

HEALTH_MARGIN_S = 120
"""How long past the check's grace period a deploy waits for `/ready` to pass."""

logger = logging.getLogger("fly")


@dataclass(frozen=True)
class DeployResult:
    """What a deploy did."""

    app: str
    url: str
    """https://<app>.fly.dev"""
    fly_toml: Path
    fly_toml_text: str
    method: str
    """"dry-run", "flyctl" or "machines-api"."""
    image: str
    """The image reference the Machines run (after a push, the registry.fly.io one)."""
    machine_ids: tuple[str, ...] = ()
    """The Machines created or updated (Machines API path only)."""
    command: tuple[str, ...] = ()
    """The flyctl command line (flyctl path only; it never holds the token)."""


def deploy(
    spec: FlyServiceSpec,
    token: str | None,
    *,
    fly_toml: str | os.PathLike[str],
    dry_run: bool = False,
    flyctl: str | None = "flyctl",
    api_url: str = DEFAULT_API_URL,
    transport: httpx.BaseTransport | None = None,
    docker: DockerClient | None = None,
    registry: str = FLY_REGISTRY,
    poll_interval_s: float = 2.0,
) -> DeployResult:
    """Write `fly_toml` for `spec` and, unless `dry_run`, deploy it to Fly with `token`.

    `flyctl` is the flyctl command (looked up on PATH) to deploy with; when it is not found, or None, the
    Machines API at `api_url` is used and the image pushed with `docker` to `registry`. Raises
    `FlyGpuUnsupported`, `FlyAuthError`, `FlyConfigError`, `FlyApiError` or `FlyError`.
    """
    check_no_gpu(spec)
    secret = None if dry_run else require_token(token)
    path = Path(fly_toml)
    text = write_fly_toml(path, spec)
    result = DeployResult(
        app=spec.app,
        url=app_url(spec.app),
        fly_toml=path,
        fly_toml_text=text,
        method="dry-run",
        image=spec.image,
    )
    if secret is None:
        return result
    flyctl_path = shutil.which(flyctl) if flyctl else None
    with FlyMachines(secret, api_url, transport=transport) as api:
        _ensure_app(api, spec, poll_interval_s)
        if flyctl_path:
            command = _run_flyctl(flyctl_path, spec, path, secret)
            return replace(result, method="flyctl", command=command)
        _ensure_public_ips(api, spec.app)
        image = spec.image
        if not is_in_registry(image, spec.app, registry):
            image = push_image(image, spec.app, secret, docker=docker, registry=registry)
        machine_ids = _roll_out(api, spec, image, poll_interval_s)
    return replace(result, method="machines-api", image=image, machine_ids=machine_ids)


def flyctl_command(flyctl: str, spec: FlyServiceSpec, fly_toml: Path) -> list[str]:
    """The `flyctl deploy` command line for `spec` (the token goes in the environment, not here)."""
    return [
        flyctl,
        "deploy",
        "--config",
        str(fly_toml),
        "--app",
        spec.app,
        "--image",
        spec.image,
        "--ha=false",
    ]


def _run_flyctl(flyctl: str, spec: FlyServiceSpec, fly_toml: Path, token: str) -> tuple[str, ...]:
    command = flyctl_command(flyctl, spec, fly_toml)
    logger.info("running %s", " ".join(command))
    completed = subprocess.run(command, env={**os.environ, TOKEN_ENV: token}, check=False)
    if completed.returncode != 0:
        raise FlyError(
            f"flyctl deploy exited with status {completed.returncode}", "read flyctl's output above"
        )
    return tuple(command)


def _ensure_app(api: FlyMachines, spec: FlyServiceSpec, poll_interval_s: float) -> None:
    if api.get_app(spec.app) is not None:
        return
    logger.info("creating Fly app %s in organization %s", spec.app, spec.org)
    api.create_app(spec.app, spec.org)
    for _ in range(10):
        if api.get_app(spec.app) is not None:
            return
        time.sleep(poll_interval_s)
    raise FlyError(f"Fly app {spec.app} was created but does not show up", "retry the deploy in a minute")


def _ensure_public_ips(api: FlyMachines, app: str) -> None:
    """Give the app a shared IPv4 and a dedicated IPv6 address, as flyctl does on a first deploy."""
    if any(not ip.get("ip", "").startswith("fdaa:") for ip in api.list_ip_assignments(app)):
        return
    for kind in ("shared_v4", "v6"):
        logger.info("allocating a %s address for %s", kind, app)
        api.assign_ip(app, kind)


def _roll_out(api: FlyMachines, spec: FlyServiceSpec, image: str, poll_interval_s: float) -> tuple[str, ...]:
    config = machine_config(spec, image)
    ours = [machine for machine in api.list_machines(spec.app) if _is_app_machine(machine)]
    started: list[dict[str, Any]] = []
    for machine in ours:
        logger.info("updating Machine %s of %s", machine["id"], spec.app)
        started.append(api.update_machine(spec.app, machine["id"], config))
    if not ours:
        logger.info("creating a Machine for %s in %s", spec.app, spec.primary_region)
        started = [api.create_machine(spec.app, config, region=spec.primary_region)]
    timeout_s = check_grace_period_s(spec) + HEALTH_MARGIN_S
    for machine in started:
        logger.info(
            "waiting up to %.0f s for Machine %s to start and pass its /ready check", timeout_s, machine["id"]
        )
        api.wait_for_state(
            spec.app, machine["id"], "started", version=machine.get("instance_id"), timeout_s=timeout_s
        )
        _wait_ready(api, spec.app, machine["id"], timeout_s, poll_interval_s)
    return tuple(machine["id"] for machine in started)


def _is_app_machine(machine: dict[str, Any]) -> bool:
    metadata = (machine.get("config") or {}).get("metadata") or {}
    return metadata.get("fly_process_group", PROCESS_GROUP) == PROCESS_GROUP and machine.get("state") not in (
        "destroyed",
        "destroying",
    )


def _wait_ready(
    api: FlyMachines, app: str, machine_id: str, timeout_s: float, poll_interval_s: float
) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        checks = api.get_machine(app, machine_id).get("checks") or []
        if checks and all(check.get("status") == "passing" for check in checks):
            logger.info("Machine %s passes its checks", machine_id)
            return
        if time.monotonic() >= deadline:
            raise FlyError(
                f"Machine {machine_id} did not pass its /ready check within {timeout_s:.0f} s",
                f"read its logs: fly logs -a {app}",
            )
        time.sleep(poll_interval_s)
