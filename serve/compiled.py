"""Loading the forward pass compiled at build time (`serve.compile`), with torch alone.

An image classifier whose image holds a compiled archive starts without transformers: the archive's forward
pass with the weights attached from the model's safetensors files, frozen (`serve.tracing.load_frozen`), and
the fast image transform rebuilt from the manifest's preprocessing settings.
The archive is used only when it was made for what is being served: the same model (id, commit, weight
sizes), task, torch version, device and dtype, and checked at every batch bucket the server runs (and
`BAKE_TORCHSCRIPT` is on). Otherwise `NotCompiled` says why, and the model loads with transformers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from serve.contract.batching import bucket_sizes
from serve.contract.compiled import Manifest, Report, Rewrite
from serve.contract.settings import Settings
from serve.device import Placement
from serve.model_source import ModelSource
from serve.tracing import TracedForward, load_frozen
from serve.transforms import FastImageTransform


class NotCompiled(Exception):
    """The compiled archive is absent or not for this server; the message says why."""


@dataclass(frozen=True)
class CompiledClassifier:
    """A compiled image classifier, ready to serve."""

    manifest: Manifest
    forward: TracedForward
    """The model's inputs -> logits."""
    transform: FastImageTransform


def load_compiled(
    source: ModelSource, settings: Settings, placement: Placement, task: str
) -> CompiledClassifier:
    """The compiled classifier in `settings.compiled` for this model, task and placement, or `NotCompiled`."""
    directory = Path(settings.compiled)
    try:
        manifest = Manifest.read(directory)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise NotCompiled(f"the compiled manifest in {directory} is unreadable: {error}") from error
    if manifest is None:
        try:
            report = Report.read(directory)
        except (OSError, ValueError, KeyError) as error:
            raise NotCompiled(f"the compile report in {directory} is unreadable: {error}") from error
        raise NotCompiled(report.label if report is not None else "the image holds no compiled forward pass")
    problem = mismatch(manifest, source, settings, placement, task)
    if problem:
        raise NotCompiled(f"the compiled forward pass is not used: {problem}")
    try:
        forward = load_frozen(
            directory / manifest.archive,
            manifest.tensors,
            source.path,
            placement.device,
            rewrite=manifest.rewrite,
        )
    except (OSError, RuntimeError, KeyError) as error:
        raise NotCompiled(f"the compiled forward pass does not load: {error}") from error
    transform = FastImageTransform(**asdict(manifest.preprocessing), placement=placement)
    fused = manifest.rewrite is Rewrite.ONEDNN_FUSION
    return CompiledClassifier(manifest, TracedForward(forward, transform.input_names, fused=fused), transform)


def mismatch(
    manifest: Manifest, source: ModelSource, settings: Settings, placement: Placement, task: str
) -> str | None:
    """Why `manifest`'s archive cannot serve this server, or None when it can."""
    if not settings.torchscript:
        return "BAKE_TORCHSCRIPT is off"
    if manifest.task != task:
        return f"it is for {manifest.task}, this server runs {task}"
    if manifest.model != settings.model or manifest.commit_sha != source.commit_sha:
        return f"it is for {manifest.model} at {manifest.commit_sha}, this server runs {settings.model}"
    for name, size in manifest.weights.items():
        file = source.path / name
        if not file.is_file() or file.stat().st_size != size:
            return f"its weights file {name} is not the model's"
    if manifest.torch != torch.__version__:
        return f"it was made with torch {manifest.torch}, this is {torch.__version__}"
    if (manifest.device, manifest.dtype) != (placement.device.type, placement.dtype_name):
        return (
            f"it is for {manifest.device} in {manifest.dtype}, "
            f"this server runs on {placement.device.type} in {placement.dtype_name}"
        )
    unchecked = sorted(set(bucket_sizes(settings.max_batch_size)) - set(manifest.buckets))
    if unchecked:
        return f"it was not checked at batch sizes {unchecked} (BAKE_MAX_BATCH_SIZE)"
    return None
