"""The measurement: a ramp of concurrency levels against one server, each a closed-loop load run with the
server's `/metrics` scraped before and after it.

The ramp stops at the first level with errors, or after two levels in a row past the latency budget (further
levels only queue more; one miss alone may be a burst of other load on the machine), then bisects between the
highest level within the budget and the first one above it past the budget, so the largest concurrency that
meets the budget is known more precisely than the powers of two of the ramp.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import httpx

from bake.bench.loadgen import Generator, LoadResult, Target, Tick, run_load
from bake.bench.metrics import ServerWindow, Snapshot, scrape, window
from bake.errors import BenchFailed

MISSES_TO_STOP = 2
"""The ramp ends after this many levels in a row past the budget."""
MAX_ERROR_RATE = 0.01
"""A level where more than this share of requests failed ends the ramp."""
CLIENT_CPU_LIMIT = 0.9
"""A load generator using more than this share of one core may have slowed the run down itself."""
IN_FLIGHT_FLOOR = 0.85
"""A closed-loop client keeping fewer than this share of its connections busy could not keep up."""
DRAIN_TIMEOUT_S = 120.0
DRAIN_POLL_S = 0.05
DEFAULT_BUDGET_FACTOR = 4.0
"""Without --p99-ms, the budget is this many times the p99 at the lowest concurrency (one request alone)."""


@dataclass(frozen=True)
class ServerFacts:
    """What the server says about itself at `GET /info`."""

    url: str
    model: str
    task: str
    device: str
    max_batch_size: int
    max_wait_ms: float
    max_queue: int


@dataclass(frozen=True)
class Level:
    """One concurrency level: what the client measured, and what the server saw meanwhile."""

    concurrency: int
    load: LoadResult
    server: ServerWindow | None

    @property
    def error_rate(self) -> float:
        """Failed requests over all requests."""
        attempts = self.load.requests + self.load.transport_errors
        return self.load.failures / attempts if attempts else 1.0

    def client_limits(self) -> list[str]:
        """Why the load generator, not the server, may have limited this level (empty: it did not)."""
        reasons = []
        if self.load.client_cpu_share >= CLIENT_CPU_LIMIT:
            reasons.append(f"the load generator used {self.load.client_cpu_share:.0%} of a CPU core")
        if self.concurrency > 1 and self.load.in_flight < IN_FLIGHT_FLOOR * self.concurrency:
            reasons.append(f"it kept only {self.load.in_flight:.1f} of {self.concurrency} requests in flight")
        return reasons


@dataclass(frozen=True)
class Budget:
    """The p99 latency the recommendation must meet, and where the number came from."""

    p99_ms: float
    origin: str


@dataclass(frozen=True)
class Ramp:
    """Every level measured, in order of concurrency, and why the ramp ended where it did."""

    levels: tuple[Level, ...]
    budget: Budget
    stopped: str | None


class Progress(Protocol):
    """What a display needs to follow the ramp."""

    def level_started(self, concurrency: int, seconds: float) -> Tick:
        """A level begins; return the callback that follows its run."""

    def level_done(self, level: Level, budget: Budget) -> None:
        """A level ended."""


def fetch_facts(client: httpx.Client, url: str) -> ServerFacts:
    """The server's /info, once /ready answers 200; raise `BenchFailed` with the fix otherwise."""
    try:
        ready = client.get(f"{url}/ready", timeout=10)
        info = client.get(f"{url}/info", timeout=10)
    except httpx.HTTPError as error:
        raise BenchFailed(
            f"no server answers at {url} ({type(error).__name__}: {error})",
            "check the URL, or start it with `bake launch` (`bake launch --wake` if it idled out)",
        ) from None
    if info.status_code == 401:
        raise BenchFailed(f"{url} requires an API key", "set BAKE_API_KEY to the server's key")
    if ready.status_code != 200:
        raise BenchFailed(
            f"{url} is not ready (GET /ready answered {ready.status_code})",
            "wait until it has loaded and warmed up, then bench again",
        )
    try:
        data = info.json()
        batching = data["batching"]
        return ServerFacts(
            url=url,
            model=str(data.get("model", "?")),
            task=str(data["task"]),
            device=str(data.get("device", "?")),
            max_batch_size=int(batching["max_batch_size"]),
            max_wait_ms=float(batching["max_wait_ms"]),
            max_queue=int(batching["max_queue"]),
        )
    except (ValueError, KeyError, TypeError):
        raise BenchFailed(
            f"{url}/info is not a bake server's", "point bake bench at a server `bake launch` started"
        ) from None


def default_levels(max_batch_size: int) -> list[int]:
    """Powers of two from 1 to 4 x max_batch_size (at most 256): up to a full batch, then queueing."""
    top = min(256, 4 * max_batch_size)
    return [1 << i for i in range(top.bit_length()) if 1 << i <= top]


def run_ramp(
    client: httpx.Client,
    target: Target,
    levels: Sequence[int],
    *,
    seconds: float,
    warmup: tuple[int, float],
    generator: Generator,
    p99_ms: float | None,
    progress: Progress,
    bisect_steps: int = 2,
) -> Ramp:
    """Warm up (`warmup`: connections, seconds), measure `levels` in order until the ramp ends, then bisect
    below the first miss above the highest level within the budget; see the module doc."""
    ordered = sorted(set(levels))
    connections, warmup_s = warmup
    if warmup_s > 0:
        run_load(target, connections=connections, seconds=warmup_s, generator=generator)
    measured: list[Level] = []
    budget = Budget(p99_ms, "--p99-ms") if p99_ms is not None else None
    stopped = None
    for concurrency in ordered:
        level = _measure(client, target, concurrency, seconds, generator, progress)
        measured.append(level)
        if budget is None and level.load.requests == 0:
            raise BenchFailed(
                f"no answer came back within {seconds:g} s at concurrency {concurrency}",
                "pass a longer --duration (or a --p99-ms budget)",
            )
        if budget is None:
            budget = Budget(
                DEFAULT_BUDGET_FACTOR * level.load.p99_ms,
                f"{DEFAULT_BUDGET_FACTOR:g} x the p99 at concurrency {concurrency} (set it with --p99-ms)",
            )
        progress.level_done(level, budget)
        stopped = _stop_reason(measured, budget, seconds)
        if stopped:
            break
    assert budget is not None
    for _ in range(bisect_steps):
        middle = _bisect_point(measured, budget)
        if middle is None:
            break
        level = _measure(client, target, middle, seconds, generator, progress)
        measured.append(level)
        progress.level_done(level, budget)
    return Ramp(tuple(sorted(measured, key=lambda level: level.concurrency)), budget, stopped)


def within(level: Level, budget: Budget) -> bool:
    """Whether `level` got answers, all of them successful and within the budget."""
    return level.load.requests > 0 and level.load.failures == 0 and level.load.p99_ms <= budget.p99_ms


def _drain(client: httpx.Client, target: Target) -> Snapshot | None:
    """Wait until the server finished what the last run left behind (see `Snapshot.idle`), so no level
    measures the previous one's leftovers: a load generator stops at its deadline, not when the server is."""
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while True:
        snapshot = _scrape(client, target)
        if snapshot is None or snapshot.idle or time.monotonic() > deadline:
            return snapshot
        time.sleep(DRAIN_POLL_S)


def _measure(
    client: httpx.Client,
    target: Target,
    concurrency: int,
    seconds: float,
    generator: Generator,
    progress: Progress,
) -> Level:
    tick = progress.level_started(concurrency, seconds)
    before = _drain(client, target)
    load = run_load(target, connections=concurrency, seconds=seconds, generator=generator, tick=tick)
    after = _drain(client, target)
    server = window(before, after) if before is not None and after is not None else None
    return Level(concurrency, load, server)


def _scrape(client: httpx.Client, target: Target) -> Snapshot | None:
    try:
        return scrape(client, target.url.split("/predict", 1)[0])
    except httpx.HTTPError:
        return None


def _stop_reason(measured: list[Level], budget: Budget, seconds: float) -> str | None:
    level = measured[-1]
    if level.load.requests == 0:
        return f"no answer within {seconds:g} s at concurrency {level.concurrency} (try a longer --duration)"
    if level.error_rate > MAX_ERROR_RATE:
        return f"{level.error_rate:.0%} of requests failed at concurrency {level.concurrency}"
    misses = [level for level in measured[-MISSES_TO_STOP:] if level.load.p99_ms > budget.p99_ms]
    if len(misses) == MISSES_TO_STOP:
        return "p99 past the budget at concurrency " + " and ".join(
            f"{miss.concurrency} ({miss.load.p99_ms:.0f} ms)" for miss in misses
        )
    return None


def _bisect_point(levels: list[Level], budget: Budget) -> int | None:
    """The concurrency halfway between the largest level within the budget and the smallest one past it."""
    passing = [level.concurrency for level in levels if within(level, budget)]
    failing = [level.concurrency for level in levels if not within(level, budget)]
    if not passing or not failing:
        return None
    low = max(passing)
    high = min((concurrency for concurrency in failing if concurrency > low), default=low)
    return (low + high) // 2 if high - low >= 2 else None
