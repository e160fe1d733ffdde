"""What a serving task is: the four steps every request goes through, and where each one runs.

1. `prepare(body)` — on a CPU worker thread, before the batch queue: parse and validate the request,
   decode and preprocess its input. Raises `RequestError` for bad input; nothing else sees it.
2. `batch_key` — prepared samples with different keys never share a batch (image shapes, diffusion
   step counts, ...). A sample fills `rows` rows of its batch (1, or e.g. the images a prompt asks for).
3. `run_batch(samples, batch_size)` — on the one device thread: collate (padding to `batch_size`, a
   warmed-up bucket), forward, and split the outputs back per sample.
4. `respond(output, params, accept)` — on the event loop, or on a CPU worker for tasks that set
   `respond_on_worker` (encoding images): turn one output into an HTTP response. A request whose
   `Prepared.stream` is set gets a progress stream instead (see `serve.streaming`), which ends with the
   events of `result_events(output, params)`.

Long, step-by-step device work hears about cancelled requests and reports its steps through the
`Channel` a task puts in `Prepared.channel` (see `serve.channel`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from starlette.responses import Response

from serve.channel import Channel
from serve.device import Placement
from serve.model_source import ModelSource
from serve.settings import Settings


@dataclass(frozen=True)
class Body:
    """A request as the task sees it: the raw body and the headers that say how to read and answer it."""

    data: bytes
    content_type: str = ""
    accept: str = ""
    query: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Prepared:
    """A request after `prepare`: the device's input, what `respond` needs, and its batch key."""

    sample: Any
    params: Any = None
    batch_key: Hashable = None
    rows: int = 1
    """Batch rows the sample fills (at most the batcher's `max_batch_size`)."""
    channel: Channel | None = None
    """Set by tasks whose device work is long: cancellation in, step progress out."""
    stream: bool = False
    """The client asked for a progress stream (needs `channel`)."""


@dataclass(frozen=True)
class TaskInfo:
    """Static facts about a loaded task, for /info."""

    task: str
    details: dict[str, Any] = field(default_factory=dict)


class Task(ABC):
    """A model served for one task. Subclasses register themselves in `serve.tasks.TASKS`."""

    name: ClassVar[str]
    """The task name, as in Hugging Face pipeline tags (e.g. "image-classification")."""
    request_openapi: ClassVar[dict[str, Any]] = {}
    """The OpenAPI `requestBody` of POST /predict for this task."""
    response_openapi: ClassVar[dict[str, Any]] = {}
    """The OpenAPI 200 response of POST /predict for this task."""
    respond_on_worker: ClassVar[bool] = False
    """`respond` (and `result_events`) cost real CPU time, e.g. encoding images: run them on a CPU worker
    instead of the event loop."""

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
    def prepare(self, body: Body) -> Prepared:
        """Parse, validate and preprocess one request on a CPU worker. Raises `RequestError`."""

    @abstractmethod
    def run_batch(self, samples: Sequence[Any], batch_size: int) -> list[Any]:
        """Run one batch on the device; returns one output per sample (padding rows dropped)."""

    @abstractmethod
    def respond(self, output: Any, params: Any, accept: str) -> Response:
        """Turn one output into the HTTP response."""

    def result_events(self, output: Any, params: Any) -> list[tuple[str, Any]]:
        """The last events of a progress stream, as (event name, JSON-able data); only called for requests
        whose `Prepared.stream` the task set."""
        raise NotImplementedError(f"{self.name} does not stream progress")

    @abstractmethod
    def warmup_samples(self) -> list[Prepared]:
        """Representative prepared samples (one per batch key the task expects) to warm up every bucket."""

    def info(self) -> TaskInfo:
        """Facts for /info; subclasses add their own details."""
        return TaskInfo(task=self.name)
