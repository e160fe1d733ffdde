"""A request's line between its handler on the event loop and the device thread running its sample.

Device work that takes many steps (a diffusion model's denoising loop) needs two things a plain
`run_batch` call cannot give: to know whether anybody still waits for a sample, and to tell the client
how far the work has got. A task that wants them creates a `Channel` in `prepare`, puts it in its sample
and in `Prepared.channel`; the runtime then
- calls `cancel()` as soon as nobody waits for the answer any more (the client disconnected, the deadline
  passed), so the task can stop its batch at the next step once every sample in it is cancelled;
- registers listeners for the task's `step(done, total)` reports: the step counter of /metrics, and for a
  progress stream (`Accept: text/event-stream`) the client.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

StepListener = Callable[[int, int], None]
"""`listener(done, total)`: called on the device thread after each step of the sample's work."""


class Channel:
    """Cancellation in, step progress out, for one request. Thread-safe."""

    def __init__(self) -> None:
        self._cancelled = threading.Event()
        self._listeners: list[StepListener] = []

    @property
    def cancelled(self) -> bool:
        """Whether nobody waits for this request's answer any more."""
        return self._cancelled.is_set()

    def cancel(self) -> None:
        """Say that nobody waits for the answer any more (called by the runtime)."""
        self._cancelled.set()

    def listen(self, listener: StepListener) -> None:
        """Call `listener(done, total)` after every step; register listeners before the sample is queued."""
        self._listeners.append(listener)

    def step(self, done: int, total: int) -> None:
        """Report that `done` of `total` steps are finished (called by the task on the device thread)."""
        for listener in self._listeners:
            listener(done, total)
