"""Verified TorchScript tracing of a model's forward pass.

A traced and frozen forward runs as one C++ call: no Python per layer, so it holds the GIL for a few
microseconds instead of thousands of times per batch (on a small CPU machine the GIL, not arithmetic,
is what a busy server waits for), and freezing folds batch norms into convolutions. Tracing can be wrong
for models with data-dependent control flow, so the traced forward is only used after it matched the
eager one at every batch size the server will run; otherwise the eager model stays.

A forward pass takes the model's keyword inputs (`pixel_values`, or e.g. SigLIP 2's patches, attention mask
and spatial shapes) and returns its first output, the logits.

An archive made at build time (`serve.compile`) holds the trace before freezing, without the tensors that the
model's safetensors files already hold (`detach_weights`): the image carries the weights once. Loading it
(`load_frozen`) attaches them again from those files and freezes the result.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open

from serve.contract.compiled import Rewrite

logger = logging.getLogger("serve")

Inputs = Mapping[str, torch.Tensor]
Forward = Callable[[Inputs], torch.Tensor]
TensorSources = Mapping[str, tuple[str, str]]
"""A traced module's tensor (its dotted name) -> (safetensors file relative to the model's directory, the
tensor's name in that file)."""

_MODEL_PREFIX = "model."
"""How the traced module names the model's own tensors (`_LogitsOnly.model`)."""


class _LogitsOnly(torch.nn.Module):
    """Adapts a transformers model to `tensors -> logits` (positional inputs in `names` order), which tracing
    handles best."""

    def __init__(self, model: torch.nn.Module, names: Sequence[str]) -> None:
        super().__init__()
        self.model = model
        self.names = tuple(names)

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return self.model(**dict(zip(self.names, tensors, strict=True)), return_dict=False)[0]


@dataclass(frozen=True)
class TracedForward:
    """A frozen TorchScript module taking the model's inputs positionally, called with them by name."""

    module: torch.jit.ScriptModule
    names: tuple[str, ...]
    """The inputs' names, in the module's argument order."""
    trace: torch.jit.ScriptModule | None = field(default=None, compare=False)
    """The trace before freezing, when this forward was just traced (what the compile stage saves)."""
    fused: bool = False
    """Whether the module runs with oneDNN Graph fusion (`Rewrite.ONEDNN_FUSION`). TorchScript reads that
    setting, which is the process's, when it optimizes a batch shape (on its second run): each call sets it
    for its own run, so that other TorchScript modules of the process (a test's, a runtime trace) are not
    fused by a module that is."""

    def __call__(self, inputs: Inputs) -> torch.Tensor:
        previous = torch.jit.onednn_fusion_enabled()
        torch.jit.enable_onednn_fusion(self.fused)
        try:
            return self.module(*(inputs[name] for name in self.names))
        finally:
            torch.jit.enable_onednn_fusion(previous)


def eager_forward(model: torch.nn.Module) -> Forward:
    """The model's own forward pass, returning its first output (the logits)."""

    def forward(inputs: Inputs) -> torch.Tensor:
        return model(**inputs, return_dict=False)[0]

    return forward


@torch.inference_mode()
def traced_forward(
    model: torch.nn.Module, distinct: Inputs, batch_sizes: Sequence[int], *, rtol: float, atol: float
) -> TracedForward | None:
    """A frozen TorchScript forward equivalent to `model` at every one of `batch_sizes`, or None if it is not.

    `distinct` holds a few different inputs (rows). A checked batch of size n is made of rows
    `i % rows`, so every batch mixes different inputs. The eager model runs once, on `distinct`.
    The trace is made on the smallest batch size above 1 (a batch of one invites shape specialisation, e.g. by
    `squeeze`), with the rows in reverse order, so that a value it froze from its example data (a Python
    branch or number read from a tensor) meets other data in the check; it must reproduce the eager rows at
    every batch size. The checked runs are also the trace's warm-up at every batch size (its first run at a
    shape is the slow, profiling one).
    """
    names = tuple(distinct)
    rows = len(next(iter(distinct.values())))
    expected = eager_forward(model)(distinct)
    sizes = sorted(set(batch_sizes))

    def batch(inputs: Inputs, size: int, *, reverse: bool = False) -> tuple[torch.Tensor, ...]:
        order = torch.arange(size) % rows
        order = rows - 1 - order if reverse else order
        return tuple(inputs[name][order.to(inputs[name].device)] for name in names)

    trace_size = next((size for size in sizes if size > 1), sizes[0])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TracerWarnings are what the check below is for
            example = batch(distinct, trace_size, reverse=True)
            trace = torch.jit.trace(_LogitsOnly(model, names).eval(), example, check_trace=False)
            traced = torch.jit.freeze(trace)
    except Exception as error:  # tracing fails in many model-specific ways; the eager model then stays
        logger.warning("TorchScript tracing failed, serving the eager model: %s", last_line(error))
        return None
    for size in sizes:
        wanted = expected[torch.arange(size, device=expected.device) % rows]
        try:
            actual = traced(*batch(distinct, size))
        except Exception as error:  # a trace that cannot run a batch size is not used at all
            logger.warning(
                "traced model fails at batch size %d, serving the eager model: %s", size, last_line(error)
            )
            return None
        if actual.shape != wanted.shape or not torch.allclose(actual, wanted, rtol=rtol, atol=atol):
            same_shape = actual.shape == wanted.shape
            difference = (actual.float() - wanted.float()).abs().max().item() if same_shape else float("inf")
            logger.warning(
                "traced model differs from eager at batch size %d (max |diff| %.2e), serving the eager model",
                size,
                difference,
            )
            return None
    return TracedForward(traced, names, trace)


@torch.inference_mode()
def detach_weights(trace: torch.jit.ScriptModule, model_dir: Path) -> dict[str, tuple[str, str]]:
    """Empty every tensor of `trace` (an unfrozen trace of `traced_forward`) that a safetensors file in
    `model_dir` holds with the same shape and the same values once in the trace's dtype; return where each
    one is (`TensorSources`). The rest stays in the trace.

    Values decide, not names: transformers renames a checkpoint's tensors when it loads some models (ViT's
    `attention.attention.query` is `attention.q_proj` in the model), and tied or equal tensors may share one
    stored tensor. A checkpoint tensor is compared with the tensor of its own name, then with every tensor of
    its shape still held."""
    tensors = {
        name: tensor
        for name, tensor in (dict(trace.named_parameters()) | dict(trace.named_buffers())).items()
        if tensor.numel() > 0
    }
    sources: dict[str, tuple[str, str]] = {}
    for file in sorted(model_dir.rglob("*.safetensors")):  # the own names first, as most models keep them
        with safe_open(str(file), framework="pt") as stored:
            for key in stored.keys():  # noqa: SIM118 (a safetensors handle is not a mapping)
                tensor = tensors.get(_MODEL_PREFIX + key)
                if tensor is not None and _same(stored.get_tensor(key), tensor):
                    sources[_MODEL_PREFIX + key] = (str(file.relative_to(model_dir)), key)
                    del tensors[_MODEL_PREFIX + key]
    for file in sorted(model_dir.rglob("*.safetensors")):
        with safe_open(str(file), framework="pt") as stored:
            for key in stored.keys():  # noqa: SIM118 (a safetensors handle is not a mapping)
                shape = torch.Size(stored.get_slice(key).get_shape())
                candidates = [name for name, tensor in tensors.items() if tensor.shape == shape]
                if not candidates:
                    continue
                value = stored.get_tensor(key)
                for name in candidates:
                    if _same(value, tensors[name]):
                        sources[name] = (str(file.relative_to(model_dir)), key)
                        del tensors[name]
    for name in sources:
        owner, leaf = _owner(trace, name)
        placeholder = getattr(owner, leaf)
        setattr(owner, leaf, torch.empty(0, dtype=placeholder.dtype, device=placeholder.device))
    return sources


@torch.inference_mode()
def load_frozen(
    archive: Path,
    sources: TensorSources,
    model_dir: Path,
    device: torch.device,
    *,
    rewrite: Rewrite = Rewrite.NONE,
) -> torch.jit.ScriptModule:
    """The frozen forward pass of `archive` (saved after `detach_weights`), its tensors attached again from
    the safetensors files in `model_dir` as `sources` says, then rewritten as `rewrite` says:

    - `OPTIMIZE_FOR_INFERENCE` (`torch.jit.optimize_for_inference`: oneDNN convolutions, ResNet-50 on 2 cores
      1.3-1.4x faster at batch 4-8, but ConvNeXt slower);
    - `ONEDNN_FUSION`: four-dimensional tensors (convolution weights) attached channels-last, to be run
      with oneDNN Graph fusion (`TracedForward.fused`: TorchScript compiles a batch shape's fused kernels on
      its second run; ResNet-50 1.1-1.15x faster than optimized).

    No way is always faster, so the compile stage times each. Raises OSError, RuntimeError or KeyError."""
    module = torch.jit.load(str(archive), map_location=device)
    layout = torch.channels_last if rewrite is Rewrite.ONEDNN_FUSION else torch.contiguous_format
    by_file: dict[str, list[tuple[str, str]]] = {}
    for name, (file, key) in sources.items():
        by_file.setdefault(file, []).append((name, key))
    for file, names in by_file.items():
        with safe_open(str(model_dir / file), framework="pt", device=str(device)) as stored:
            for name, key in names:
                owner, leaf = _owner(module, name)
                tensor = stored.get_tensor(key).to(getattr(owner, leaf).dtype)
                if tensor.dim() == 4:
                    tensor = tensor.contiguous(memory_format=layout)
                setattr(owner, leaf, tensor)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript's: this archive is made for it
        frozen = torch.jit.freeze(module.eval())
        return (
            torch.jit.optimize_for_inference(frozen) if rewrite is Rewrite.OPTIMIZE_FOR_INFERENCE else frozen
        )


def _same(stored: torch.Tensor, tensor: torch.Tensor) -> bool:
    """Whether the stored tensor, in `tensor`'s dtype, equals `tensor`."""
    return stored.shape == tensor.shape and torch.equal(stored.to(tensor.dtype), tensor.cpu())


def _owner(module: torch.jit.ScriptModule, name: str) -> tuple[torch.jit.ScriptModule, str]:
    """The submodule holding the tensor called `name` (dotted), and the tensor's name in it."""
    *path, leaf = name.split(".")
    for part in path:
        module = getattr(module, part)
    return module, leaf


def last_line(error: Exception) -> str:
    """The error's last line: what went wrong, without the TorchScript traceback above it."""
    lines = str(error).strip().splitlines()
    return lines[-1] if lines else type(error).__name__
