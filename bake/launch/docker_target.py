"""The `local` and `docker` targets: a named container on a Docker engine, here or remote.

- The container is named (default `bake-<model>`); launching again replaces it cleanly: the old one is
  stopped with the server's drain time, then removed.
- Restart policy `on-failure`: a crash restarts the server, but the idle timeout's clean exit (status 0)
  leaves the container stopped until `bake launch --wake` or `bake predict` starts it again.
- CUDA images get `--gpus all`, and a clear error when the engine has no NVIDIA runtime.
- On a remote engine (`--host ssh://user@box` or `tcp://box:2376`) the image arrives through a registry
  (`--registry`: tag, push from here, pull there) or, without one, streamed: `docker save | docker load`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TextIO
from urllib.parse import urlsplit

from python_on_whales import Container, DockerClient
from python_on_whales.exceptions import DockerException, NoSuchContainer

from bake.docker import docker_errors, last_line
from bake.errors import Interrupted, LaunchFailed
from bake.labels import ImageFacts
from bake.launch.container_logs import LogFollower
from bake.launch.readiness import wait_ready

LAUNCHED = "dev.bake.launched"
"""Label on every container bake launched (ps, logs and stop find them by it)."""
IMAGE = "dev.bake.image"
HOST_PORT = "dev.bake.host-port"
_STOP_MARGIN_S = 5
_SEE_PS = "see `docker ps -a` and `bake ps`"


@dataclass(frozen=True)
class Launched:
    """A container serving an image."""

    name: str
    url: str
    image: str
    ready_seconds: float


def engine_address(docker_host: str) -> str:
    """The address where a container's published ports answer: the engine's host (from --host or
    DOCKER_HOST), or 127.0.0.1 for a local socket."""
    if not docker_host or docker_host.startswith(("unix://", "npipe://")):
        return "127.0.0.1"
    return urlsplit(docker_host).hostname or "127.0.0.1"


def launch_container(
    client: DockerClient,
    image: str,
    facts: ImageFacts,
    *,
    name: str,
    host_port: int,
    address: str,
    env: dict[str, str],
    ready_timeout_s: float,
    output: TextIO,
) -> Launched:
    """Replace any container called `name` with one serving `image`, wait for /ready (showing its log),
    describe it."""
    with docker_errors(f"replace the container {name}", _SEE_PS):
        _remove_previous(client, name)
    gpus = None
    if facts.device == "cuda":
        _require_nvidia_runtime(client)
        gpus = "all"
    labels = {LAUNCHED: "1", IMAGE: image, HOST_PORT: str(host_port)}
    try:
        client.run(
            image,
            detach=True,
            name=name,
            publish=[(host_port, facts.port)],
            envs=env,
            labels=labels,
            restart="on-failure",
            gpus=gpus,
            pull="never",
            stop_timeout=math.ceil(facts.serve.drain_timeout_s) + _STOP_MARGIN_S,
        )
    except DockerException as error:
        _remove_quietly(client, name)
        raise _run_error(error, image, host_port) from None
    url = f"http://{address}:{host_port}"
    seconds = _wait(client, name, url, ready_timeout_s, output, since=None)
    return Launched(name=name, url=url, image=image, ready_seconds=seconds)


def wake(
    client: DockerClient, name: str, *, address: str, ready_timeout_s: float, output: TextIO
) -> Launched:
    """Start a stopped bake container again (after an idle exit) and wait until it is ready."""
    container = find(client, name)
    started = time.time()
    if not container.state.running:
        with docker_errors(f"start {name}", f"see `bake logs {name}`"):
            client.container.start(name)
    port = int((container.config.labels or {}).get(HOST_PORT, "0"))
    url = f"http://{address}:{port}"
    seconds = _wait(client, name, url, ready_timeout_s, output, since=started)
    return Launched(
        name=name, url=url, image=(container.config.labels or {}).get(IMAGE, ""), ready_seconds=seconds
    )


def _wait(
    client: DockerClient, name: str, url: str, timeout_s: float, output: TextIO, *, since: float | None
) -> float:
    """`wait_ready` for the container `name`, following its log (from `since`, a Unix time, or its start);
    Ctrl-C says what is left running."""
    try:
        with LogFollower(client, name, since=since) as logs:
            return wait_ready(
                url, timeout_s=timeout_s, output=output, died=lambda: _exited(client, name), logs=logs
            )
    except KeyboardInterrupt:
        raise Interrupted(
            f"stopped waiting for {name} at {url}; the container keeps starting",
            f"watch it with `bake logs -f {name}`, or stop it with `bake stop {name}`",
        ) from None


def find(client: DockerClient, name: str) -> Container:
    """The bake container called `name`; `LaunchFailed` if there is none."""
    with docker_errors(f"inspect the container {name}", _SEE_PS):
        try:
            container = client.container.inspect(name)
        except NoSuchContainer:
            raise LaunchFailed(
                f"no container called {name}", "see `bake ps` for what runs, or launch one"
            ) from None
    if (container.config.labels or {}).get(LAUNCHED) != "1":
        raise LaunchFailed(f"container {name} was not launched by bake", "pass the name of a bake container")
    return container


def list_launched(client: DockerClient) -> list[Container]:
    """Every container bake launched on this engine, running or stopped."""
    with docker_errors("list the containers", "check `docker ps -a`"):
        return client.container.list(all=True, filters={"label": f"{LAUNCHED}=1"})


def url_of(container: Container, address: str) -> str:
    """Where a launched container answers."""
    return f"http://{address}:{(container.config.labels or {}).get(HOST_PORT, '?')}"


def stop(client: DockerClient, name: str, *, remove: bool) -> None:
    """Stop a bake container gracefully (SIGTERM, drain), optionally removing it."""
    find(client, name)
    with docker_errors(f"stop {name}", _SEE_PS):
        client.container.stop(name)
    if remove:
        with docker_errors(f"remove {name}", _SEE_PS):
            client.container.remove(name)


def print_logs(client: DockerClient, name: str, output: TextIO, *, follow: bool, tail: int | None) -> None:
    """Write the container's log to `output` (with `follow`, until it stops or Ctrl-C)."""
    find(client, name)
    with docker_errors(f"read the log of {name}", _SEE_PS):
        if not follow:
            output.write(str(client.container.logs(name, tail=tail)) + "\n")
            return
        for _, line in client.container.logs(name, follow=True, stream=True, tail=tail):
            output.write(line.decode(errors="replace"))
            output.flush()


def transfer_image(source: DockerClient, destination: DockerClient, image: str, *, registry: str) -> str:
    """Make `image` (present on `source`) available on `destination`; return the reference to run there."""
    with docker_errors(f"compare {image} on both engines", "check the connection to --host"):
        wanted = source.image.inspect(image).id
        if destination.image.exists(image) and destination.image.inspect(image).id == wanted:
            return image
    try:
        if registry:
            remote = f"{registry.rstrip('/')}/{image}"
            source.image.tag(image, remote)
            source.image.push(remote)
            destination.image.pull(remote, quiet=True)
            return remote
        saved = source.image.save(image)
        assert saved is not None
        destination.image.load(saved, quiet=True)
    except DockerException as error:
        raise LaunchFailed(
            f"cannot move {image} to the target engine: {last_line(error)}",
            "check --registry (and `docker login` to it), or the connection to --host",
        ) from None
    return image


def _remove_previous(client: DockerClient, name: str) -> None:
    try:
        container = client.container.inspect(name)
    except NoSuchContainer:
        return
    if (container.config.labels or {}).get(LAUNCHED) != "1":
        raise LaunchFailed(
            f"a container called {name} exists and was not launched by bake",
            "pass --name to use another name",
        )
    if container.state.running:
        client.container.stop(name)
    client.container.remove(name, force=True)


def _require_nvidia_runtime(client: DockerClient) -> None:
    with docker_errors("read the engine's runtimes", "check `docker info`"):
        runtimes = client.system.info().runtimes or {}
    if "nvidia" not in runtimes:
        raise LaunchFailed(
            "the image was built for CUDA but this Docker engine has no NVIDIA runtime",
            "install the NVIDIA Container Toolkit on the host, or rebuild with --device cpu",
        )


def _exited(client: DockerClient, name: str) -> str | None:
    with docker_errors(f"inspect the container {name}", _SEE_PS):
        try:
            state = client.container.inspect(name).state
        except NoSuchContainer:
            return "the container was removed"
    if state.running or state.restarting:
        return None
    with docker_errors(f"read the log of {name}", _SEE_PS):
        logs = client.container.logs(name, tail=5)
    last = [line for line in str(logs).splitlines() if line.strip()]
    return f"exit status {state.exit_code}" + (f", last log line: {last[-1].strip()}" if last else "")


def _run_error(error: DockerException, image: str, host_port: int) -> LaunchFailed:
    text = (error.stderr or str(error)).lower()
    if "port is already allocated" in text or "address already in use" in text:
        return LaunchFailed(f"port {host_port} is already in use", "pass --host-port with a free port")
    if "no such image" in text or "not found" in text:
        return LaunchFailed(f"image {image} is not on this Docker engine", "build it with `bake build` first")
    return LaunchFailed(f"docker could not start {image}: {last_line(error)}", "see the message above")


def _remove_quietly(client: DockerClient, name: str) -> None:
    try:
        client.container.remove(name, force=True)
    except DockerException:
        pass
