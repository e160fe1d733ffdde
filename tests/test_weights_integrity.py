"""Weights whose sha256 does not match the Hub's are refused (issue 13).

The weights step of the build (`bake/image/fetch_weights.py`, run here as the build runs it: a script with
HF_ENDPOINT set) downloads with huggingface_hub, which checks sizes only. bake passes it the sha256 it
resolved from the Hub's LFS metadata: a file altered on the way (a mirror or a proxy serving other bytes of
the same size) fails the step, and the altered copy is removed from the download cache, so the next build
downloads it again. A Hub that goes away fails the step with one line that bake's build error names.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

from bake.env import read_environment
from bake.hub import ModelFile, ResolvedModel
from bake.plan import plan_build
from tests.fixtures.hub import HubServer
from tests.fixtures.models import make_image_classifier
from tests.fixtures.servers import REPO_ROOT
from tests.test_bake_plan import config

FETCH = REPO_ROOT / "bake" / "image" / "fetch_weights.py"
FILES = ["config.json", "preprocessor_config.json", "model.safetensors"]


def fetch(
    endpoint: str, repo: str, sha: str, digest: str, root: Path, out: Path
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            str(FETCH),
            "hub",
            "--repo",
            repo,
            "--revision",
            "main",
            "--commit",
            sha,
            "--cache",
            str(root / "cache"),
            "--out",
            str(out),
            "--manifest",
            str(out / "manifest.json"),
            f"--sha256=model.safetensors={digest}",
            "--files",
            *FILES,
        ],
        env={
            **os.environ,
            "HF_ENDPOINT": endpoint,
            "HF_HUB_DISABLE_XET": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1",
        },
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_an_altered_download_is_refused_removed_from_the_cache_and_fetched_again(
    hub: HubServer, tmp_path: Path
) -> None:
    folder = make_image_classifier(tmp_path / "model", "resnet", image_size=64)
    weights = (folder / "model.safetensors").read_bytes()
    digest = hashlib.sha256(weights).hexdigest()
    sha = hub.add_repo("integrity/tiny-resnet", folder)
    altered = bytearray(weights)
    altered[len(altered) // 2] ^= 0xFF  # one flipped bit in a tensor: same size, other bytes
    hub.tamper(digest, bytes(altered))
    try:
        refused = fetch(hub.url, "integrity/tiny-resnet", sha, digest, tmp_path, tmp_path / "refused")
    finally:
        hub.tampered.clear()
    assert refused.returncode != 0
    assert (
        f"sha256 mismatch: model.safetensors downloaded with sha256 {hashlib.sha256(altered).hexdigest()}"
        in (refused.stderr)
    )
    assert f"the Hub published {digest}" in refused.stderr and "Traceback" not in refused.stderr
    cached = [path for path in (tmp_path / "cache").rglob("*") if path.is_file()]
    assert all(path.read_bytes() != bytes(altered) for path in cached), "the altered copy must be gone"

    fetched = fetch(hub.url, "integrity/tiny-resnet", sha, digest, tmp_path, tmp_path / "fetched")
    assert fetched.returncode == 0, fetched.stderr
    manifest = json.loads((tmp_path / "fetched" / "manifest.json").read_text())
    assert manifest["files"]["model.safetensors"]["sha256"] == digest


def test_the_hub_going_away_fails_the_step_in_one_line(hub: HubServer, tmp_path: Path) -> None:
    folder = make_image_classifier(tmp_path / "model", "resnet", image_size=64, seed=3)
    digest = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    sha = hub.add_repo("integrity/gone", folder)
    endpoint = hub.url
    hub.pause()
    try:
        failed = fetch(endpoint, "integrity/gone", sha, digest, tmp_path, tmp_path / "out")
    finally:
        hub.resume()
    assert failed.returncode == 1
    lines = failed.stderr.strip().splitlines()
    assert lines[-1].startswith(f"bake-fetch: the download from the Hub failed: integrity/gone at {sha}: ")
    assert "Traceback" not in failed.stderr, failed.stderr


def test_the_build_passes_the_hubs_sha256_of_every_lfs_file(tmp_path: Path) -> None:
    model = ResolvedModel(
        id="org/tiny",
        revision="main",
        commit_sha="0" * 40,
        task="image-classification",
        files=(
            ModelFile("config.json", 10, None),
            ModelFile("model.safetensors", 1000, "ab" * 32),
            ModelFile("extra.safetensors", 1000, "cd" * 32),
        ),
        convert_to_safetensors=False,
        local_dir=None,
    )
    work = tmp_path / "work"
    work.mkdir()

    plan = plan_build(config(tmp_path), model, read_environment({"HF_ENDPOINT": "https://hub.example"}), work)
    weights = plan.dockerfile.read_text().split("AS weights", 1)[1].split("FROM", 1)[0]
    assert f"--sha256=model.safetensors={'ab' * 32}" in weights
    assert f"--sha256=extra.safetensors={'cd' * 32}" in weights
    assert "--sha256=config.json" not in weights
