"""What the server itself saw during a load run: its `/metrics` scraped before and after, and diffed.

The runtime's Prometheus histograms (see `serve.metrics`) count batch sizes, device time per batch, queue
wait and request duration since the server started; the difference of two scrapes is exactly what
happened in between. Batch-size buckets are the integers 1..max_batch_size, so batch-size quantiles are
exact; time quantiles are interpolated within a bucket the way Prometheus' `histogram_quantile` does.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families

PREDICT_PATHS = frozenset({"/predict", "/"})
_HISTOGRAMS = {
    "bake_batch_size": "batch_size",
    "bake_batch_duration_seconds": "batch_seconds",
    "bake_queue_wait_seconds": "queue_wait_seconds",
}


@dataclass(frozen=True)
class Histogram:
    """A Prometheus histogram: cumulative counts by upper bound (`le`), the count and the sum."""

    bounds: tuple[float, ...]
    cumulative: tuple[float, ...]
    count: float
    total: float

    def minus(self, earlier: Histogram) -> Histogram:
        """What was observed after `earlier` (a scrape of the same histogram) up to this one."""
        if earlier.bounds != self.bounds:
            raise ValueError("the histograms have different buckets")
        return Histogram(
            self.bounds,
            tuple(now - then for now, then in zip(self.cumulative, earlier.cumulative)),
            self.count - earlier.count,
            self.total - earlier.total,
        )

    def mean(self) -> float | None:
        """The mean observation, None without observations."""
        return self.total / self.count if self.count > 0 else None

    def bucket_quantile(self, q: float) -> float | None:
        """The upper bound of the bucket holding the `q`-quantile (exact for integer observations)."""
        if self.count <= 0:
            return None
        rank = q * self.count
        return next((bound for bound, seen in zip(self.bounds, self.cumulative) if seen >= rank), math.inf)

    def quantile(self, q: float) -> float | None:
        """The `q`-quantile, interpolated linearly within its bucket (as Prometheus does)."""
        if self.count <= 0:
            return None
        rank = q * self.count
        lower_bound, lower_seen = 0.0, 0.0
        for bound, seen in zip(self.bounds, self.cumulative):
            if seen >= rank:
                if math.isinf(bound):
                    return lower_bound
                share = (rank - lower_seen) / (seen - lower_seen) if seen > lower_seen else 1.0
                return lower_bound + (bound - lower_bound) * share
            lower_bound, lower_seen = bound, seen
        return lower_bound


@dataclass(frozen=True)
class Snapshot:
    """One scrape of `/metrics`: the histograms bench reads, and answers by status on the predict routes."""

    histograms: dict[str, Histogram]
    predict_statuses: dict[str, float]
    predict_seconds: Histogram | None
    in_flight: float = 0.0
    """Requests being handled at the scrape, the scrape itself included."""
    queue_depth: float = 0.0
    """Requests waiting for the device at the scrape."""

    @property
    def idle(self) -> bool:
        """Whether the server was doing nothing but answer this scrape: no other request in flight, none
        queued, and no batch on the device. A batch runs from its dispatch, when the batcher records each
        member's queue wait, to its end, when it records the batch's size: until then the queue-wait count
        is ahead of the sum of batch sizes (and a batch whose clients have gone is neither in flight nor
        queued, so only this tells it is still running)."""
        dispatched = self.histograms.get("queue_wait_seconds")
        sizes = self.histograms.get("batch_size")
        running = dispatched is not None and sizes is not None and dispatched.count > sizes.total
        return self.in_flight <= 1 and self.queue_depth == 0 and not running


@dataclass(frozen=True)
class ServerWindow:
    """What the server saw between two scrapes (None: nothing observed)."""

    answers: int
    """Predict requests the server answered, any status."""
    errors: int
    """Of those, the ones whose status was not 2xx."""
    batches: int
    batch_mean: float | None
    batch_p50: int | None
    batch_p95: int | None
    batch_max: int | None
    device_ms_mean: float | None
    """Device time per batch (collate, forward, copy back)."""
    queue_wait_ms_mean: float | None
    queue_wait_ms_p95: float | None
    latency_ms_mean: float | None
    """Mean time from request start to the end of the response, as the server measured it."""

    def as_dict(self) -> dict[str, float | int | None]:
        """JSON-able form."""
        return asdict(self)


def scrape(client: httpx.Client, url: str) -> Snapshot:
    """Read `url`/metrics; raise `httpx.HTTPError` if it does not answer 200."""
    response = client.get(f"{url}/metrics", timeout=30)
    response.raise_for_status()
    return parse(response.text)


def parse(text: str) -> Snapshot:
    """The histograms and predict-route counts bench needs, from Prometheus text exposition."""
    histograms: dict[str, Histogram] = {}
    statuses: dict[str, float] = {}
    predict_seconds: Histogram | None = None
    gauges: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name in ("bake_requests_in_flight", "bake_queue_depth"):
            gauges[family.name] = sum(sample.value for sample in family.samples)
        if family.name in _HISTOGRAMS:
            histograms[_HISTOGRAMS[family.name]] = _histogram(family.samples)
        elif family.name == "bake_request_duration_seconds":
            samples = [sample for sample in family.samples if sample.labels.get("path") in PREDICT_PATHS]
            if samples:
                predict_seconds = _merged(samples)
        elif family.name == "bake_requests":
            for sample in family.samples:
                if sample.name.endswith("_total") and sample.labels.get("path") in PREDICT_PATHS:
                    status = sample.labels.get("status", "?")
                    statuses[status] = statuses.get(status, 0.0) + sample.value
    return Snapshot(
        histograms,
        statuses,
        predict_seconds,
        gauges.get("bake_requests_in_flight", 0.0),
        gauges.get("bake_queue_depth", 0.0),
    )


def window(before: Snapshot, after: Snapshot) -> ServerWindow:
    """What happened on the server between the scrapes `before` and `after`."""
    answers = {
        status: count - before.predict_statuses.get(status, 0.0)
        for status, count in after.predict_statuses.items()
    }
    sizes = _diff(before, after, "batch_size")
    device = _diff(before, after, "batch_seconds")
    wait = _diff(before, after, "queue_wait_seconds")
    latency = (
        after.predict_seconds.minus(before.predict_seconds)
        if after.predict_seconds and before.predict_seconds
        else after.predict_seconds
    )
    return ServerWindow(
        answers=round(sum(answers.values())),
        errors=round(sum(count for status, count in answers.items() if not status.startswith("2"))),
        batches=round(sizes.count) if sizes else 0,
        batch_mean=sizes.mean() if sizes else None,
        batch_p50=_whole(sizes.bucket_quantile(0.5)) if sizes else None,
        batch_p95=_whole(sizes.bucket_quantile(0.95)) if sizes else None,
        batch_max=_whole(sizes.bucket_quantile(1.0)) if sizes else None,
        device_ms_mean=_ms(device.mean()) if device else None,
        queue_wait_ms_mean=_ms(wait.mean()) if wait else None,
        queue_wait_ms_p95=_ms(wait.quantile(0.95)) if wait else None,
        latency_ms_mean=_ms(latency.mean()) if latency else None,
    )


def _histogram(samples: list) -> Histogram:
    buckets = sorted(
        (float(sample.labels["le"]), sample.value) for sample in samples if sample.name.endswith("_bucket")
    )
    count = sum(sample.value for sample in samples if sample.name.endswith("_count"))
    total = sum(sample.value for sample in samples if sample.name.endswith("_sum"))
    return Histogram(tuple(b for b, _ in buckets), tuple(c for _, c in buckets), count, total)


def _merged(samples: list) -> Histogram:
    """One histogram adding up the label sets in `samples` (e.g. POST / and POST /predict)."""
    parts: dict[str, list] = {}
    for sample in samples:
        parts.setdefault(sample.labels.get("path", ""), []).append(sample)
    histograms = [_histogram(part) for part in parts.values()]
    first = histograms[0]
    return Histogram(
        first.bounds,
        tuple(sum(h.cumulative[i] for h in histograms) for i in range(len(first.bounds))),
        sum(h.count for h in histograms),
        sum(h.total for h in histograms),
    )


def _diff(before: Snapshot, after: Snapshot, name: str) -> Histogram | None:
    now = after.histograms.get(name)
    if now is None:
        return None
    then = before.histograms.get(name)
    return now.minus(then) if then is not None else now


def _whole(value: float | None) -> int | None:
    return None if value is None or math.isinf(value) else round(value)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000
