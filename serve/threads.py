"""How many threads the forward pass may use on the CPU, and how often threads trade the GIL.

On a CPU-only host the forward pass shares the cores with the preprocessing workers and the event loop.
Intra-op parallelism is barrier-synchronised: when one of its threads is descheduled by a worker
decoding a JPEG, all of them wait. For small models that costs far more than it gains (measured on
2 cores: a tiny ResNet served 152 req/s with one thread and 90 with two), while large models need every
core (ResNet-50: 12 req/s with two threads, 7 with one). So with `BAKE_CPU_THREADS=0` the runtime times
one batch both ways at warm-up and keeps all cores only when they are clearly faster.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable

import torch

logger = logging.getLogger("serve")

MIN_SPEEDUP = 1.4
"""All cores are used only if they run a batch at least this much faster than one core alone."""

GIL_SWITCH_INTERVAL_S = 0.0005
"""How long a thread may hold the GIL while another waits (Python's default is 5 ms). The device thread
releases the GIL in every torch op and must get it back quickly; 0.5 ms measured best for throughput
and tail latency (2 cores, tiny ResNet: 152 req/s, p99 154 ms; 143 req/s, p99 179 ms at 5 ms)."""


def configure_interpreter() -> None:
    """Shorten the GIL switch interval for the server process."""
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)


def choose_cpu_threads(run_batch: Callable[[], object], configured: int) -> int:
    """Set torch's intra-op thread count for CPU inference and return it.

    `configured` > 0 is used as is; 0 measures `run_batch` (one warmed-up batch) with one thread and with
    every core, and keeps every core only when that is at least `MIN_SPEEDUP` times faster.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if configured > 0 or cores == 1:
        threads = configured or 1
        torch.set_num_threads(threads)
        return threads
    torch.set_num_threads(1)
    single = _best_time(run_batch)
    torch.set_num_threads(cores)
    parallel = _best_time(run_batch)
    speedup = single / parallel
    threads = cores if speedup >= MIN_SPEEDUP else 1
    torch.set_num_threads(threads)
    logger.info("forward pass on %d CPU thread(s): %d threads ran a batch %.2fx as fast as one", threads, cores, speedup)
    return threads


def _best_time(run: Callable[[], object], repeats: int = 2) -> float:
    run()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best
