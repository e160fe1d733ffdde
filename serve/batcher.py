"""Dynamic batching: many concurrent requests, one device, few large forward passes.

Semantics (the one place they are written down):

- A request enters the queue after its input is preprocessed on a CPU worker; the device thread only
  ever collates and runs forward passes.
- A batch holds at most `max_batch_size` rows. A request fills one row, or `rows` (at most
  `max_batch_size`) when it asks for several outputs that run side by side (a prompt's images).
- The batch timer starts when the oldest waiting request arrived (as in Nx.Serving), not when the device
  became free nor when the latest request arrived. A batch is dispatched as soon as it is full (the
  requests with its batch key fill `max_batch_size` rows, or the next one would not fit) or when its
  oldest request has waited `max_wait_s`.
- While the device runs a batch the queue keeps filling. When the device frees up, a batch whose timer
  has already run out is dispatched at once: under load batches are full and the device never idles.
- Only requests with the same batch key share a batch. The oldest request's key picks the next batch,
  so no key can starve another; requests of that key join in arrival order, up to the first that does
  not fit.
- Batch sizes are bucketed (powers of two up to `max_batch_size`, and `max_batch_size` itself). The
  device function gets the bucket of the batch's rows and pads up to it, so the device only ever sees the
  shapes that were warmed up (a task whose padding rows would cost as much as real ones may run the rows
  it has instead: text-to-image does).
- The queue is bounded: a request finding `max_queue` requests waiting is refused at once (`Overloaded`,
  503 with a Retry-After estimated from recent batch times) instead of waiting to time out.
- Every request has a deadline: past it, the caller gets `DeadlineExceeded` (504) and the request is
  dropped from the queue. A caller that is cancelled (its client disconnected) is dropped the same way;
  if its batch already runs, its result is discarded. The batcher cannot stop a running batch; the
  runtime tells the task through each request's `serve.channel.Channel`, and a task whose work has steps
  stops the batch at the next step once all of its requests are cancelled.
- One request never fails its batch-mates: on device out-of-memory the batch is split in halves and
  retried; on any other error every member is retried alone, so only the culprit gets the error: the
  `RequestError` the run raised for it (e.g. the task's `InferenceFailed` for scores that are not numbers),
  or an `InferenceFailed` with an incident id that the server's log line (holding the traceback) names too.
  Either is counted as an inference failure.
- `close()` stops taking requests and dispatches everything still queued without waiting for timers.
- A caller may pass a `BatchReport`: once its batch has run it says how many requests the batch held, how
  long this one waited for the device and how long the batch ran (response headers, for people watching).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

from serve.contract.batching import bucket_sizes
from serve.errors import DeadlineExceeded, InferenceFailed, Overloaded, RequestError

logger = logging.getLogger("serve")

RunBatch = Callable[[Sequence[Any], int], list[Any]]
"""`run(samples, batch_size)`: one forward pass over `samples` padded to `batch_size` rows."""


@dataclass
class BatchReport:
    """How one request was batched, filled in by the batcher once its batch has run."""

    batch_size: int = 0
    """Requests in the batch that served it (what /metrics' `bake_batch_size` counts)."""
    queue_s: float = 0.0
    """Seconds it waited in the queue for the device."""
    inference_s: float = 0.0
    """Seconds its batch ran on the device."""


@dataclass(eq=False)
class _Entry:
    sample: Any
    key: Hashable
    rows: int
    future: asyncio.Future[Any]
    arrived: float
    report: BatchReport | None = None


@dataclass
class BatchStats:
    """Hooks the batcher reports to (metrics); every callback is optional."""

    on_batch: Callable[[int, float], None] | None = None
    """Called with (number of requests, seconds on the device) after each dispatched batch."""
    on_queue_wait: Callable[[float], None] | None = None
    """Called with the seconds each request waited in the queue."""
    on_failure: Callable[[str], None] | None = None
    """Called once per request that failed alone, with why: "error" or "out_of_memory"."""
    on_split: Callable[[], None] | None = None
    """Called each time a batch is split in halves after running out of device memory."""
    recent_batch_s: float = field(default=0.0)
    """Exponentially weighted mean of recent batch durations (seconds)."""


class Batcher:
    """Queues prepared samples and runs them in dynamic batches on one executor thread."""

    def __init__(
        self,
        run: RunBatch,
        *,
        max_batch_size: int,
        max_wait_s: float,
        max_queue: int,
        executor: Executor,
        is_out_of_memory: Callable[[BaseException], bool] = lambda error: False,
        on_out_of_memory: Callable[[], None] = lambda: None,
        stats: BatchStats | None = None,
    ) -> None:
        self._run = run
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.buckets = bucket_sizes(max_batch_size)
        self._executor = executor
        self._is_oom = is_out_of_memory
        self._on_oom = on_out_of_memory
        self.stats = stats or BatchStats()
        self._queue: deque[_Entry] = deque()
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    @property
    def depth(self) -> int:
        """How many requests are waiting for the device (cancelled and timed-out ones not counted)."""
        return sum(1 for entry in self._queue if not entry.future.done())

    def start(self) -> None:
        """Start the dispatch loop on the running event loop."""
        self._wakeup = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._dispatch_loop(), name="bake-batcher")

    async def close(self) -> None:
        """Refuse new requests, run everything queued now, then stop."""
        self._closing = True
        if self._task is None:
            return
        assert self._wakeup is not None
        self._wakeup.set()
        await self._task

    async def submit(
        self,
        sample: Any,
        *,
        key: Hashable = None,
        rows: int = 1,
        deadline: float,
        report: BatchReport | None = None,
    ) -> Any:
        """Queue `sample` (filling `rows` batch rows) and wait for its output until `deadline`
        (`time.monotonic()` seconds); `report`, when given, is filled in once its batch has run.

        Raises `Overloaded` when the queue is full or closing, `DeadlineExceeded` past the deadline, and
        whatever error its own forward pass raised.
        """
        if not 1 <= rows <= self.max_batch_size:
            raise ValueError(f"a sample of {rows} rows does not fit a batch of {self.max_batch_size}")
        self.check_room()
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append(_Entry(sample, key, rows, future, time.monotonic(), report))
        self._wakeup.set()
        remaining = deadline - time.monotonic()
        try:
            return await asyncio.wait_for(future, timeout=max(remaining, 0.0))
        except asyncio.TimeoutError:
            raise DeadlineExceeded(
                "the request was not answered within its deadline (BAKE_TIMEOUT_S)"
            ) from None

    def check_room(self, coming: int = 0) -> None:
        """Raise `Overloaded` unless the queue has room for one more request beside `coming` others already on
        their way to it (being preprocessed), and is not closing. Refusing before preprocessing keeps the
        work spent on requests that will be refused near zero."""
        if self._closing or self._wakeup is None:
            raise Overloaded("the server is shutting down: retry on another replica", retry_after_s=1)
        if len(self._queue) + coming >= self.max_queue:
            raise Overloaded(
                f"the queue is full ({self.max_queue} requests waiting): retry later",
                retry_after_s=self._retry_after(),
            )

    def _retry_after(self) -> int:
        batches_ahead = math.ceil(len(self._queue) / self.max_batch_size)
        return max(1, math.ceil(batches_ahead * self.stats.recent_batch_s))

    async def _dispatch_loop(self) -> None:
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        while True:
            head = self._live_head()
            if head is None:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            members, full = self._members(head.key)
            wait = head.arrived + self.max_wait_s - time.monotonic()
            if not full and wait > 0 and not self._closing:
                self._wakeup.clear()
                timer = loop.call_later(wait, self._wakeup.set)
                await self._wakeup.wait()
                timer.cancel()
                continue
            self._remove(members)
            await self._dispatch(members)

    def _live_head(self) -> _Entry | None:
        """The oldest entry still waiting for an answer, dropping cancelled and timed-out ones."""
        while self._queue and self._queue[0].future.done():
            self._queue.popleft()
        return self._queue[0] if self._queue else None

    def _members(self, key: Hashable) -> tuple[list[_Entry], bool]:
        """Live entries with `key`, oldest first, filling at most `max_batch_size` rows; and whether they are
        a full batch (all rows filled, or the next such entry does not fit)."""
        members: list[_Entry] = []
        rows = 0
        for entry in self._queue:
            if entry.key != key or entry.future.done():
                continue
            if rows + entry.rows > self.max_batch_size:
                return members, True
            members.append(entry)
            rows += entry.rows
            if rows == self.max_batch_size:
                return members, True
        return members, False

    def _remove(self, members: list[_Entry]) -> None:
        if all(self._queue[i] is entry for i, entry in enumerate(members)):
            for _ in members:
                self._queue.popleft()
            return
        taken = set(map(id, members))
        self._queue = deque(entry for entry in self._queue if id(entry) not in taken)

    async def _dispatch(self, members: list[_Entry]) -> None:
        now = time.monotonic()
        if self.stats.on_queue_wait is not None:
            for entry in members:
                self.stats.on_queue_wait(now - entry.arrived)
        loop = asyncio.get_running_loop()
        outcomes = await loop.run_in_executor(self._executor, self._run_isolated, members)
        elapsed = time.monotonic() - now
        self.stats.recent_batch_s = 0.8 * self.stats.recent_batch_s + 0.2 * elapsed
        if self.stats.on_batch is not None:
            self.stats.on_batch(len(members), elapsed)
        for entry, outcome in zip(members, outcomes):
            if entry.future.done():
                continue
            if entry.report is not None:
                entry.report.batch_size = len(members)
                entry.report.queue_s = now - entry.arrived
                entry.report.inference_s = elapsed
            if isinstance(outcome, BaseException):
                entry.future.set_exception(outcome)
            else:
                entry.future.set_result(outcome)

    def _run_isolated(self, entries: Sequence[_Entry]) -> list[Any]:
        """Run `entries`; on failure split (out of memory) or isolate (any other error). Device thread."""
        samples = [entry.sample for entry in entries]
        try:
            outputs = self._run(samples, self._bucket(sum(entry.rows for entry in entries)))
        except Exception as error:
            if self._is_oom(error):
                self._on_oom()
                if len(entries) == 1:
                    return [self._failed(error, "out_of_memory", "the device ran out of memory for it alone")]
                if self.stats.on_split is not None:
                    self.stats.on_split()
                half = len(entries) // 2
                return self._run_isolated(entries[:half]) + self._run_isolated(entries[half:])
            if len(entries) == 1:
                if isinstance(error, RequestError):  # the task's own answer, e.g. scores that are not numbers
                    self._count_failure("rejected_output")
                    return [error]
                return [self._failed(error, "error", f"{type(error).__name__}: {error}")]
            return [outcome for entry in entries for outcome in self._run_isolated([entry])]
        if len(outputs) != len(samples):
            raise RuntimeError(f"run_batch returned {len(outputs)} outputs for {len(samples)} samples")
        return outputs

    def _failed(self, error: Exception, reason: str, what: str) -> InferenceFailed:
        """The error of a request that failed alone: logged with its traceback under a new incident id,
        counted, and answered with that id."""
        incident = uuid.uuid4().hex[:12]
        logger.error("inference failed (incident %s): %s", incident, what, exc_info=error)
        self._count_failure(reason)
        return InferenceFailed(f"inference failed (incident {incident}): {what}")

    def _count_failure(self, reason: str) -> None:
        if self.stats.on_failure is not None:
            self.stats.on_failure(reason)

    def _bucket(self, size: int) -> int:
        return next(bucket for bucket in self.buckets if bucket >= size)
