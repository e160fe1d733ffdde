"""How many threads the forward pass may use on the CPU, and how often threads trade the GIL.

On a CPU-only host the forward pass shares the cores with the preprocessing workers and the event loop.
Intra-op parallelism is barrier-synchronised: when one of its threads is descheduled by a worker
decoding a JPEG, all of them wait. For small models that costs far more than it gains (measured on
2 cores: a tiny ResNet served 152 req/s with one thread and 90 with two), while large models need every
core (ResNet-50: 12 req/s with two threads, 7 with one). Timing a batch alone at warm-up does not tell
the two apart (both run faster on two idle cores); what does is the forward pass's cost next to a request's
other CPU work (decoding, resizing, HTTP: a few ms). From `DEVICE_BOUND_S` per sample on (ResNet-50, a
diffusion model's denoising) that work is lost in the noise: a forward pass this slow even on every core
keeps every core, untimed on one thread. Below it, with `BAKE_CPU_THREADS=0` the runtime times one batch on
one thread, and only a forward pass costing at least `COMPUTE_BOUND_S` per sample, which every core then runs
clearly faster, gets every core.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable

import torch

logger = logging.getLogger("serve")

COMPUTE_BOUND_S = 0.010
"""Per-sample forward time on one thread from which the forward pass dominates a request's CPU time."""

MIN_SPEEDUP = 1.4
"""All cores are used only if they run a batch at least this much faster than one core alone."""

DEVICE_BOUND_S = 0.05
"""Per-sample forward time from which the forward pass is device-bound: next to 50 ms of arithmetic a
request's few ms of decoding are noise. That slow on every core: every core is kept. That slow on one thread
only: every core is used when at least `DEVICE_BOUND_SPEEDUP` faster. (ResNet-50 on 2 cores: 80-100 ms per
sample on both, 150-190 ms on one, measured 1.16x to 1.83x faster on 2 busy cores from start to start, and
served 10-12 req/s on both against 5 on one; an SD-like UNet at 128x128: 330 ms on one thread, 1.4x.)"""

DEVICE_BOUND_SPEEDUP = 1.1

GIL_SWITCH_INTERVAL_S = 0.0005
"""How long a thread may hold the GIL while another waits (Python's default is 5 ms). The device thread
releases the GIL in every torch op and must get it back quickly; 0.5 ms measured best for throughput
and tail latency (2 cores, tiny ResNet: 152 req/s, p99 154 ms; 143 req/s, p99 179 ms at 5 ms)."""


WORKER_NICENESS = 5
"""How much lower the CPU preprocessing threads run than the event loop (Linux thread niceness)."""


def lower_thread_priority(niceness: int = WORKER_NICENESS) -> None:
    """Run the calling thread `niceness` steps below the rest of the process (a no-op where unsupported).

    The event loop only parses requests and answers them, but it must do so at once: under overload the CPU
    workers keep every core busy decoding images, and at equal priority the loop waits its turn behind them
    for tens of milliseconds, even to refuse a request (503). Below it, they yield to it and use the rest.
    """
    try:
        os.setpriority(
            os.PRIO_PROCESS, threading.get_native_id(), os.getpriority(os.PRIO_PROCESS, 0) + niceness
        )
    except (AttributeError, OSError):
        pass


def configure_interpreter() -> None:
    """Shorten the GIL switch interval for the server process."""
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)


def choose_cpu_threads(run_batch: Callable[[int], object], batch_size: int, configured: int) -> int:
    """Set torch's intra-op thread count for CPU inference and return it.

    `run_batch(n)` runs one warmed-up batch of n samples. `configured` > 0 is used as is. 0 first times one
    sample on every core: if that alone costs `DEVICE_BOUND_S` per sample of a `batch_size` batch, the batch
    would too (it costs at least as much), so the pass is device-bound and keeps every core without running
    the batch (a random-weight EfficientNet-B7 takes seconds a sample: a batch of 4 first made start-up that
    much slower). Otherwise it times a batch of `batch_size` on every core: from `DEVICE_BOUND_S` per sample
    the pass keeps every core, untimed on one thread (for ResNet-50 on 2 cores the single-thread timing alone
    took 2 s of start-up, and a forward pass that slow is in practice always helped by more cores), then on
    one thread: under `COMPUTE_BOUND_S` per sample the pass stays on one thread; a slower one gets every core
    if they run the batch at least `MIN_SPEEDUP` times faster (`DEVICE_BOUND_SPEEDUP` from `DEVICE_BOUND_S`
    on).
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if configured > 0 or cores == 1:
        threads = configured or 1
        torch.set_num_threads(threads)
        return threads
    torch.set_num_threads(cores)
    alone = _time(lambda: run_batch(1))
    if alone >= DEVICE_BOUND_S * batch_size or batch_size == 1:
        all_cores = alone / batch_size  # the batch would cost at least as much per sample
    else:
        all_cores = _time(lambda: run_batch(batch_size)) / batch_size
    if all_cores >= DEVICE_BOUND_S:
        logger.info("forward pass on %d CPU threads (%.1f ms per sample on them)", cores, all_cores * 1e3)
        return cores

    def run() -> object:
        return run_batch(batch_size)

    torch.set_num_threads(1)
    single = _best_time(run)
    per_sample = single / batch_size
    threads = 1
    if per_sample >= COMPUTE_BOUND_S:
        torch.set_num_threads(cores)
        speedup = single / _best_time(run)
        needed = DEVICE_BOUND_SPEEDUP if per_sample >= DEVICE_BOUND_S else MIN_SPEEDUP
        threads = cores if speedup >= needed else 1
        logger.info(
            "forward pass: %.1f ms per sample on one thread, %.2fx faster on %d",
            per_sample * 1e3,
            speedup,
            cores,
        )
    torch.set_num_threads(threads)
    logger.info("forward pass on %d CPU thread(s) (%.1f ms per sample on one)", threads, per_sample * 1e3)
    return threads


def _time(run: Callable[[], object]) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def _best_time(run: Callable[[], object], repeats: int = 2) -> float:
    run()
    return min(_time(run) for _ in range(repeats))
