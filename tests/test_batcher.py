"""The dynamic batcher's semantics, with a fake device function (no model, no HTTP)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from serve.batcher import Batcher, BatchReport, bucket_sizes
from serve.errors import DeadlineExceeded, InferenceFailed, Overloaded


class FakeDevice:
    """Doubles its inputs; records every call; can be held busy, fail on some inputs, or run out of memory."""

    def __init__(self, *, delay: float = 0.0, oom_above: int | None = None) -> None:
        self.calls: list[tuple[list[Any], int, float]] = []
        self.delay = delay
        self.oom_above = oom_above
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, samples: Sequence[Any], batch_size: int) -> list[Any]:
        self.gate.wait()
        self.calls.append((list(samples), batch_size, time.monotonic()))
        if self.oom_above is not None and len(samples) > self.oom_above:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        if "bad" in samples:
            raise ValueError("cannot run 'bad'")
        time.sleep(self.delay)
        return [sample * 2 for sample in samples]


def make_batcher(device: FakeDevice, **overrides: Any) -> Batcher:
    options: dict[str, Any] = dict(max_batch_size=4, max_wait_s=0.05, max_queue=64)
    options.update(overrides)
    return Batcher(
        device,
        executor=ThreadPoolExecutor(1),
        is_out_of_memory=lambda error: "out of memory" in str(error),
        **options,
    )


def deadline(seconds: float = 10.0) -> float:
    return time.monotonic() + seconds


async def started(batcher: Batcher) -> Batcher:
    batcher.start()
    return batcher


def test_bucket_sizes_are_powers_of_two_then_the_maximum() -> None:
    assert bucket_sizes(1) == [1]
    assert bucket_sizes(8) == [1, 2, 4, 8]
    assert bucket_sizes(12) == [1, 2, 4, 8, 12]


async def test_batch_is_padded_to_its_bucket_and_outputs_are_per_sample() -> None:
    device = FakeDevice()
    batcher = await started(make_batcher(device, max_batch_size=8, max_wait_s=0.2))
    results = await asyncio.gather(*(batcher.submit(i, deadline=deadline()) for i in range(3)))
    assert results == [0, 2, 4]
    assert [(samples, size) for samples, size, _ in device.calls] == [([0, 1, 2], 4)]
    await batcher.close()


async def test_full_batch_dispatches_without_waiting_for_the_timer() -> None:
    device = FakeDevice()
    batcher = await started(make_batcher(device, max_batch_size=4, max_wait_s=5.0))
    begin = time.monotonic()
    results = await asyncio.gather(*(batcher.submit(i, deadline=deadline()) for i in range(4)))
    assert results == [0, 2, 4, 6]
    assert time.monotonic() - begin < 2.0, "a full batch must not wait for the 5 s timer"
    await batcher.close()


async def test_timer_starts_at_the_first_arrival_not_the_last() -> None:
    device = FakeDevice()
    batcher = await started(make_batcher(device, max_batch_size=8, max_wait_s=0.5))
    begin = time.monotonic()
    first = asyncio.ensure_future(batcher.submit(1, deadline=deadline()))
    await asyncio.sleep(0.3)
    second = asyncio.ensure_future(batcher.submit(2, deadline=deadline()))
    assert await asyncio.gather(first, second) == [2, 4]
    ((samples, _, ran_at),) = device.calls
    assert samples == [1, 2]
    waited = ran_at - begin
    # From the first arrival the batch runs at ~0.5 s; from the last it would be ~0.8 s.
    assert 0.45 <= waited < 0.75, waited
    await batcher.close()


async def test_reports_say_how_each_request_was_batched() -> None:
    device = FakeDevice(delay=0.2)
    batcher = await started(make_batcher(device, max_batch_size=4, max_wait_s=0.3))
    reports = [BatchReport() for _ in range(3)]
    first = asyncio.ensure_future(batcher.submit(1, deadline=deadline(), report=reports[0]))
    await asyncio.sleep(0.1)
    second = asyncio.ensure_future(batcher.submit(2, deadline=deadline(), report=reports[1]))
    assert await asyncio.gather(first, second) == [2, 4]
    assert await batcher.submit(3, deadline=deadline(), report=reports[2]) == 6
    assert [report.batch_size for report in reports] == [2, 2, 1]
    # The first waited the whole timer, the second joined 0.1 s later; each batch ran ~0.2 s.
    assert 0.28 <= reports[0].queue_s < 0.6 and 0.18 <= reports[1].queue_s < reports[0].queue_s
    assert reports[0].inference_s == reports[1].inference_s and reports[0].inference_s >= 0.2
    assert reports[2].inference_s >= 0.2
    await batcher.close()


async def test_queue_keeps_filling_while_the_device_is_busy() -> None:
    device = FakeDevice(delay=0.3)
    batcher = await started(make_batcher(device, max_batch_size=4, max_wait_s=0.01))
    first = asyncio.ensure_future(batcher.submit(0, deadline=deadline()))
    await asyncio.sleep(0.1)  # the device is now busy with [0]
    rest = [asyncio.ensure_future(batcher.submit(i, deadline=deadline())) for i in range(1, 6)]
    await asyncio.gather(first, *rest)
    assert [samples for samples, _, _ in device.calls] == [[0], [1, 2, 3, 4], [5]]
    await batcher.close()


async def test_full_queue_is_refused_at_once_with_retry_after() -> None:
    device = FakeDevice()
    device.gate.clear()  # the device hangs until released
    batcher = await started(make_batcher(device, max_batch_size=1, max_queue=2, max_wait_s=0))
    running = asyncio.ensure_future(batcher.submit(0, deadline=deadline()))
    await asyncio.sleep(0.05)
    queued = [asyncio.ensure_future(batcher.submit(i, deadline=deadline())) for i in (1, 2)]
    await asyncio.sleep(0.05)
    begin = time.monotonic()
    with pytest.raises(Overloaded) as refused:
        await batcher.submit(3, deadline=deadline())
    assert time.monotonic() - begin < 0.1
    assert int(refused.value.headers["Retry-After"]) >= 1
    device.gate.set()
    assert await asyncio.gather(running, *queued) == [0, 2, 4]
    await batcher.close()


async def test_expired_request_gets_deadline_error_and_never_runs() -> None:
    device = FakeDevice()
    device.gate.clear()
    batcher = await started(make_batcher(device, max_batch_size=1, max_wait_s=0))
    blocker = asyncio.ensure_future(batcher.submit("blocker", deadline=deadline()))
    await asyncio.sleep(0.05)
    with pytest.raises(DeadlineExceeded):
        await batcher.submit("late", deadline=deadline(0.1))
    device.gate.set()
    await blocker
    await batcher.close()
    assert ["late"] not in [samples for samples, _, _ in device.calls]


async def test_cancelled_request_is_dropped_from_the_queue() -> None:
    device = FakeDevice()
    device.gate.clear()
    batcher = await started(make_batcher(device, max_batch_size=4, max_wait_s=0))
    blocker = asyncio.ensure_future(batcher.submit(100, deadline=deadline()))
    await asyncio.sleep(0.05)
    gone = asyncio.ensure_future(batcher.submit(1, deadline=deadline()))
    kept = asyncio.ensure_future(batcher.submit(2, deadline=deadline()))
    await asyncio.sleep(0.05)
    gone.cancel()
    device.gate.set()
    assert await asyncio.gather(blocker, kept) == [200, 4]
    await batcher.close()
    assert all(1 not in samples for samples, _, _ in device.calls)


async def test_a_failing_request_does_not_fail_its_batch_mates() -> None:
    device = FakeDevice()
    batcher = await started(make_batcher(device, max_batch_size=4, max_wait_s=0.2))
    outcomes = await asyncio.gather(
        *(batcher.submit(sample, deadline=deadline()) for sample in (1, "bad", 3)), return_exceptions=True
    )
    assert outcomes[0] == 2 and outcomes[2] == 6
    assert isinstance(outcomes[1], InferenceFailed) and "bad" in outcomes[1].message
    await batcher.close()


async def test_out_of_memory_splits_the_batch_and_retries() -> None:
    device = FakeDevice(oom_above=2)
    released: list[bool] = []
    batcher = Batcher(
        device,
        max_batch_size=8,
        max_wait_s=0.2,
        max_queue=64,
        executor=ThreadPoolExecutor(1),
        is_out_of_memory=lambda error: "out of memory" in str(error),
        on_out_of_memory=lambda: released.append(True),
    )
    batcher.start()
    results = await asyncio.gather(*(batcher.submit(i, deadline=deadline()) for i in range(8)))
    assert results == [i * 2 for i in range(8)]
    sizes = [len(samples) for samples, _, _ in device.calls]
    assert sizes == [8, 4, 2, 2, 4, 2, 2]
    assert released, "cached device memory must be released after an out-of-memory error"
    await batcher.close()


async def test_only_requests_with_the_same_key_share_a_batch() -> None:
    device = FakeDevice()
    batcher = await started(make_batcher(device, max_batch_size=4, max_wait_s=0.2))
    keys = ["a", "b", "a", "b", "a"]
    results = await asyncio.gather(
        *(batcher.submit(i, key=key, deadline=deadline()) for i, key in enumerate(keys))
    )
    assert results == [0, 2, 4, 6, 8]
    assert sorted(samples for samples, _, _ in device.calls) == [[0, 2, 4], [1, 3]]
    await batcher.close()


async def test_close_runs_what_is_queued_then_refuses_new_requests() -> None:
    device = FakeDevice()
    batcher = await started(make_batcher(device, max_batch_size=8, max_wait_s=10.0))
    pending = [asyncio.ensure_future(batcher.submit(i, deadline=deadline())) for i in range(3)]
    await asyncio.sleep(0.05)
    await batcher.close()
    assert await asyncio.gather(*pending) == [0, 2, 4]
    with pytest.raises(Overloaded):
        await batcher.submit(9, deadline=deadline())


async def test_a_batch_holds_max_batch_size_rows_and_its_bucket_counts_rows() -> None:
    device = FakeDevice()
    batcher = await started(make_batcher(device, max_batch_size=8, max_wait_s=1.0))
    begin = time.monotonic()
    rows = [3, 1, 4, 2]
    results = await asyncio.gather(
        *(batcher.submit(i, rows=count, deadline=deadline()) for i, count in enumerate(rows))
    )
    assert results == [0, 2, 4, 6]
    # 3 + 1 + 4 rows fill the first batch, which runs at once; the 2-row request waits its timer, in bucket 2.
    (first, first_size, first_at), (second, second_size, second_at) = device.calls
    assert (first, first_size, second, second_size) == ([0, 1, 2], 8, [3], 2)
    assert first_at - begin < 0.5 <= second_at - begin
    await batcher.close()


async def test_a_request_that_does_not_fit_waits_for_the_next_batch_in_order() -> None:
    device = FakeDevice()
    batcher = await started(make_batcher(device, max_batch_size=4, max_wait_s=0.1))
    results = await asyncio.gather(
        *(batcher.submit(i, rows=count, deadline=deadline()) for i, count in enumerate([3, 2, 1]))
    )
    assert results == [0, 2, 4]
    assert [(samples, size) for samples, size, _ in device.calls] == [([0], 4), ([1, 2], 4)]
    await batcher.close()


async def test_a_request_of_more_rows_than_a_batch_is_refused() -> None:
    batcher = await started(make_batcher(FakeDevice(), max_batch_size=4))
    with pytest.raises(ValueError, match="5 rows"):
        await batcher.submit(1, rows=5, deadline=deadline())
    await batcher.close()
