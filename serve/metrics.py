"""Prometheus metrics of one server, and the ASGI middleware that counts and times every request."""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve.contract.routes import PROBE_PATHS, protocol_of
from serve.lifecycle import Activity

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_FAST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)


class Metrics:
    """The server's metrics, in a registry of their own (so several servers can live in one process)."""

    def __init__(self, *, max_batch_size: int) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "bake_requests",
            "HTTP requests by protocol, route and status code",
            ["protocol", "path", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "bake_request_duration_seconds",
            "Time from request start to the end of the response, by protocol and route",
            ["protocol", "path"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "bake_batch_size",
            "Requests per batch run on the device",
            buckets=tuple(range(1, max_batch_size + 1)),
            registry=self.registry,
        )
        self.batch_duration = Histogram(
            "bake_batch_duration_seconds",
            "Device time per batch (collate, forward, copy back)",
            buckets=_FAST_BUCKETS,
            registry=self.registry,
        )
        self.queue_wait = Histogram(
            "bake_queue_wait_seconds",
            "Time requests wait for the device",
            buckets=_FAST_BUCKETS,
            registry=self.registry,
        )
        self.preprocess = Histogram(
            "bake_preprocess_seconds",
            "CPU preprocessing time per request (parse, decode, resize)",
            buckets=_FAST_BUCKETS,
            registry=self.registry,
        )
        self.inference_failures = Counter(
            "bake_inference_failures",
            "Requests the model failed on even when run alone, by reason (error, out_of_memory, "
            "rejected_output: scores that are not numbers)",
            ["reason"],
            registry=self.registry,
        )
        self.out_of_memory_splits = Counter(
            "bake_out_of_memory_splits",
            "Batches split in halves and retried after the device ran out of memory",
            registry=self.registry,
        )
        self.inference_steps = Counter(
            "bake_inference_steps",
            "Steps of step-by-step inference (diffusion denoising) run on the device, counted per request",
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "bake_queue_depth", "Requests waiting for the device", registry=self.registry
        )
        self.in_flight = Gauge("bake_requests_in_flight", "Requests being handled", registry=self.registry)
        self.ready = Gauge("bake_ready", "1 once the model is loaded and warmed up", registry=self.registry)

    def watch_queue(self, depth: Callable[[], int]) -> None:
        """Report `depth()` as the queue depth at every scrape."""
        self.queue_depth.set_function(depth)

    def observe_batch(self, size: int, seconds: float) -> None:
        """Record one batch run on the device."""
        self.batch_size.observe(size)
        self.batch_duration.observe(seconds)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)


class ObserveMiddleware:
    """Counts and times every HTTP request, and tells `Activity` about the ones that are not probes."""

    def __init__(self, app: ASGIApp, *, metrics: Metrics, activity: Activity) -> None:
        self.app = app
        self.metrics = metrics
        self.activity = activity

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        active = scope["path"] not in PROBE_PATHS
        status = 500
        started = time.perf_counter()

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        if active:
            self.activity.begin()
        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_and_record)
        finally:
            self.metrics.in_flight.dec()
            if active:
                self.activity.end()
            # The matched route's template (bounded cardinality: /predictions/{prediction_id}), else "other".
            path = getattr(scope.get("route"), "path", None) or "other"
            protocol = protocol_of(scope["path"]) or "none"
            self.metrics.requests.labels(protocol, path, str(status)).inc()
            self.metrics.latency.labels(protocol, path).observe(time.perf_counter() - started)
