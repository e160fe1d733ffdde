"""Pushing to a registry as Fly's: a real Docker engine pushes to Debian's docker-registry on 127.0.0.1, which
checks user `x` and the token as password (htpasswd), as registry.fly.io does."""

from __future__ import annotations

import secrets
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from python_on_whales import DockerClient

from fly import FlyAuthError, FlyConfigError, FlyServiceSpec, deploy, push_image, remote_reference
from tests.fixtures.fly_api import FlyApiServer
from tests.fixtures.registry import LocalRegistry

TOKEN = "FlyV1 fm2_registry-secret-91b7"


def test_remote_reference_is_the_app_repository_tagged_by_image_id() -> None:
    assert remote_reference("demo", "sha256:0123456789abcdef0123") == "registry.fly.io/demo:bake-0123456789ab"
    assert (
        remote_reference("demo", "0123456789abcdef", "127.0.0.1:5000")
        == "127.0.0.1:5000/demo:bake-0123456789ab"
    )


@pytest.fixture(scope="module")
def registry() -> Iterator[LocalRegistry]:
    """A docker-registry that accepts user `x` with password TOKEN, as registry.fly.io does."""
    with LocalRegistry(password=TOKEN) as running:
        yield running


@pytest.fixture
def local_registry(registry: LocalRegistry) -> str:
    """`host:port` of the registry."""
    return registry.address


@pytest.fixture
def docker(tmp_path: Path) -> DockerClient:
    """A client of the local engine whose logins go to a config directory of this test, not ~/.docker."""
    return DockerClient(config=tmp_path / "docker-config")


@pytest.fixture
def tiny_image(docker: DockerClient, tmp_path: Path) -> Iterator[str]:
    """A one-file image made with `docker import` (nothing pulled); removed, with every tag, afterwards."""
    payload = tmp_path / "hello.txt"
    payload.write_text(f"bake fly registry test {secrets.token_hex(8)}\n")
    with tarfile.open(tmp_path / "rootfs.tar", "w") as tar:
        tar.add(payload, arcname="hello.txt")
    reference = f"bake-fly-test:{secrets.token_hex(4)}"
    image = docker.image.import_(tmp_path / "rootfs.tar", tag=reference)
    try:
        yield reference
    finally:
        docker.image.remove(image.id, force=True, prune=True)


@pytest.mark.docker
def test_push_puts_the_image_in_the_app_repository(
    registry: LocalRegistry, local_registry: str, docker: DockerClient, tiny_image: str, tmp_path: Path
) -> None:
    remote = push_image(tiny_image, "demo", TOKEN, docker=docker, registry=local_registry)

    assert remote == remote_reference("demo", docker.image.inspect(tiny_image).id, local_registry)
    assert registry.manifest_status("demo", remote.rsplit(":", 1)[1]) == 200
    assert local_registry in (tmp_path / "docker-config" / "config.json").read_text()


@pytest.mark.docker
def test_a_refused_token_is_an_auth_error(local_registry: str, docker: DockerClient, tiny_image: str) -> None:
    with pytest.raises(FlyAuthError) as caught:
        push_image(tiny_image, "demo", "FlyV1 fm2_not-the-token", docker=docker, registry=local_registry)

    assert "refused the Fly token" in str(caught.value) and "not-the-token" not in str(caught.value)


@pytest.mark.docker
def test_a_missing_image_is_a_config_error(local_registry: str, docker: DockerClient) -> None:
    with pytest.raises(FlyConfigError, match="no image bake-fly-test:absent"):
        push_image("bake-fly-test:absent", "demo", TOKEN, docker=docker, registry=local_registry)


@pytest.mark.docker
def test_api_deploy_pushes_the_local_image_and_runs_the_pushed_reference(
    registry: LocalRegistry, local_registry: str, docker: DockerClient, tiny_image: str, tmp_path: Path
) -> None:
    spec = FlyServiceSpec(
        app="demo",
        image=tiny_image,
        max_batch_size=4,
        max_queue=32,
        warmup_seconds=3,
        drain_seconds=10,
        weights_bytes=1_000_000,
    )
    with FlyApiServer(token=TOKEN) as fly_api:
        result = deploy(
            spec,
            TOKEN,
            fly_toml=tmp_path / "fly.toml",
            flyctl=None,
            api_url=fly_api.url,
            docker=docker,
            registry=local_registry,
            poll_interval_s=0.01,
        )
        [machine] = fly_api.machine_list("demo")
        assert fly_api.invalid_requests() == []

    assert result.image.startswith(f"{local_registry}/demo:bake-")
    assert machine["config"]["image"] == result.image
    assert registry.manifest_status("demo", result.image.rsplit(":", 1)[1]) == 200
