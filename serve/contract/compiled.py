"""The forward pass compiled at build time: what the image's compile stage writes and who reads it.

`python -m serve.compile` runs in the compile stage of `bake build` and writes into `image.COMPILED`:

- `report.json` (`Report`), always: the path the image serves, "torchscript" or "eager" with the reason.
  `bake build` reads it (its output and the `labels.COMPILED` label), the runtime shows it in /info.
- on success only, `forward.pt` (a TorchScript archive of the logits forward pass, frozen when loaded,
  checked against the eager model at every batch bucket; it leaves out the tensors the model's safetensors
  files hold, which the runtime attaches from them, so that the image holds the weights once) and
  `manifest.json` (`Manifest`): everything the runtime needs to serve the archive without importing
  transformers.

The compile stage gets only the files in `COMPILER_FILES` (besides the weights and the installed
packages), so that a change to any other runtime module reuses the compiled artifact from the build cache.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

TORCHSCRIPT = "torchscript"
"""The path of an image serving the compiled archive."""
EAGER = "eager"
"""The path of an image that loads the model with transformers at start (and may trace it then)."""
REPORT_FILE = "report.json"
MANIFEST_FILE = "manifest.json"
ARCHIVE_FILE = "forward.pt"
FORMAT = 3
"""The manifest's format: a runtime ignores a manifest of another format."""

COMPILER_FILES = (
    "serve/__init__.py",
    "serve/compile.py",
    "serve/tracing.py",
    "serve/transforms.py",
    "serve/device.py",
    "serve/errors.py",
    "serve/contract/__init__.py",
    "serve/contract/errors.py",
    "serve/contract/compiled.py",
    "serve/contract/batching.py",
    "serve/contract/models.py",
    "serve/contract/packages.py",
)
"""The source files (relative to the directory holding `serve/`) that `python -m serve.compile` imports:
the compile stage's code, and with the weights and the packages its only inputs."""


class Rewrite(StrEnum):
    """How the frozen forward pass is rewritten when loaded (the compile stage times each and keeps the
    fastest within tolerance: `serve.tracing.load_frozen`)."""

    NONE = "none"
    OPTIMIZE_FOR_INFERENCE = "optimize_for_inference"
    """`torch.jit.optimize_for_inference`: oneDNN convolutions with prepacked weights."""
    ONEDNN_FUSION = "onednn_fusion"
    """Channels-last weights and oneDNN Graph fusion (`torch.jit.enable_onednn_fusion`): fused convolution,
    batch-norm, activation and residual kernels."""


@dataclass(frozen=True)
class Report:
    """Which path the image serves, and why."""

    path: str
    """`TORCHSCRIPT` or `EAGER`."""
    reason: str = ""
    """Why the image is not compiled (empty when it is)."""
    parity: float | None = None
    """The largest difference in scores between the archive and the eager model over every check."""
    seconds: float | None = None
    """How long compiling and checking took."""

    @classmethod
    def eager(cls, reason: str) -> Report:
        """The report of an image that serves the eager path because of `reason`."""
        return cls(path=EAGER, reason=reason)

    @property
    def compiled(self) -> bool:
        """Whether the image serves the compiled archive."""
        return self.path == TORCHSCRIPT

    @property
    def label(self) -> str:
        """ "torchscript", or "eager: <reason>" (the image label's value)."""
        return self.path if self.compiled else f"{EAGER}: {self.reason}"

    def write(self, directory: Path) -> None:
        """Write the report into `directory` as `REPORT_FILE`."""
        (directory / REPORT_FILE).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def read(cls, directory: Path) -> Report | None:
        """The report in `directory`, or None when there is none. Raises ValueError when it is unreadable."""
        file = directory / REPORT_FILE
        if not file.is_file():
            return None
        data = _object(file.read_text())
        return cls(
            path=str(data["path"]),
            reason=str(data.get("reason", "")),
            parity=data.get("parity"),
            seconds=data.get("seconds"),
        )


@dataclass(frozen=True)
class Preprocessing:
    """The fast image transform's settings, as resolved from the model's image processor
    (`serve.transforms.FastImageTransform`'s arguments but the placement)."""

    resize: tuple[str, tuple[int, int]] | None
    """("shortest_edge", (edge, 0)) or ("exact", (height, width)), or None."""
    crop: tuple[int, int] | None
    """(height, width) of the centre crop, or None."""
    resample: int
    """PIL's resampling filter."""
    scale: float | None
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocessing:
        """Read back what `asdict` wrote (JSON has lists where the fields have tuples)."""
        resize = data["resize"]
        return cls(
            resize=(str(resize[0]), (int(resize[1][0]), int(resize[1][1]))) if resize else None,
            crop=(int(data["crop"][0]), int(data["crop"][1])) if data["crop"] else None,
            resample=int(data["resample"]),
            scale=None if data["scale"] is None else float(data["scale"]),
            mean=None if data["mean"] is None else tuple(float(v) for v in data["mean"]),
            std=None if data["std"] is None else tuple(float(v) for v in data["std"]),
        )


@dataclass(frozen=True)
class Manifest:
    """What the runtime needs to serve the archive without transformers, and what it was made for."""

    model: str
    """`BAKE_MODEL` of the image: a Hub id, or the baked directory."""
    commit_sha: str | None
    weights: dict[str, int]
    """Weight file -> size in bytes: a different model in the same place is not served with this archive."""
    task: str
    torch: str
    """`torch.__version__` that wrote the archive: another version does not load it."""
    device: str
    dtype: str
    buckets: tuple[int, ...]
    """The batch sizes the archive was checked at."""
    parity: float
    """The largest difference in scores (softmax and sigmoid) between the archive and the eager model."""
    labels: tuple[str, ...]
    """The model's `id2label`, in index order."""
    problem_type: str | None
    """The model config's `problem_type` (which scores a request gets by default)."""
    preprocessing: Preprocessing
    tensors: dict[str, tuple[str, str]]
    """The archive's tensors left out of it -> (safetensors file relative to the model's directory, the
    tensor's name there)."""
    rewrite: Rewrite
    """How the frozen forward pass is rewritten when loaded (the fastest way for this model)."""
    archive: str = ARCHIVE_FILE
    format: int = FORMAT

    def write(self, directory: Path) -> None:
        """Write the manifest into `directory` as `MANIFEST_FILE`."""
        (directory / MANIFEST_FILE).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def read(cls, directory: Path) -> Manifest | None:
        """The manifest in `directory`; None when there is none or it is of another format. Raises
        ValueError (or KeyError, TypeError) when it is unreadable."""
        file = directory / MANIFEST_FILE
        if not file.is_file():
            return None
        data = _object(file.read_text())
        if data.get("format") != FORMAT:
            return None
        return cls(
            model=str(data["model"]),
            commit_sha=data["commit_sha"],
            weights={str(name): int(size) for name, size in data["weights"].items()},
            task=str(data["task"]),
            torch=str(data["torch"]),
            device=str(data["device"]),
            dtype=str(data["dtype"]),
            buckets=tuple(int(size) for size in data["buckets"]),
            parity=float(data["parity"]),
            labels=tuple(str(label) for label in data["labels"]),
            problem_type=data["problem_type"],
            preprocessing=Preprocessing.from_dict(data["preprocessing"]),
            tensors={str(name): (str(file), str(key)) for name, (file, key) in data["tensors"].items()},
            rewrite=Rewrite(data["rewrite"]),
            archive=str(data["archive"]),
        )


def _object(text: str) -> dict[str, Any]:
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError("expected a JSON object")
    return value
