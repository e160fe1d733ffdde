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
from dataclasses import dataclass
from typing import TextIO
from urllib.parse import urlsplit

from python_on_whales import Container, DockerClient
from python_on_whales.exceptions import DockerException, NoSuchContainer

from bake.errors import Interrupted, LaunchFailed
from bake.labels import ImageFacts
from bake.launch.readiness import wait_ready

LAUNCHED = "dev.bake.launched"
"""Label on every container bake launched (ps, logs and stop find them by it)."""
IMAGE = "dev.bake.image"
HOST_PORT = "dev.bake.host-port"
_STOP_MARGIN_S = 5


@dataclass(frozen=True)
class Launched:
    """A container serving an image."""

    name: str
    url: str
    image: str
    ready_seconds: float


def engine_address(docker_host: str) -> str:
    """The address where a container's published ports answer: the remote host, or 127.0.0.1."""
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
    """Replace any container called `name` with one serving `image`, wait for /ready, describe it."""
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
    try:
        seconds = wait_ready(
            url, timeout_s=ready_timeout_s, output=output, died=lambda: _exited(client, name)
        )
    except KeyboardInterrupt:
        raise Interrupted(
            f"interrupted while {name} was starting; the container goes on starting at {url}",
            f"see `bake ps` and `bake logs {name}`; `bake stop {name} --rm` removes it",
        ) from None
    return Launched(name=name, url=url, image=image, ready_seconds=seconds)


def wake(
    client: DockerClient, name: str, *, address: str, ready_timeout_s: float, output: TextIO
) -> Launched:
    """Start a stopped bake container again (after an idle exit) and wait until it is ready."""
    container = find(client, name)
    if not container.state.running:
        client.container.start(name)
    port = int((container.config.labels or {}).get(HOST_PORT, "0"))
    url = f"http://{address}:{port}"
    seconds = wait_ready(url, timeout_s=ready_timeout_s, output=output, died=lambda: _exited(client, name))
    return Launched(
        name=name, url=url, image=(container.config.labels or {}).get(IMAGE, ""), ready_seconds=seconds
    )


def find(client: DockerClient, name: str) -> Container:
    """The bake container called `name`; `LaunchFailed` if there is none."""
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
    return client.container.list(all=True, filters={"label": f"{LAUNCHED}=1"})


def url_of(container: Container, address: str) -> str:
    """Where a launched container answers."""
    return f"http://{address}:{(container.config.labels or {}).get(HOST_PORT, '?')}"


def stop(client: DockerClient, name: str, *, remove: bool) -> None:
    """Stop a bake container gracefully (SIGTERM, drain), optionally removing it."""
    find(client, name)
    client.container.stop(name)
    if remove:
        client.container.remove(name)


def transfer_image(source: DockerClient, destination: DockerClient, image: str, *, registry: str) -> str:
    """Make `image` (present on `source`) available on `destination`; return the reference to run there."""
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
            f"cannot move {image} to the target engine: {_last_line(error)}",
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
    runtimes = client.system.info().runtimes or {}
    if "nvidia" not in runtimes:
        raise LaunchFailed(
            "the image was built for CUDA but this Docker engine has no NVIDIA runtime",
            "install the NVIDIA Container Toolkit on the host, or rebuild with --device cpu",
        )


def _exited(client: DockerClient, name: str) -> str | None:
    try:
        state = client.container.inspect(name).state
    except NoSuchContainer:
        return "the container was removed"
    if state.running or state.restarting:
        return None
    logs = client.container.logs(name, tail=5)
    last = [line for line in str(logs).splitlines() if line.strip()]
    return f"exit status {state.exit_code}" + (f", last log line: {last[-1].strip()}" if last else "")


def _run_error(error: DockerException, image: str, host_port: int) -> LaunchFailed:
    text = (error.stderr or str(error)).lower()
    if "port is already allocated" in text or "address already in use" in text:
        return LaunchFailed(f"port {host_port} is already in use", "pass --host-port with a free port")
    if "no such image" in text or "not found" in text:
        return LaunchFailed(f"image {image} is not on this Docker engine", "build it with `bake build` first")
    return LaunchFailed(f"docker could not start {image}: {_last_line(error)}", "see the message above")


def _remove_quietly(client: DockerClient, name: str) -> None:
    try:
        client.container.remove(name, force=True)
    except DockerException:
        pass


def _last_line(error: DockerException) -> str:
    lines = [line for line in (error.stderr or str(error)).splitlines() if line.strip()]
    return lines[-1].strip() if lines else "unknown error"
