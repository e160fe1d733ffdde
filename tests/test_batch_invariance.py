"""`serve.batch_invariance`: a sample's result does not depend on its batch-mates, kernel by kernel.

Each case runs a patched module on a batch and on each of its samples alone and wants the same bits.
Widths and sizes are the awkward ones: rows under MKL's small-matrix limit, pointwise tensors whose length is
no multiple of 16 (the vectorised kernels' step), and tensors above ATen's 32768-value grain, split between
threads.
"""

from __future__ import annotations

import pytest
import torch
from diffusers.models.activations import GELU as DiffusersGELU
from transformers.activations import NewGELUActivation

from serve.batch_invariance import make_batch_invariant

MODULES = {
    "silu": lambda: torch.nn.SiLU(),
    "tanh-gelu": lambda: torch.nn.GELU(approximate="tanh"),
    "t5-gelu": lambda: NewGELUActivation(),
    "diffusers-gelu": lambda: DiffusersGELU(24, 40, approximate="tanh"),
    "linear": lambda: torch.nn.Linear(24, 40),
    "conv": lambda: torch.nn.Conv2d(4, 8, 3, padding=1),
    "group-norm": lambda: torch.nn.GroupNorm(2, 4),
}


def inputs(name: str, batch: int, width: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(batch * 1000 + width)
    if name in ("conv", "group-norm"):
        return torch.randn(batch, 4, 9, width // 4 + 3, generator=generator)
    if name in ("diffusers-gelu", "linear"):
        return torch.randn(batch, width, 24, generator=generator)
    return torch.randn(batch, 7, width, generator=generator) * 3


@pytest.mark.parametrize("name", sorted(MODULES))
@pytest.mark.parametrize("width", [17, 24, 40, 5000])
def test_each_sample_of_a_batch_gets_the_bits_it_gets_alone(name: str, width: int) -> None:
    torch.manual_seed(0)
    module = MODULES[name]()
    assert make_batch_invariant(module) >= 1
    with torch.inference_mode():
        for batch in (2, 3, 5):
            together = module(inputs(name, batch, width))
            for index, sample in enumerate(inputs(name, batch, width).split(1)):
                assert torch.equal(together[index : index + 1], module(sample)), (batch, index)


def test_modules_that_mix_values_along_a_dimension_are_left_alone() -> None:
    softmax = torch.nn.Softmax(dim=0)
    assert make_batch_invariant(torch.nn.Sequential(softmax, torch.nn.GLU(dim=0))) == 0
    values = torch.randn(3, 4)
    assert torch.allclose(softmax(values).sum(0), torch.ones(4))
