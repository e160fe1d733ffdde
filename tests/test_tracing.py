"""Verified TorchScript tracing (serve.tracing): a trace is served only where it equals the eager model."""

from __future__ import annotations

import torch

from serve.tracing import traced_forward

BATCH_SIZES = (1, 2, 4, 8)


class Linear(torch.nn.Module):
    """A well-behaved model: the trace is exact at every batch size."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(6, 3)

    def forward(self, pixel_values: torch.Tensor, return_dict: bool = True) -> tuple[torch.Tensor]:
        return (self.layer(pixel_values.flatten(1)),)


class FixedBatch(Linear):
    """Reads the batch size as a Python int, which the trace freezes into a constant."""

    def forward(self, pixel_values: torch.Tensor, return_dict: bool = True) -> tuple[torch.Tensor]:
        return (self.layer(pixel_values.reshape(int(pixel_values.shape[0]), -1)),)


class BranchesOnData(Linear):
    """Takes a Python branch on the values of its input, which the trace freezes into one branch."""

    def forward(self, pixel_values: torch.Tensor, return_dict: bool = True) -> tuple[torch.Tensor]:
        logits = self.layer(pixel_values.flatten(1))
        return (logits * 2 if float(pixel_values[0].sum()) > 0 else logits * 3,)


def distinct_rows() -> dict[str, torch.Tensor]:
    """Two inputs of opposite sign, so that a batch's first row decides the branch of `BranchesOnData`."""
    row = torch.rand(1, 2, 3) + 0.1
    return {"pixel_values": torch.cat([row, -row])}


class TwoInputs(torch.nn.Module):
    """A model with a second keyword input (as SigLIP 2's attention mask), which the trace must carry."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(6, 3)

    def forward(
        self, pixel_values: torch.Tensor, pixel_mask: torch.Tensor, return_dict: bool = True
    ) -> tuple[torch.Tensor]:
        return (self.layer(pixel_values.flatten(1)) * pixel_mask,)


def test_a_faithful_trace_is_used_and_equals_eager_at_every_batch_size() -> None:
    model = Linear().eval()
    traced = traced_forward(model, distinct_rows(), BATCH_SIZES, rtol=1e-5, atol=1e-6)
    assert traced is not None
    for size in BATCH_SIZES:
        batch = torch.rand(size, 2, 3)
        torch.testing.assert_close(traced({"pixel_values": batch}), model(batch)[0], rtol=1e-5, atol=1e-6)


def test_every_keyword_input_reaches_the_traced_model() -> None:
    model = TwoInputs().eval()
    rows = {**distinct_rows(), "pixel_mask": torch.tensor([[1.0], [0.0]])}
    traced = traced_forward(model, rows, BATCH_SIZES, rtol=1e-5, atol=1e-6)
    assert traced is not None
    batch = {"pixel_values": torch.rand(4, 2, 3), "pixel_mask": torch.tensor([[0.0], [1.0], [2.0], [1.0]])}
    logits = traced(batch)
    assert not logits[0].any()  # masked by the second input, not by a constant frozen from the example
    torch.testing.assert_close(logits, model(**batch)[0], rtol=1e-5, atol=1e-6)


def test_a_trace_that_froze_the_batch_size_is_refused() -> None:
    assert traced_forward(FixedBatch().eval(), distinct_rows(), BATCH_SIZES, rtol=1e-5, atol=1e-6) is None


def test_a_trace_that_froze_a_data_dependent_branch_is_refused() -> None:
    assert traced_forward(BranchesOnData().eval(), distinct_rows(), BATCH_SIZES, rtol=1e-5, atol=1e-6) is None


def test_a_model_that_cannot_be_traced_stays_eager() -> None:
    class ReturnsAString(Linear):
        def forward(self, pixel_values: torch.Tensor, return_dict: bool = True) -> tuple[str]:
            return ("not a tensor",)

    assert traced_forward(ReturnsAString().eval(), distinct_rows(), BATCH_SIZES, rtol=1e-5, atol=1e-6) is None
