"""What a serving task is: the steps every prediction goes through, and where each one runs.

A task never sees a request of any wire protocol: protocols (`serve.protocols`) turn their requests into
one input (image bytes, or a prompt) and the task's `Parameters`, and render the task's result.

1. `prepare(inputs, parameters)` — on a CPU worker thread, before the batch queue: decode and preprocess
   the input, check the parameters against the limits. Raises `RequestError` for bad input.
2. `batch_key` — prepared samples with different keys never share a batch (image shapes, diffusion
   step counts, ...). A sample fills `rows` rows of its batch (1, or e.g. the images a prompt asks for).
3. `run_batch(samples, batch_size)` — on the one device thread: collate (padding to `batch_size`, a
   warmed-up bucket), forward, and split the outputs back per sample.
4. `finish(output, parameters)` — the result every protocol renders (labels and scores, generated images).

Long, step-by-step device work hears about cancelled requests and reports its steps through the
`Channel` a task puts in `Prepared.channel` (see `serve.channel`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import BaseModel

from serve.channel import Channel
from serve.contract.settings import Settings
from serve.device import Placement
from serve.model_source import ModelSource


@dataclass(frozen=True)
class Prepared:
    """A request after `prepare`: the device's input, its parameters, and its batch key."""

    sample: Any
    params: Any = None
    batch_key: Hashable = None
    rows: int = 1
    """Batch rows the sample fills (at most the batcher's `max_batch_size`)."""
    channel: Channel | None = None
    """Set by tasks whose device work is long: cancellation in, step progress out."""


@dataclass(frozen=True)
class TaskInfo:
    """Static facts about a loaded task, for /info."""

    task: str
    details: dict[str, Any] = field(default_factory=dict)


class Task(ABC):
    """A model served for one task. Subclasses register themselves in `serve.tasks.TASKS`."""

    name: ClassVar[str]
    """The task name, as in Hugging Face pipeline tags (e.g. "image-classification")."""
    Parameters: ClassVar[type[BaseModel]]
    """The task's parameters (the Hugging Face task spec's), validated strictly."""
    text_input: ClassVar[bool] = False
    """The input is a prompt (str), not the bytes of a file."""

    def __init__(self, source: ModelSource, settings: Settings, placement: Placement) -> None:
        self.source = source
        self.settings = settings
        self.placement = placement

    @abstractmethod
    def load(self) -> None:
        """Load the weights and move them to the device, once."""

    def optimize(self, batch_sizes: Sequence[int]) -> bool:
        """After `load`, specialise the forward pass for these batch sizes (default: nothing to do).

        Returns True when doing so already warmed up the forward pass now in use (at every batch size, or at
        those worth it), on inputs of the served shape, so that no separate warm-up is needed.
        """
        return False

    @abstractmethod
    def prepare(self, inputs: Any, params: Any) -> Prepared:
        """Decode, preprocess and check one input on a CPU worker. Raises `RequestError`."""

    @abstractmethod
    def run_batch(self, samples: Sequence[Any], batch_size: int) -> list[Any]:
        """Run one batch on the device; returns one output per sample (padding rows dropped)."""

    def finish(self, output: Any, params: Any) -> Any:
        """The result of one sample's output, as every protocol renders it (default: the output itself)."""
        return output

    @abstractmethod
    def warmup_samples(self) -> list[Prepared]:
        """Representative prepared samples (one per batch key the task expects) to warm up every bucket."""

    def info(self) -> TaskInfo:
        """Facts for /info; subclasses add their own details."""
        return TaskInfo(task=self.name)
