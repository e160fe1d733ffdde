"""Finding the model's files on disk: a local directory, or a snapshot in the Hugging Face cache.

With `HF_HUB_OFFLINE=1` (always the case inside a bake image) the cache is the only place looked at and
no network request is attempted. Online, missing files are downloaded by `huggingface_hub` itself.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import snapshot_download
from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

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
    except LocalEntryNotFoundError as error:
        raise ModelLoadError(
            f"model {model!r} (revision {revision!r}) is not in the Hugging Face cache and the hub is offline: "
            "bake the weights into the image (bake build) or point HF_HOME at a cache that holds them"
        ) from error
    except (HfHubHTTPError, OSError, ValueError) as error:
        raise ModelLoadError(f"cannot fetch model {model!r} (revision {revision!r}): {error}") from error
    sha = path.name if _COMMIT_SHA.match(path.name) else None
    return ModelSource(model_id=model, path=path, revision=revision, commit_sha=sha)
