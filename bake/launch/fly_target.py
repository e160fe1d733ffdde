"""The `fly` target: the image's labels become a `fly.FlyServiceSpec`; `fly.deploy` does the rest.

The health check's grace period must cover the warm-up, so the warm-up is measured: the image is started
on the local engine until /ready answers (when no local engine can run it, it is estimated from the
weights' size). A CUDA image is refused before anything else runs: Fly ended GPU Machines.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TextIO

from python_on_whales import DockerClient
from python_on_whales.exceptions import DockerException

from bake.config import LaunchSpec
from bake.docker import docker_errors
from bake.errors import LaunchFailed
from bake.labels import ImageFacts
from bake.launch.container_logs import LogFollower
from bake.launch.names import default_name
from bake.launch.readiness import wait_ready
from fly import FLY_REGISTRY, DeployResult, FlyServiceSpec, check_no_gpu, deploy

_ESTIMATE_BASE_S = 20.0
_ESTIMATE_BYTES_PER_S = 200 * 2**20


def fly_spec(
    facts: ImageFacts, image: str, launch: LaunchSpec, env: dict[str, str], warmup_s: float
) -> FlyServiceSpec:
    """What Fly needs to know about `image`, from its labels and the launch settings."""
    serve = facts.serve
    return FlyServiceSpec(
        app=launch.name or default_name(facts.model),
        image=image,
        max_batch_size=serve.max_batch_size,
        max_queue=serve.max_queue,
        warmup_seconds=warmup_s,
        drain_seconds=serve.drain_timeout_s,
        weights_bytes=facts.weights_bytes,
        device=facts.device,
        primary_region=launch.fly_region,
        internal_port=facts.port,
        env=env,
    )


def launch_fly(
    client: DockerClient,
    facts: ImageFacts,
    image: str,
    launch: LaunchSpec,
    env: dict[str, str],
    *,
    fly_toml: Path,
    token: str | None,
    dry_run: bool,
    output: TextIO,
) -> DeployResult:
    """Write fly.toml for `image` and, unless `dry_run`, deploy it."""
    check_no_gpu(fly_spec(facts, image, launch, env, warmup_s=0.0))
    warmup = measure_warmup(client, image, facts.port, timeout_s=launch.ready_timeout_s, output=output)
    if warmup is None:
        warmup = _ESTIMATE_BASE_S + facts.weights_bytes / _ESTIMATE_BYTES_PER_S
        output.write(f"warm-up estimated at {warmup:.0f} s (no local engine could run the image)\n")
    else:
        output.write(f"warm-up measured at {warmup:.1f} s (container start to /ready)\n")
    return deploy(
        fly_spec(facts, image, launch, env, warmup),
        token,
        fly_toml=fly_toml,
        dry_run=dry_run,
        docker=client,
        api_url=launch.fly_api_url,
        registry=launch.registry or FLY_REGISTRY,
    )


def measure_warmup(
    client: DockerClient, image: str, port: int, *, timeout_s: float, output: TextIO
) -> float | None:
    """Seconds from `docker run` to /ready answering 200 on this engine, or None if it cannot run here."""
    started = time.monotonic()
    try:
        container = client.run(image, detach=True, publish=[("127.0.0.1:", port)], pull="never")
    except DockerException:
        return None
    try:
        host_port = int(
            client.container.inspect(container).network_settings.ports[f"{port}/tcp"][0]["HostPort"]
        )
        output.write(f"measuring the warm-up: running {image} here until it is ready\n")
        with LogFollower(client, container.name) as logs:
            wait_ready(f"http://127.0.0.1:{host_port}", timeout_s=timeout_s, output=output, logs=logs)
        return time.monotonic() - started
    except (LaunchFailed, DockerException, KeyError, IndexError, TypeError):
        return None
    finally:
        with docker_errors(f"remove the warm-up container {container.name}", "remove it with `docker rm -f`"):
            client.container.remove(container, force=True)
