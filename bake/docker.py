"""Reaching a Docker engine (local or remote) through python-on-whales, with clear errors when it is
missing, and `docker_errors` to turn what the engine refuses into one line that says what bake was doing."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager

from python_on_whales import DockerClient
from python_on_whales.exceptions import DockerException

from bake.errors import DockerFailed, DockerUnavailable


def docker_client(host: str = "") -> DockerClient:
    """A client for the engine at `host` (ssh://, tcp://, unix://; empty: the local default)."""
    if shutil.which("docker") is None:
        raise DockerUnavailable(
            "the docker command-line client is not installed",
            "install Docker (Debian: apt-get install docker.io)",
        )
    return DockerClient(host=host or None)


def ensure_engine(client: DockerClient, *, buildx: bool = False) -> None:
    """Raise `DockerUnavailable` unless the engine answers (and, with `buildx`, the buildx plugin exists)."""
    try:
        # Debian's docker CLI 26 exits 0 from `docker info --format` when no engine answers, reporting
        # the error in the output instead: an empty server version says the same.
        reason = "" if client.system.info().server_version else "docker info reports no server"
    except DockerException as error:
        reason = last_line(error)
    if reason:
        where = client.client_config.host or "the local socket"
        raise DockerUnavailable(
            f"no Docker engine answers at {where} ({reason})",
            "start dockerd (or Docker Desktop), or point DOCKER_HOST / --host at a running engine",
        )
    if buildx:
        try:
            client.buildx.version()
        except DockerException:
            raise DockerUnavailable(
                "the Docker buildx plugin is missing", "install it (Debian: apt-get install docker-buildx)"
            ) from None


@contextmanager
def docker_errors(action: str, fix: str) -> Iterator[None]:
    """Raise a Docker SDK error from the block as `DockerFailed("docker could not <action>: <why>", fix)`."""
    try:
        yield
    except DockerException as error:
        raise DockerFailed(f"docker could not {action}: {last_line(error)}", fix) from None


_DAEMON_SAYS = "Error response from daemon:"


def last_line(error: DockerException) -> str:
    """The docker CLI's own explanation of `error`: the engine's last answer if it gave one (the CLI's own
    summary often follows it, e.g. "failed to start containers: NAME"), else the last line on stderr."""
    text = (error.stderr or str(error)).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    answers = [line.removeprefix(_DAEMON_SAYS).strip() for line in lines if line.startswith(_DAEMON_SAYS)]
    return (answers or lines or ["no answer"])[-1]
