"""Reading what an image is from its labels, on a given engine."""

from __future__ import annotations

from python_on_whales import DockerClient
from python_on_whales.exceptions import NoSuchImage

from bake.docker import docker_errors
from bake.errors import LaunchFailed
from bake.labels import ImageFacts, is_bake_image
from serve.contract.errors import SettingsError


def read_facts(client: DockerClient, image: str) -> ImageFacts:
    """The facts an image built by bake carries; `LaunchFailed` if it is missing or not bake's."""
    with docker_errors(f"inspect the image {image}", "check `docker image ls`"):
        try:
            inspected = client.image.inspect(image)
        except NoSuchImage:
            raise LaunchFailed(
                f"image {image} is not on this Docker engine", "build it with `bake build`"
            ) from None
    labels = inspected.config.labels or {}
    if not is_bake_image(labels):
        raise LaunchFailed(
            f"image {image} was not built by bake (it has no dev.bake.* labels)", "build it with bake"
        )
    try:
        return ImageFacts.from_labels(labels)
    except (KeyError, ValueError, SettingsError) as error:
        raise LaunchFailed(
            f"image {image} has unreadable bake labels ({error})", "rebuild it with this bake"
        ) from None
