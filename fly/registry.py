"""Push a local image to Fly's registry, where Machines pull it from.

Fly's registry is `registry.fly.io/<app>:<tag>`, user `x`, the API token as password. The tag is
`bake-<first 12 hex digits of the image id>`: the same image always gets the same reference, a new build a
new one, so a Machine update never depends on a moving tag.

The Docker client is a parameter so the caller decides which engine and which Docker config directory
are used; the login is stored there, as `flyctl auth docker` would store it.
"""

from __future__ import annotations

import logging

from python_on_whales import DockerClient
from python_on_whales.exceptions import DockerException, NoSuchImage

from fly.errors import FlyAuthError, FlyConfigError, FlyError

FLY_REGISTRY = "registry.fly.io"
REGISTRY_USER = "x"

logger = logging.getLogger("fly")


def remote_reference(app: str, image_id: str, registry: str = FLY_REGISTRY) -> str:
    """`<registry>/<app>:bake-<12 hex digits of image_id>`, the reference a pushed image gets."""
    digest = image_id.split(":", 1)[-1]
    return f"{registry}/{app}:bake-{digest[:12]}"


def is_in_registry(image: str, app: str, registry: str = FLY_REGISTRY) -> bool:
    """Whether `image` already names this app's repository in the registry (nothing to push)."""
    return image.startswith(f"{registry}/{app}:") or image.startswith(f"{registry}/{app}@")


def push_image(
    image: str,
    app: str,
    token: str,
    *,
    docker: DockerClient | None = None,
    registry: str = FLY_REGISTRY,
) -> str:
    """Push `image` to `registry` as `<app>:bake-<id>`, logged in as `x` with `token`; return that reference.

    Raises `FlyConfigError` when the engine has no such image, `FlyAuthError` when the registry refuses
    the token, and `FlyError` when the push fails.
    """
    client = docker or DockerClient()
    try:
        image_id = client.image.inspect(image).id
    except NoSuchImage:
        raise FlyConfigError(
            f"the Docker engine has no image {image}", "build it first (bake build)"
        ) from None
    remote = remote_reference(app, image_id, registry)
    try:
        client.login(server=registry, username=REGISTRY_USER, password=token)
    except DockerException as error:
        raise FlyAuthError(
            f"{registry} refused the Fly token (docker login exited with {error.return_code})",
            "check FLY_API_TOKEN; the app must exist before its repository accepts pushes",
        ) from None
    logger.info("pushing %s as %s", image, remote)
    try:
        client.image.tag(image, remote)
        client.image.push(remote)
    except DockerException as error:
        detail = (error.stderr or "").strip().splitlines()
        raise FlyError(
            f"pushing {remote} failed (exit {error.return_code})" + (f": {detail[-1]}" if detail else ""),
            "read docker's output above; check the network and that the app exists",
        ) from None
    return remote
