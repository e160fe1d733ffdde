"""Batch-invariant CPU float32 inference: a sample's result must not depend on its batch-mates.

Batching promises that a request's answer is the one it would get alone; for a seeded image generator that
means the same bytes. Float arithmetic is not associative, so that holds only if every kernel computes a
row in the same order whatever the batch size. Four kinds of CPU kernels do not (torch 2.13, MKL 2024.2,
oneDNN 3.12, measured on an AVX2 machine; each difference is ~1e-7, enough to flip rounded pixels):

- MKL's sgemm chooses its kernel and blocking by the row count: below about 12 rows a small-matrix path
  (a different one per row count), and on AVX-512 machines larger products too (32 rows round differently
  than 128). Linear layers would round a sample's rows differently at every batch size. Fix: each sample's
  rows are multiplied alone (the same product alone and in a batch), padded with zero rows to
  `MIN_GEMM_ROWS` when fewer (a UNet's time embedding, SDXL's `add_embedding`: one row per sample).
- ATen convolves a single sample of at most `NATIVE_CONV_MAX_ELEMENTS` input values with its own kernel,
  and anything larger or batched with oneDNN (`ConvParams::use_mkldnn`): a UNet's or VAE's 4-channel
  `conv_in` rounds differently alone. Fix: such a single sample is convolved next to a zero sample.
- oneDNN's convolution and ATen's group norm take another kernel for channels-last inputs, and whether an
  activation comes out channels-last (after an attention block's transposes) depends on the batch size,
  since a one-sample tensor matches both layouts. Fix: make their inputs contiguous first.
- ATen's pointwise kernels compute a tensor in chunks (one per thread above 32768 values), each with SLEEF's
  vectorised functions 16 values at a time and the rest of the chunk with the scalar libm ones; the two
  differ in the last bit for the sigmoid of SiLU and the tanh of tanh-GELU. Which values of a sample fall in
  a chunk's rest depends on the batch size (a PixArt transformer of width 24: 2e-4 in the latents). Fix:
  activation modules (torch's, transformers' and diffusers') apply to each sample alone.

Everything else a diffusion pipeline runs on the CPU (attention, layer norms, exact elementwise arithmetic,
the schedulers) computes each row alone. The padding costs a few small matrix products and, per denoising
step, two convolutions of a few thousand values; the copies only happen after attention blocks; activations
cost one kernel call per sample instead of one per batch.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

MIN_GEMM_ROWS = 32
"""Linear inputs with fewer rows are padded to this many (MKL's small path ends near 12: a margin for
other CPUs)."""

NATIVE_CONV_MAX_ELEMENTS = 20480
"""ATen convolves one sample of at most this many input values without oneDNN
(`use_mkldnn` in aten/src/ATen/native/Convolution.cpp)."""


ACTIVATION_MODULES = (
    "torch.nn.modules.activation",
    "transformers.activations",
    "diffusers.models.activations",
)
"""Where the activation modules are defined: each computes values one by one along the sample (diffusers'
GELU, GEGLU and SwiGLU with their projection first), but those below."""

NOT_POINTWISE = frozenset(
    {"GLU", "Softmax", "Softmin", "LogSoftmax", "Softmax2d", "MultiheadAttention", "RReLU", "ClassInstantier"}
)
"""Classes of those modules that mix values along a dimension (or draw random numbers): left alone."""


def make_batch_invariant(module: torch.nn.Module) -> int:
    """Make the linears, 2-D convolutions, group norms and activations in `module` batch-invariant; return how
    many.

    Replaces the forward of each such submodule (exact `torch.nn` classes for the first three) in place;
    parameters, state dict and module tree are unchanged.
    """
    patched = 0
    for submodule in module.modules():
        kind = type(submodule)
        if kind is torch.nn.Linear:
            submodule.forward = _linear(submodule)
        elif kind is torch.nn.Conv2d:
            submodule.forward = _conv2d(submodule)
        elif kind is torch.nn.GroupNorm:
            submodule.forward = _contiguous_input(submodule.forward)
        elif kind.__module__ in ACTIVATION_MODULES and kind.__name__ not in NOT_POINTWISE:
            submodule.forward = _per_sample(submodule.forward)
        else:
            continue
        patched += 1
    return patched


def _linear(layer: torch.nn.Linear) -> Callable[[torch.Tensor], torch.Tensor]:
    def forward(inputs: torch.Tensor) -> torch.Tensor:
        if inputs.dim() < 2 or inputs.shape[0] == 0 or inputs.shape[-1] == 0:
            return F.linear(inputs, layer.weight, layer.bias)
        return torch.cat([_sample_linear(layer, sample) for sample in inputs.split(1)])

    return forward


def _sample_linear(layer: torch.nn.Linear, sample: torch.Tensor) -> torch.Tensor:
    """`layer` applied to one sample's rows in one product of at least `MIN_GEMM_ROWS` rows."""
    features = sample.shape[-1]
    flat = sample.reshape(-1, features)
    rows = flat.shape[0]
    if rows < MIN_GEMM_ROWS:
        flat = torch.cat([flat, flat.new_zeros(MIN_GEMM_ROWS - rows, features)])
    return F.linear(flat, layer.weight, layer.bias)[:rows].reshape(*sample.shape[:-1], -1)


def _conv2d(layer: torch.nn.Conv2d) -> Callable[[torch.Tensor], torch.Tensor]:
    convolve = layer.forward

    def forward(inputs: torch.Tensor) -> torch.Tensor:
        inputs = inputs.contiguous()
        if inputs.dim() == 4 and inputs.shape[0] == 1 and inputs.numel() <= NATIVE_CONV_MAX_ELEMENTS:
            return convolve(torch.cat([inputs, torch.zeros_like(inputs)]))[:1]
        return convolve(inputs)

    return forward


def _contiguous_input(
    forward: Callable[[torch.Tensor], torch.Tensor],
) -> Callable[[torch.Tensor], torch.Tensor]:
    def contiguous_forward(inputs: torch.Tensor) -> torch.Tensor:
        return forward(inputs.contiguous())

    return contiguous_forward


def _per_sample(forward: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    def per_sample_forward(inputs: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        if inputs.dim() == 0 or inputs.shape[0] <= 1:
            return forward(inputs.contiguous(), *args, **kwargs)
        return torch.cat([forward(sample.contiguous(), *args, **kwargs) for sample in inputs.split(1)])

    return per_sample_forward
