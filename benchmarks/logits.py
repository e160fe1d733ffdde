"""An image classifier's logits as a module taking `pixel_values` positionally, for the benchmarks' child
processes (what `torch.jit.trace` and `torch.export` are given)."""

from __future__ import annotations

import torch


class Logits(torch.nn.Module):
    """`model(pixel_values=...)`'s logits."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The logits of a batch of images."""
        return self.model(pixel_values=pixel_values, return_dict=False)[0]
