"""Shared pytest fixtures: a local Hub, tiny models, and the environment that points huggingface_hub at it.

The logic lives in `tests.fixtures`; this file only gives it pytest lifetimes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.hub import HubServer
from tests.fixtures.models import make_image_classifier

TINY_IMAGE_SIZE = 64
"""The processor target size of the `tiny_models` (real repos use 224; smaller keeps tests fast)."""


@pytest.fixture(scope="session")
def hub() -> Iterator[HubServer]:
    """A running local Hub for the whole session; tests add repos under ids of their own."""
    with HubServer() as server:
        yield server


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Folders of tiny random-weight image classifiers keyed by architecture: "resnet", "convnext", "vit"."""
    root = tmp_path_factory.mktemp("tiny-models")
    return {
        arch: make_image_classifier(root / arch, arch, image_size=TINY_IMAGE_SIZE)
        for arch in ("resnet", "convnext", "vit")
    }


@pytest.fixture
def hf_env(hub: HubServer, tmp_path: Path) -> dict[str, str]:
    """Environment variables that make a subprocess's huggingface_hub use `hub` and a fresh, empty HF_HOME."""
    return {
        "HF_ENDPOINT": hub.url,
        "HF_HOME": str(tmp_path / "hf-home"),
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }
