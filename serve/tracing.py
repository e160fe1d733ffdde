"""Verified TorchScript tracing of a model's forward pass.

A traced and frozen forward runs as one C++ call: no Python per layer, so it holds the GIL for a few
microseconds instead of thousands of times per batch (on a small CPU machine the GIL, not arithmetic,
is what a busy server waits for), and freezing folds batch norms into convolutions. Tracing can be wrong
for models with data-dependent control flow, so the traced forward is only used after it matched the
eager one at every batch size the server will run; otherwise the eager model stays.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence

import torch

logger = logging.getLogger("serve")

Forward = Callable[[torch.Tensor], torch.Tensor]


class _LogitsOnly(torch.nn.Module):
    """Adapts a transformers model to `tensor -> tensor`, which tracing handles best."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values, return_dict=False)[0]


def eager_forward(model: torch.nn.Module) -> Forward:
    """The model's own forward pass, returning its first output (the logits)."""
    adapter = _LogitsOnly(model)
    return adapter.forward


@torch.inference_mode()
def traced_forward(
    model: torch.nn.Module, examples: Sequence[torch.Tensor], *, rtol: float, atol: float
) -> Forward | None:
    """A frozen TorchScript forward equivalent to `model` on every example, or None if it is not.

    `examples` are inputs of each batch size the server runs; the trace is made on the largest.
    """
    eager = eager_forward(model)
    largest = max(examples, key=len)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TracerWarnings are what the verification below checks
            traced = torch.jit.freeze(torch.jit.trace(_LogitsOnly(model).eval(), (largest,), check_trace=False))
    except Exception as error:  # tracing fails in many model-specific ways; the eager model then stays
        logger.warning("TorchScript tracing failed, serving the eager model: %s", error)
        return None
    for example in examples:
        expected = eager(example)
        try:
            actual = traced(example)
        except Exception as error:  # a trace that cannot run a batch size is not used at all
            logger.warning("traced model fails at batch size %d, serving the eager model: %s", len(example), error)
            return None
        if actual.shape != expected.shape or not torch.allclose(actual, expected, rtol=rtol, atol=atol):
            difference = (actual.float() - expected.float()).abs().max().item()
            logger.warning(
                "traced model differs from eager at batch size %d (max |diff| %.2e), serving the eager model",
                len(example),
                difference,
            )
            return None
    return traced
