"""Closed-loop HTTP load: N connections each POST the same body again as soon as the answer arrives.

Two generators measure the same thing:

- `wrk` (C, one thread) when it is installed: it costs far less CPU per request than any Python client,
  which matters when the load generator shares the machine's cores with the server under test;
- an in-process asyncio `httpx` client otherwise.

Both report what the client saw (latency from sending the request to the last byte of the answer) and
what the client itself cost (its CPU seconds), so a caller can tell when the client, not the server, was
the bottleneck.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import resource
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import httpx

Generator = Literal["wrk", "httpx"]
Tick = Callable[[float, int | None], None]
"""Called a few times a second during a run with (seconds elapsed, requests answered so far or None)."""

_TICK_S = 0.1
_RETRY_PAUSE_S = 0.01
"""After a transport error (refused connection), a Python client pauses this long before its next try."""

_WRK_SCRIPT = r"""
local f = assert(io.open(os.getenv("BENCH_BODY"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*all")
f:close()
for name, value in string.gmatch(os.getenv("BENCH_HEADERS"), "([^\n:]+): ([^\n]*)") do
  wrk.headers[name] = value
end
done = function(summary, latency, requests)
  io.write(string.format(
    '\nBENCH_RESULT {"requests": %d, "duration_us": %d, "non2xx": %d, "socket_errors": %d, "mean_us": %f, ' ..
    '"p50_us": %d, "p90_us": %d, "p95_us": %d, "p99_us": %d, "max_us": %d}\n',
    summary.requests, summary.duration, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency.mean, latency:percentile(50), latency:percentile(90), latency:percentile(95),
    latency:percentile(99), latency.max))
end
"""


class LoadError(Exception):
    """The load generator itself failed (wrk crashed or printed no result)."""


@dataclass(frozen=True)
class Target:
    """What every request of a run is: one URL, one body, the same headers."""

    url: str
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class LoadResult:
    """What the client measured during one run at one concurrency."""

    generator: str
    connections: int
    requests: int
    """Answers received (any status)."""
    non2xx: int
    """Answers whose status was not 2xx."""
    transport_errors: int
    """Connection, read, write and timeout errors (no answer)."""
    seconds: float
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    client_cpu_s: float
    """CPU seconds the load generator used (user + system)."""

    @property
    def failures(self) -> int:
        """Requests that did not get a 2xx answer."""
        return self.non2xx + self.transport_errors

    @property
    def throughput(self) -> float:
        """Successful answers per second."""
        return (self.requests - self.non2xx) / self.seconds if self.seconds > 0 else 0.0

    @property
    def in_flight(self) -> float:
        """Requests the client actually kept outstanding on average (Little's law: rate x mean latency).

        A closed-loop client with `connections` connections keeps that many in flight unless it is too slow
        to send the next request as soon as an answer arrives: then this falls below `connections`.
        """
        return self.requests / self.seconds * self.mean_ms / 1000 if self.seconds > 0 else 0.0

    @property
    def client_cpu_share(self) -> float:
        """The client's CPU time over the run's wall time (1.0: one core busy all along)."""
        return self.client_cpu_s / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, float | int | str]:
        """JSON-able form, with the derived figures."""
        return {
            **asdict(self),
            "failures": self.failures,
            "throughput": self.throughput,
            "in_flight": self.in_flight,
        }


def wrk_available() -> bool:
    """Whether the wrk binary is on PATH."""
    return shutil.which("wrk") is not None


def run_load(
    target: Target,
    *,
    connections: int,
    seconds: float,
    generator: Generator = "wrk",
    tick: Tick | None = None,
) -> LoadResult:
    """Load `target` over `connections` keep-alive connections for `seconds` with `generator`."""
    if connections < 1 or seconds <= 0:
        raise ValueError("a load run needs at least one connection and a positive duration")
    if generator == "wrk":
        return _run_wrk(target, connections, seconds, tick)
    return asyncio.run(_run_httpx(target, connections, seconds, tick))


def _run_wrk(target: Target, connections: int, seconds: float, tick: Tick | None) -> LoadResult:
    with tempfile.TemporaryDirectory(prefix="bake-wrk-") as tmp:
        script = Path(tmp, "post.lua")
        script.write_text(_WRK_SCRIPT)
        body_file = Path(tmp, "body")
        body_file.write_bytes(target.body)
        headers = "".join(f"{name}: {value}\n" for name, value in target.headers.items())
        env = {**os.environ, "BENCH_BODY": str(body_file), "BENCH_HEADERS": headers}
        duration = max(1, round(seconds))
        command = [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{duration}s",
            "--timeout",
            "60s",
            "-s",
            str(script),
            target.url,
        ]
        cpu_before = _children_cpu_s()
        started = time.monotonic()
        process = subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        try:
            while process.poll() is None:
                if tick is not None:
                    tick(time.monotonic() - started, None)
                time.sleep(_TICK_S)
            stdout, stderr = process.communicate()
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        cpu = _children_cpu_s() - cpu_before
    line = next((line for line in stdout.splitlines() if line.startswith("BENCH_RESULT ")), None)
    if process.returncode != 0 or line is None:
        raise LoadError(f"wrk failed (exit {process.returncode}): {(stderr or stdout).strip()[-300:]}")
    raw = json.loads(line.removeprefix("BENCH_RESULT "))
    return LoadResult(
        generator="wrk",
        connections=connections,
        requests=raw["requests"],
        non2xx=raw["non2xx"],
        transport_errors=raw["socket_errors"],
        seconds=raw["duration_us"] / 1e6,
        mean_ms=raw["mean_us"] / 1000,
        p50_ms=raw["p50_us"] / 1000,
        p90_ms=raw["p90_us"] / 1000,
        p95_ms=raw["p95_us"] / 1000,
        p99_ms=raw["p99_us"] / 1000,
        max_ms=raw["max_us"] / 1000,
        client_cpu_s=cpu,
    )


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


async def _run_httpx(target: Target, connections: int, seconds: float, tick: Tick | None) -> LoadResult:
    latencies: list[float] = []
    non2xx = transport_errors = 0
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    cpu_before = time.process_time()
    started = time.perf_counter()
    deadline = started + seconds

    async def client_loop(client: httpx.AsyncClient) -> None:
        nonlocal non2xx, transport_errors
        while time.perf_counter() < deadline:
            sent = time.perf_counter()
            try:
                response = await client.post(target.url, content=target.body, headers=dict(target.headers))
            except httpx.TransportError:
                transport_errors += 1
                await asyncio.sleep(_RETRY_PAUSE_S)
                continue
            latencies.append(time.perf_counter() - sent)
            if not response.is_success:
                non2xx += 1

    async def ticker() -> None:
        while True:
            assert tick is not None
            tick(time.perf_counter() - started, len(latencies))
            await asyncio.sleep(_TICK_S)

    async with httpx.AsyncClient(limits=limits, timeout=60.0) as client:
        ticking = asyncio.create_task(ticker()) if tick is not None else None
        try:
            await asyncio.gather(*(client_loop(client) for _ in range(connections)))
        finally:
            if ticking is not None:
                ticking.cancel()
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu_before
    ordered = sorted(latencies)
    return LoadResult(
        generator="httpx",
        connections=connections,
        requests=len(ordered),
        non2xx=non2xx,
        transport_errors=transport_errors,
        seconds=elapsed,
        mean_ms=1000 * sum(ordered) / len(ordered) if ordered else 0.0,
        p50_ms=_percentile(ordered, 50),
        p90_ms=_percentile(ordered, 90),
        p95_ms=_percentile(ordered, 95),
        p99_ms=_percentile(ordered, 99),
        max_ms=1000 * ordered[-1] if ordered else 0.0,
        client_cpu_s=cpu,
    )


def _percentile(ordered: list[float], percent: float) -> float:
    """The nearest-rank percentile of sorted seconds, in milliseconds (0 for no samples)."""
    if not ordered:
        return 0.0
    return 1000 * ordered[max(0, math.ceil(percent / 100 * len(ordered)) - 1)]
