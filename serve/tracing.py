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
    model: torch.nn.Module, distinct: torch.Tensor, batch_sizes: Sequence[int], *, rtol: float, atol: float
) -> Forward | None:
    """A frozen TorchScript forward equivalent to `model` at every one of `batch_sizes`, or None if it is not.

    `distinct` holds a few different inputs (rows). A checked batch of size n is made of rows
    `i % len(distinct)`, so every batch mixes different inputs. The eager model runs once, on `distinct`.
    The trace is made on the smallest batch size above 1 (a batch of one invites shape specialisation, e.g. by
    `squeeze`), with the rows in reverse order, so that a value it froze from its example data (a Python
    branch or number read from a tensor) meets other data in the check; it must reproduce the eager rows at
    every batch size. The checked runs are also the trace's warm-up at every batch size (its first run at a
    shape is the slow, profiling one).
    """
    expected = eager_forward(model)(distinct)
    sizes = sorted(set(batch_sizes))

    def batch(rows: torch.Tensor, size: int) -> torch.Tensor:
        return rows[torch.arange(size, device=rows.device) % len(rows)]

    trace_size = next((size for size in sizes if size > 1), sizes[0])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TracerWarnings are what the check below is for
            example = batch(distinct.flip(0), trace_size)
            traced = torch.jit.trace(_LogitsOnly(model).eval(), (example,), check_trace=False)
            traced = torch.jit.freeze(traced)
    except Exception as error:  # tracing fails in many model-specific ways; the eager model then stays
        logger.warning("TorchScript tracing failed, serving the eager model: %s", error)
        return None
    for size in sizes:
        wanted = batch(expected, size)
        try:
            actual = traced(batch(distinct, size))
        except Exception as error:  # a trace that cannot run a batch size is not used at all
            logger.warning("traced model fails at batch size %d, serving the eager model: %s", size, error)
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
    return traced
