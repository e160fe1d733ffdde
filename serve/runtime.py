"""The model's life: loading, warm-up, the CPU pool, the device thread, the batcher, readiness, draining.

`Runtime.predict(inputs, parameters)` is the one prediction path every protocol calls (`serve.protocols`):
it never sees a request of any wire protocol. Start-up never blocks the HTTP server: the model is loaded
and warmed up on the device thread while /health already answers and /ready says 503. A forward pass that
needs a separate warm-up (one compiled at build time, a diffusion pipeline) answers predictions as soon as
its smallest batch bucket has run once; the other buckets and the CPU thread probe then run as separate
device jobs, between the batches of the first requests (a scaled-to-zero server's first request does not
wait for them). Once every batch bucket has run once, /ready turns 200.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from enum import Enum
from typing import Any, TypeVar

from pydantic import BaseModel

from serve import __version__
from serve.batcher import Batcher, BatchReport, BatchStats
from serve.channel import StepListener
from serve.contract.errors import UserError
from serve.contract.names import model_name
from serve.contract.settings import Settings
from serve.device import Placement, choose_placement, is_out_of_memory, release_cached_memory
from serve.errors import DeadlineExceeded, Overloaded, ServeError
from serve.lifecycle import Activity, exit_when_idle
from serve.memory import release_when_quiet
from serve.metrics import Metrics
from serve.model_source import ModelSource, locate_model
from serve.payload import validate
from serve.tasks import Prepared, Task, task_class
from serve.threads import choose_cpu_threads, lower_thread_priority

logger = logging.getLogger("serve")
T = TypeVar("T")

_THREAD_PROBE_BATCH = 4  # batch size timed to choose the CPU thread count: enough work, quick to run


class State(str, Enum):
    """Where the server is in its life."""

    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"


class Runtime:
    """Owns everything a server needs beyond its routes."""

    def __init__(self, settings: Settings, *, on_exit: Callable[[], None] | None = None) -> None:
        self.settings = settings
        self.state = State.LOADING
        self.error: str | None = None
        self.task: Task | None = None
        self.source: ModelSource | None = None
        self.placement: Placement | None = None
        self.started = time.monotonic()
        self.started_at = time.time()
        """Wall-clock start (for protocols that report when set-up began)."""
        self.load_seconds: float | None = None
        self.cpu_threads: int | None = None
        self.activity = Activity()
        self.metrics = Metrics(max_batch_size=settings.max_batch_size)
        self._on_exit = on_exit or (lambda: None)
        self._cpu = ThreadPoolExecutor(
            settings.worker_count, thread_name_prefix="bake-cpu", initializer=lower_thread_priority
        )
        self._device = ThreadPoolExecutor(1, thread_name_prefix="bake-device")
        self.batcher = Batcher(
            self._run_batch,
            max_batch_size=settings.max_batch_size,
            max_wait_s=settings.max_wait_ms / 1000,
            max_queue=settings.max_queue,
            executor=self._device,
            is_out_of_memory=is_out_of_memory,
            on_out_of_memory=self._release_memory,
            stats=BatchStats(
                on_batch=self.metrics.observe_batch,
                on_queue_wait=self.metrics.queue_wait.observe,
                on_failure=lambda reason: self.metrics.inference_failures.labels(reason).inc(),
                on_split=self.metrics.out_of_memory_splits.inc,
            ),
        )
        self._preparing = 0
        """Requests being preprocessed: they count against the queue bound before they reach it."""
        self.metrics.watch_queue(lambda: self.batcher.depth)

    @asynccontextmanager
    async def lifespan(self, _app: Any) -> AsyncIterator[None]:
        """ASGI lifespan: start loading, the batcher and the idle watch; drain and stop on shutdown."""
        self.batcher.start()
        loader = asyncio.create_task(self._load(), name="bake-load")
        releaser = asyncio.create_task(release_when_quiet(self.activity), name="bake-release-memory")
        try:
            yield
        finally:
            loader.cancel()
            releaser.cancel()
            await self.batcher.close()
            self._cpu.shutdown(wait=False, cancel_futures=True)
            self._device.shutdown(wait=True)

    async def _load(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            warm_up = await loop.run_in_executor(self._device, self._load_and_warm_up)
            for step in warm_up:  # one device job each: the batches of early requests run in between
                await loop.run_in_executor(self._device, step)
        except (ServeError, UserError) as error:
            self._fail(str(error))
            return
        except Exception as error:  # any library error while loading is fatal, and must be said clearly
            logger.exception("loading the model failed")
            self._fail(f"{type(error).__name__}: {error}")
            return
        self.load_seconds = time.monotonic() - self.started
        # Everything loaded so far (torch, transformers, the model: ~400k objects) lives as long as the
        # process. Frozen, the cyclic garbage collector stops rescanning it in every full collection, each
        # of which held the GIL for 0.15-0.3 s on 2 cores: stalls every request in flight (the p99).
        gc.freeze()
        self.state = State.READY
        self.metrics.ready.set(1)
        logger.info("ready in %.1f s: %s", self.load_seconds, self.info()["model"])
        if self.settings.idle_timeout_s > 0:
            await exit_when_idle(self.activity, self.settings.idle_timeout_s, self._on_exit)

    def _fail(self, message: str) -> None:
        self.state = State.FAILED
        self.error = message
        logger.error("cannot serve: %s", message)
        self._on_exit()

    def _load_and_warm_up(self) -> list[Callable[[], object]]:
        """Device thread: locate and load the model, warm up its smallest batch bucket (every bucket when
        optimizing the forward pass already did) and choose the CPU thread count, then publish the task:
        predictions are answered from now on. Returns the rest of the warm-up, one device job per step."""
        settings = self.settings
        self.placement = choose_placement(settings.device, settings.dtype)
        self.source = locate_model(settings.model, settings.revision, offline=settings.offline)
        name = settings.task or self.source.detect_task()
        self.source.require_files(name, "cuda" if self.placement.is_cuda else "cpu")
        task = task_class(name)(self.source, settings, self.placement)
        logger.info(
            "loading %s for %s on %s (%s)",
            settings.model,
            name,
            self.placement.device,
            self.placement.dtype_name,
        )
        task.load()
        samples = task.warmup_samples()
        cold = [] if task.optimize(self.batcher.buckets) else sorted(self.batcher.buckets)
        warm_up = [
            functools.partial(task.run_batch, [prepared.sample] * size, size)
            for size in cold
            for prepared in samples
        ]
        for step in warm_up[: len(samples) if cold else 0]:  # the smallest bucket
            step()
        if not self.placement.is_cuda:
            size = max(bucket for bucket in self.batcher.buckets if bucket <= _THREAD_PROBE_BATCH)
            sample = samples[0].sample
            self.cpu_threads = choose_cpu_threads(
                lambda n: task.run_batch([sample] * n, n), size, settings.cpu_threads
            )
        self.task = task
        if cold[1:]:
            logger.info(
                "answering predictions after %.1f s; warming up batch sizes %s",
                time.monotonic() - self.started,
                ", ".join(map(str, cold[1:])),
            )
        return warm_up[len(samples) :]

    def _run_batch(self, samples: Any, batch_size: int) -> list[Any]:
        assert self.task is not None
        return self.task.run_batch(samples, batch_size)

    def _release_memory(self) -> None:
        if self.placement is not None:
            release_cached_memory(self.placement)

    def ready_task(self) -> Task:
        """The loaded task, or `Overloaded` (503, with Retry-After) while loading or after a failed load."""
        if self.task is None:
            if self.state is State.FAILED:
                raise Overloaded(f"the model failed to load: {self.error}", retry_after_s=60)
            raise Overloaded("the model is still loading: retry in a few seconds", retry_after_s=5)
        return self.task

    def admit(self) -> None:
        """`Overloaded` (503, with Retry-After) when the queue has no room for one more request, counting
        those being preprocessed; nothing while the model loads (the routes say that themselves)."""
        if self.task is not None:
            self.batcher.check_room(self._preparing)

    def parameters(self, document: Mapping[str, Any] | None, *, where: str = "parameters") -> BaseModel:
        """`document` validated as the served task's parameters (`InvalidParameters`, 422, naming each
        field)."""
        return validate(self.ready_task().Parameters, document, where=where)

    @property
    def model_name(self) -> str:
        """The model's name in protocols that address models by name (`BAKE_MODEL_NAME`, else derived)."""
        return self.settings.model_name or model_name(self.settings.model)

    def deadline(self) -> float:
        """The `time.monotonic()` by which a request starting now must be answered (`BAKE_TIMEOUT_S`)."""
        return time.monotonic() + self.settings.timeout_s

    async def predict(
        self,
        inputs: bytes | str,
        params: BaseModel,
        *,
        deadline: float | None = None,
        on_step: StepListener | None = None,
        report: BatchReport | None = None,
    ) -> Any:
        """Predict for one input: `prepare` it, then `run` it. Raises `RequestError` subclasses."""
        deadline = self.deadline() if deadline is None else deadline
        prepared = await self.prepare(inputs, params, deadline=deadline)
        return await self.run(prepared, deadline=deadline, on_step=on_step, report=report)

    async def prepare(self, inputs: bytes | str, params: BaseModel, *, deadline: float) -> Prepared:
        """Decode, preprocess and check one input on the CPU pool (`params` come from `parameters()`).

        A request that would find the queue full is refused (503) before any preprocessing."""
        task = self.ready_task()
        self.batcher.check_room(self._preparing)
        self._preparing += 1
        started = time.perf_counter()
        try:
            return await asyncio.wait_for(
                asyncio.get_running_loop().run_in_executor(self._cpu, task.prepare, inputs, params),
                timeout=max(deadline - time.monotonic(), 0.0),
            )
        except asyncio.TimeoutError:
            raise DeadlineExceeded(
                "preprocessing did not finish within the deadline (BAKE_TIMEOUT_S)"
            ) from None
        finally:
            self._preparing -= 1
            self.metrics.preprocess.observe(time.perf_counter() - started)

    async def run(
        self,
        prepared: Prepared,
        *,
        deadline: float,
        on_step: StepListener | None = None,
        report: BatchReport | None = None,
    ) -> Any:
        """Run a prepared input in a batch on the device and finish its result.

        `on_step(done, total)` hears each step of step-by-step work (called on the device thread); `report`,
        when given, is filled in with how the request was batched (`serve.batcher.BatchReport`). Cancelling
        the call (a client gone) drops the request from the queue, or tells a step-by-step batch that nobody
        waits for it any more.
        """
        task = self.ready_task()
        if prepared.channel is not None:
            prepared.channel.listen(lambda _done, _total: self.metrics.inference_steps.inc())
            if on_step is not None:
                prepared.channel.listen(on_step)
        try:
            output = await self.batcher.submit(
                prepared.sample, key=prepared.batch_key, rows=prepared.rows, deadline=deadline, report=report
            )
        except (asyncio.CancelledError, DeadlineExceeded):
            if prepared.channel is not None:
                prepared.channel.cancel()
            raise
        return task.finish(output, prepared.params)

    async def offload(self, function: Callable[..., T], *args: Any) -> T:
        """Run `function(*args)` on the CPU pool (CPU-heavy work of a protocol: encoding images)."""
        return await asyncio.get_running_loop().run_in_executor(self._cpu, function, *args)

    def info(self) -> dict[str, Any]:
        """What /info reports: model, revision, task, device, dtype, batching and limits."""
        settings = self.settings
        source = self.source
        task_info = self.task.info() if self.task is not None else None
        return {
            "model": settings.model,
            "revision": settings.revision,
            "commit_sha": source.commit_sha if source else None,
            "task": task_info.task if task_info else settings.task,
            "task_details": task_info.details if task_info else {},
            "state": self.state.value,
            "error": self.error,
            "device": str(self.placement.device) if self.placement else settings.device,
            "dtype": self.placement.dtype_name if self.placement else settings.dtype,
            "cpu_threads": self.cpu_threads,
            "batching": {
                "max_batch_size": settings.max_batch_size,
                "max_wait_ms": settings.max_wait_ms,
                "max_queue": settings.max_queue,
                "buckets": self.batcher.buckets,
            },
            "limits": {
                "timeout_s": settings.timeout_s,
                "max_body_bytes": settings.max_body_bytes,
                "max_image_pixels": settings.max_image_pixels,
                "idle_timeout_s": settings.idle_timeout_s,
                "drain_timeout_s": settings.drain_timeout_s,
            },
            "auth": settings.api_key is not None,
            "load_seconds": self.load_seconds,
            "version": __version__,
        }
