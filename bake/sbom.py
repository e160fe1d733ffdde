"""The software bill of materials of a built image, kept next to the project.

The build writes a CycloneDX document into the image (`serve.contract.image.SBOM`, made by the image's own
interpreter: `bake/image/sbom.py`); `bake build` copies it out to `.bake/sbom/<image>.cdx.json` beside
bake.toml, where scanners and auditors read it without running the image.
"""

from __future__ import annotations

import re
from pathlib import Path

from python_on_whales import DockerClient
from python_on_whales.exceptions import DockerException

from bake.errors import BuildFailed
from serve.contract import image

SBOM_DIR = Path(".bake") / "sbom"


def sbom_path(directory: Path, tag: str) -> Path:
    """Where the SBOM of image `tag` is kept in the project `directory`."""
    return directory.resolve() / SBOM_DIR / (re.sub(r"[^A-Za-z0-9_.-]+", "_", tag) + ".cdx.json")


def save_sbom(client: DockerClient, tag: str, directory: Path) -> Path:
    """Copy the SBOM out of image `tag` (a created, never started container) into the project `directory`."""
    destination = sbom_path(directory, tag)
    destination.parent.mkdir(parents=True, exist_ok=True)
    try:
        container = client.container.create(tag)
        try:
            client.container.copy((container.id, image.SBOM), destination)
        finally:
            client.container.remove(container.id, force=True)
    except DockerException as error:
        raise BuildFailed(
            f"the image {tag} was built but its SBOM could not be copied out of it ({error.stderr or error})",
            f"find it in the image at {image.SBOM}",
        ) from None
    return destination
