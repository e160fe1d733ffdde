"""Finding the model's files on disk: a local directory, or a snapshot in the Hugging Face cache.

With `HF_HUB_OFFLINE=1` (always the case inside a bake image) the cache is the only place looked at and
no network request is attempted. Online, missing files are downloaded by `huggingface_hub` itself.

A cache need not hold every file of the repository (`hf download --include ...`, any `allow_patterns`
download, a bake image): it serves when it holds the files the task needs (`serve.contract.files`), and
otherwise the error names the ones missing.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import get_cached_repo_tree, snapshot_download
from huggingface_hub.errors import (
    CachedRepoTreeNotFoundError,
    HfHubHTTPError,
    IncompleteSnapshotError,
    LocalEntryNotFoundError,
)

from serve.contract.errors import UnsupportedModel
from serve.contract.files import detect_task, select_files
from serve.contract.tasks import TASKS
from serve.errors import ModelLoadError

_COMMIT_SHA = re.compile(r"^[0-9a-f]{40}$")
# Formats the runtime never loads: skip them when downloading outside an image.
_UNUSED_FORMATS = ["*.msgpack", "*.h5", "*.onnx", "onnx/*", "*.tflite", "*.ot", "coreml/*", "openvino/*"]


@dataclass(frozen=True)
class ModelSource:
    """Where a model's files are and which revision they are."""

    model_id: str
    """The model as configured: a hub id or a directory path."""
    path: Path
    """The directory holding config.json (or model_index.json) and the weights."""
    revision: str
    """The configured revision (branch, tag or sha); "local" for a directory."""
    commit_sha: str | None
    """The resolved commit sha for hub models; None for a plain directory."""
    listing: tuple[str, ...] | None = None
    """Every file of the repository at that commit, when the cache knows it (a snapshot download's tree)."""

    def files(self) -> list[str]:
        """The files in the model directory, as paths relative to it."""
        return sorted(str(path.relative_to(self.path)) for path in self.path.rglob("*") if path.is_file())

    def detect_task(self) -> str:
        """The task the model is for, from its `config.json` architectures (or `model_index.json`)."""
        try:
            return detect_task(self.files(), self.read_json)
        except UnsupportedModel as error:
            raise ModelLoadError(f"cannot serve {self.model_id}: {error}; or set BAKE_TASK") from None

    def require_files(self, task: str, device: str) -> None:
        """Raise `ModelLoadError` naming the files `task` needs that the directory lacks (the contract's
        tasks; any other task states no needs)."""
        if task not in TASKS:
            return
        present = self.files()
        try:
            select_files(present, task, device=device, read_json=self.read_json)
            return
        except UnsupportedModel as error:
            problem = str(error)
        if self.listing is not None:
            wanted = select_files(self.listing, task, device=device, read_json=self.read_json).files
            missing = [name for name in wanted if name not in present]
            if missing:
                problem = f"{', '.join(missing)} not in {self.path}"
        raise ModelLoadError(f"cannot serve {self.model_id} for {task}: {problem}")

    def read_json(self, name: str) -> dict[str, Any] | None:
        """Parse `name` in the model directory, or return None when the file does not exist."""
        file = self.path / name
        if not file.is_file():
            return None
        try:
            return json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise ModelLoadError(f"{file} is not readable JSON: {error}") from error


def locate_model(model: str, revision: str, *, offline: bool) -> ModelSource:
    """Return where `model` (hub id or directory) is on disk, downloading it first when online.

    Raises `ModelLoadError` with the fix when the model is neither a directory nor in the cache.
    """
    directory = Path(model).expanduser()
    if directory.is_dir():
        return ModelSource(model_id=model, path=directory.resolve(), revision="local", commit_sha=None)
    if model.startswith((".", "/", "~")):
        raise ModelLoadError(f"BAKE_MODEL={model!r} looks like a path but is not a directory")
    try:
        path = Path(
            snapshot_download(
                model,
                revision=revision,
                local_files_only=offline,
                ignore_patterns=_UNUSED_FORMATS,
            )
        )
    except IncompleteSnapshotError as error:
        path = Path(error.snapshot_path)  # holds part of the repository: `require_files` says if it is enough
    except LocalEntryNotFoundError as error:
        raise ModelLoadError(
            f"model {model!r} (revision {revision!r}) is not in the Hugging Face cache "
            "and the hub is offline: "
            "bake the weights into the image (bake build) or point HF_HOME at a cache that holds them"
        ) from error
    except (HfHubHTTPError, OSError, ValueError) as error:
        raise ModelLoadError(f"cannot fetch model {model!r} (revision {revision!r}): {error}") from error
    sha = path.name if _COMMIT_SHA.match(path.name) else None
    return ModelSource(
        model_id=model, path=path, revision=revision, commit_sha=sha, listing=_listing(model, sha)
    )


def _listing(model: str, sha: str | None) -> tuple[str, ...] | None:
    """The repository's files at `sha` as the cache recorded them, or None when it did not."""
    if sha is None:
        return None
    try:
        return tuple(entry.path for entry in get_cached_repo_tree(model, revision=sha))
    except CachedRepoTreeNotFoundError:
        return None
