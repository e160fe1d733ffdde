"""How many torch threads the forward pass gets on the CPU (serve.threads), with fake forward passes."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
import torch

from serve import threads


@pytest.fixture(autouse=True)
def four_cores(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda _pid: {0, 1, 2, 3}, raising=False)
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def forward(one_thread_s: float, all_cores_s: float) -> Callable[[int], None]:
    """A fake batch taking `one_thread_s` per sample on one torch thread and `all_cores_s` on more."""
    return lambda size: time.sleep(size * (one_thread_s if torch.get_num_threads() == 1 else all_cores_s))


@pytest.mark.parametrize(
    ("one_thread_s", "all_cores_s", "expected"),
    [
        (0.004, 0.001, 1),  # cheap: the cores are better spent on preprocessing
        (0.030, 0.015, 4),  # compute-bound, 2x faster on every core
        (0.030, 0.025, 1),  # compute-bound but only 1.2x faster: not worth the contention
        (0.080, 0.040, 4),  # device-bound on one thread only: 2x is worth it
        (0.052, 0.049, 1),  # device-bound on one thread only, no real gain
        (0.300, 0.250, 4),  # device-bound even on every core (ResNet-50, diffusion): every core
    ],
)
def test_threads_follow_the_cost_and_the_gain(one_thread_s: float, all_cores_s: float, expected: int) -> None:
    chosen = threads.choose_cpu_threads(forward(one_thread_s, all_cores_s), 1, configured=0)
    assert chosen == expected and torch.get_num_threads() == expected


def test_a_configured_count_is_used_as_is() -> None:
    assert threads.choose_cpu_threads(forward(1.0, 1.0), 1, configured=3) == 3
    assert torch.get_num_threads() == 3


def test_a_device_bound_forward_pass_is_never_timed_on_one_thread() -> None:
    """A forward pass slow even on every core keeps them without the costly single-thread timing."""
    thread_counts: list[int] = []

    def run_batch(size: int) -> None:
        thread_counts.append(torch.get_num_threads())
        time.sleep(0.06 * size)

    assert threads.choose_cpu_threads(run_batch, 1, configured=0) == 4
    assert thread_counts == [4]


def test_a_very_slow_forward_pass_is_timed_on_one_sample_only() -> None:
    """One sample costing the device-bound time of a whole probe batch decides: the batch is never run."""
    sizes: list[int] = []

    def run_batch(size: int) -> None:
        sizes.append(size)
        time.sleep(0.25 * size)

    assert threads.choose_cpu_threads(run_batch, 4, configured=0) == 4
    assert sizes == [1]


@pytest.mark.parametrize(("one_thread_s", "all_cores_s", "expected"), [(0.004, 0.001, 1), (0.030, 0.015, 4)])
def test_a_cheap_forward_pass_is_timed_at_the_probe_batch_size(
    one_thread_s: float, all_cores_s: float, expected: int
) -> None:
    sizes: list[tuple[int, int]] = []
    fake = forward(one_thread_s, all_cores_s)

    def run_batch(size: int) -> None:
        sizes.append((size, torch.get_num_threads()))
        fake(size)

    assert threads.choose_cpu_threads(run_batch, 4, configured=0) == expected
    assert sizes[:2] == [(1, 4), (4, 4)]  # one sample first, then the probe batch on every core
    assert (4, 1) in sizes  # and the probe batch on one thread
