"""From the measured levels to settings: max_batch_size, max_wait_ms, max_queue, and the Fly / Knative
concurrency limits they imply; and writing them into bake.toml.

Only levels without errors and with p99 within the budget count. Among them:

- the *knee* is the lowest concurrency reaching 90% of the best throughput: more requests in flight per
  replica only add latency, so it is where a replica should run (the autoscaler's target);
- `max_batch_size` is the batch size the server formed at the knee (the 95th percentile of its
  `bake_batch_size` histogram): at that load larger batches never filled, and a full batch is what the Fly
  soft limit and the Knative target are set to (`fly.spec.concurrency_limits`);
- the *limit* is the highest concurrency that met the budget; `max_queue` = limit - max_batch_size, so the
  hard limit (Fly `hard_limit`, Knative `containerConcurrency` = batch + queue) stops routing to a replica
  before its requests would miss the budget, and the server answers 503 rather than keep more waiting;
- `max_wait_ms` = half the device time of one batch at the knee, within the budget's headroom there: the
  timer only matters when the device is idle, and waiting longer for batch-mates than the device takes to
  run them costs more latency than the bigger batch saves.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import date
from pathlib import Path

import tomlkit
from tomlkit.exceptions import TOMLKitError

from bake.bench.ramp import Budget, Level, Ramp, ServerFacts, within
from bake.errors import ConfigError

KNEE_SHARE = 0.9
"""The knee is the lowest concurrency reaching this share of the best throughput within the budget."""
WAIT_SHARE_OF_DEVICE_TIME = 0.5


@dataclass(frozen=True)
class Advice:
    """The recommended settings, the figures they rest on, and why."""

    max_batch_size: int
    max_wait_ms: float
    max_queue: int
    knee_concurrency: int
    limit_concurrency: int
    throughput: float
    """Requests per second at the knee."""
    p99_ms: float
    """p99 at the limit."""
    reasons: tuple[str, ...]
    notes: tuple[str, ...]
    """What the measurement could not show (capped batches, a limit past the ramp)."""

    @property
    def soft_limit(self) -> int:
        """Fly `soft_limit` / Knative autoscaling target: one full batch per replica."""
        return self.max_batch_size

    @property
    def hard_limit(self) -> int:
        """Fly `hard_limit` / Knative `containerConcurrency`: batch + queue."""
        return self.max_batch_size + self.max_queue

    def as_dict(self) -> dict[str, object]:
        """JSON-able form."""
        return {**asdict(self), "soft_limit": self.soft_limit, "hard_limit": self.hard_limit}


def advise(ramp: Ramp, facts: ServerFacts) -> tuple[Advice | None, str]:
    """The recommendation for `ramp` (None when no level met the budget), and a one-line verdict."""
    budget = ramp.budget
    eligible = [level for level in ramp.levels if within(level, budget)]
    if not eligible:
        first = ramp.levels[0]
        return None, (
            f"no level met p99 <= {budget.p99_ms:.0f} ms without errors (concurrency {first.concurrency}: "
            "p99 "
            f"{first.load.p99_ms:.0f} ms, {first.load.failures} failed): raise --p99-ms, or give the model a "
            "faster machine"
        )
    peak = max(level.load.throughput for level in eligible)
    knee = min(
        (level for level in eligible if level.load.throughput >= KNEE_SHARE * peak),
        key=lambda level: level.concurrency,
    )
    limit = max(eligible, key=lambda level: level.concurrency)
    batch, batch_reason = _batch_size(knee, facts)
    wait, wait_reason = _max_wait(knee, facts, budget)
    queue = max(1, limit.concurrency - batch)
    advice = Advice(
        max_batch_size=batch,
        max_wait_ms=wait,
        max_queue=queue,
        knee_concurrency=knee.concurrency,
        limit_concurrency=limit.concurrency,
        throughput=knee.load.throughput,
        p99_ms=limit.load.p99_ms,
        reasons=(
            (
                f"knee: concurrency {knee.concurrency} reaches {knee.load.throughput:.1f} req/s, "
                f"{knee.load.throughput / peak:.0%} of the best within the budget ({peak:.1f} req/s)"
            ),
            batch_reason,
            wait_reason,
            _queue_reason(queue, batch, limit, budget),
        ),
        notes=tuple(_notes(ramp, limit, batch, facts)),
    )
    return advice, (
        f"run {advice.soft_limit} to {advice.hard_limit} requests in flight per replica: "
        f"{knee.load.throughput:.1f} req/s with p99 <= {budget.p99_ms:.0f} ms"
    )


def _batch_size(knee: Level, facts: ServerFacts) -> tuple[int, str]:
    server = knee.server
    if server is None or server.batch_p95 is None:
        batch = min(knee.concurrency, facts.max_batch_size)
        return (
            batch,
            f"max_batch_size {batch}: the knee's concurrency (the server's /metrics were not readable)",
        )
    batch = max(1, min(server.batch_p95, facts.max_batch_size))
    return batch, (
        f"max_batch_size {batch}: 95% of the batches at the knee held at most {server.batch_p95} "
        f"request{'s' if server.batch_p95 != 1 else ''} (mean {server.batch_mean:.1f})"
    )


def _max_wait(knee: Level, facts: ServerFacts, budget: Budget) -> tuple[float, str]:
    server = knee.server
    if server is None or server.device_ms_mean is None:
        return (
            facts.max_wait_ms,
            f"max_wait_ms {facts.max_wait_ms:g}: kept (the server's /metrics were not readable)",
        )
    headroom = max(0.0, budget.p99_ms - knee.load.p99_ms)
    wait = round(min(WAIT_SHARE_OF_DEVICE_TIME * server.device_ms_mean, headroom), 1)
    return wait, (
        f"max_wait_ms {wait:g}: half the device time of a batch at the knee "
        f"({server.device_ms_mean:.1f} ms), within the {headroom:.0f} ms of headroom under the budget"
    )


def _queue_reason(queue: int, batch: int, limit: Level, budget: Budget) -> str:
    met = (
        f"concurrency {limit.concurrency} is the most that met p99 <= {budget.p99_ms:.0f} ms "
        f"(p99 {limit.load.p99_ms:.0f} ms)"
    )
    if limit.concurrency - batch < 1:
        return f"max_queue {queue}, the least the server takes: {met}"
    return f"max_queue {queue}: {met}; batch + queue = {batch + queue} in flight per replica"


def _notes(ramp: Ramp, limit: Level, batch: int, facts: ServerFacts) -> list[str]:
    notes = []
    if batch >= facts.max_batch_size:
        notes.append(
            f"the batches at the knee filled the server's max_batch_size ({facts.max_batch_size}): a larger "
            f"one may serve more; rebuild with --max-batch-size {2 * facts.max_batch_size} and bench again"
        )
    if limit is ramp.levels[-1]:
        notes.append(
            f"every level up to concurrency {limit.concurrency} met the budget: the hard limit may be higher "
            f"(bench with --concurrency up to {2 * limit.concurrency})"
        )
    missed = [
        level.concurrency
        for level in ramp.levels
        if level.concurrency < limit.concurrency and not within(level, ramp.budget)
    ]
    if missed:
        notes.append(
            f"concurrency {', '.join(map(str, missed))} missed the budget although {limit.concurrency} met "
            "it: "
            "the machine's speed varied during the run (other load?); bench again with a longer --duration"
        )
    return notes


def write_advice(path: Path, advice: Advice, comment: str) -> None:
    """Set [serve] max_batch_size, max_wait_ms and max_queue in the bake.toml at `path` (created if missing),
    keeping everything else in it, comments included; `comment` goes after each value."""
    try:
        document = tomlkit.parse(path.read_text(encoding="utf-8")) if path.exists() else tomlkit.document()
    except (OSError, TOMLKitError) as error:
        raise ConfigError(
            f"cannot read {path}: {error}", "fix the TOML syntax, then bench again with --write"
        ) from None
    serve = document.get("serve")
    if serve is None:
        serve = tomlkit.table()
        document["serve"] = serve
    elif not isinstance(serve, dict):
        raise ConfigError(f"{path}: serve is not a table", "make it a [serve] table")
    for key, value in (
        ("max_batch_size", advice.max_batch_size),
        ("max_wait_ms", advice.max_wait_ms),
        ("max_queue", advice.max_queue),
    ):
        item = tomlkit.item(value)
        item.comment(comment)
        serve[key] = item
    path.write_text(tomlkit.dumps(document), encoding="utf-8")


def write_comment(budget: Budget) -> str:
    """The comment `--write` puts after each value it sets."""
    return f"bake bench {date.today().isoformat()}: p99 <= {budget.p99_ms:.0f} ms"
