"""Finding a model's files in a Hugging Face cache that holds only part of the repository (issue 9).

A cache filled by `hf download --include "*.json" "*.safetensors"` (any `allow_patterns` download) records the
whole repository's file list, so huggingface_hub 2.x's offline `snapshot_download` calls it incomplete. The
runtime must serve from it when the files the task needs are there, and name the missing ones when not.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from huggingface_hub import constants, snapshot_download

from serve.errors import ModelLoadError
from serve.model_source import locate_model
from tests.fixtures import images
from tests.fixtures.hub import HubServer
from tests.fixtures.models import make_image_classifier
from tests.fixtures.servers import ServerProcess


@pytest.fixture(scope="module")
def repo(hub: HubServer, tmp_path_factory: pytest.TempPathFactory) -> str:
    folder = make_image_classifier(
        tmp_path_factory.mktemp("partial") / "clf",
        "resnet",
        image_size=32,
        extra_formats=("bin", "flax", "onnx"),
    )
    hub.add_repo("partial/classifier", folder)
    return "partial/classifier"


def download(hub: HubServer, repo: str, home: Path, patterns: list[str]) -> None:
    snapshot_download(repo, cache_dir=home / "hub", endpoint=hub.url, token=False, allow_patterns=patterns)


def test_a_cache_with_every_needed_file_serves(
    hub: HubServer, repo: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    download(hub, repo, tmp_path, ["*.json", "*.safetensors"])
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    source = locate_model(repo, "main", offline=True)
    assert (source.path / "model.safetensors").is_file() and not (source.path / "pytorch_model.bin").exists()
    assert source.listing is not None and "pytorch_model.bin" in source.listing, (
        "the cache knows the whole repo"
    )
    assert source.detect_task() == "image-classification"
    source.require_files("image-classification", "cpu")  # raises if anything needed were missing


def test_a_missing_needed_file_is_named(
    hub: HubServer, repo: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    download(hub, repo, tmp_path, ["*.json"])
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    source = locate_model(repo, "main", offline=True)
    with pytest.raises(ModelLoadError, match=r"model\.safetensors not in "):
        source.require_files("image-classification", "cpu")


def test_the_server_answers_from_a_partial_cache(hub: HubServer, repo: str, tmp_path: Path) -> None:
    download(hub, repo, tmp_path, ["*.json", "*.safetensors"])
    env = {"BAKE_MODEL": repo, "HF_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1", "BAKE_MAX_BATCH_SIZE": "1"}
    with ServerProcess(env, tmp_path / "server.log") as server:
        response = httpx.post(server.url + "/predict", content=images.photo(64, 48), timeout=30)
        assert response.status_code == 200, response.text
        assert len(response.json()) == 5


def test_the_server_names_the_missing_file(hub: HubServer, repo: str, tmp_path: Path) -> None:
    download(hub, repo, tmp_path, ["config.json", "preprocessor_config.json"])
    env = {"BAKE_MODEL": repo, "HF_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    server = ServerProcess(env, tmp_path / "server.log").start(wait=False)
    assert server.wait(60) == 1
    assert "model.safetensors not in" in server.log()
