"""Open-loop HTTP load: requests arrive at a set rate whether or not earlier ones were answered.

A closed-loop generator (wrk, `benchmarks.loadgen`) slows down with the server, so it can never overload one;
real clients do not wait for each other. Arrivals here are Poisson at `rate` per second; each takes an idle
keep-alive connection from a pool (or opens one) and records its status, whether a 503 carried Retry-After,
and its latency from its planned arrival time (so a slow client shows up as latency, not as less load).
Raw asyncio streams with hand-parsed responses: a few thousand requests per second on one core.
"""

from __future__ import annotations

import asyncio
import math
import random
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass

_LENGTH = re.compile(rb"(?i)\r\ncontent-length: *(\d+)")
_RETRY_AFTER = re.compile(rb"(?i)\r\nretry-after: *\d+")
_CLOSE = re.compile(rb"(?i)\r\nconnection: *close")


@dataclass(frozen=True)
class Sample:
    """One request's fate."""

    arrival: float
    """Seconds from the start of the run at which the request was due."""
    latency_s: float
    """From its due time to the end of its answer (what its user waited)."""
    service_s: float
    """From sending it to the end of its answer (what the server took, client delays excluded)."""
    status: int
    """The HTTP status, or 0 when the connection failed."""
    retry_after: bool
    body: bytes
    error: str = ""
    """Why the connection failed (status 0)."""


def post_request(path: str, body: bytes, content_type: str) -> bytes:
    """The bytes of a keep-alive POST."""
    head = f"POST {path} HTTP/1.1\r\nHost: bake\r\nContent-Type: {content_type}\r\n"
    return f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body


async def open_loop(
    url: str,
    request: bytes,
    *,
    rate: float,
    seconds: float,
    max_connections: int = 2000,
    seed: int = 0,
) -> list[Sample]:
    """Send `request` to `url` at `rate` per second (Poisson arrivals) for `seconds`; every sample."""
    host, port = url.removeprefix("http://").split(":")
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    open_count = 0
    samples: list[Sample] = []
    tasks: set[asyncio.Task[None]] = set()
    arrivals = random.Random(seed)
    start = time.monotonic()

    async def one(due: float) -> None:
        nonlocal open_count
        status, retry_after, body, sent, failure = 0, False, b"", time.monotonic(), ""
        for attempt in range(2):  # a reused connection the server closed meanwhile: once more on a new one
            connection = idle.pop() if idle and attempt == 0 else None
            reused = connection is not None
            try:
                if connection is None:
                    if open_count >= max_connections:
                        raise ConnectionError("the client ran out of connections")
                    open_count += 1
                    connection = await asyncio.open_connection(host, int(port))
                reader, writer = connection
                sent = time.monotonic()
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                length = _LENGTH.search(head)
                body = await reader.readexactly(int(length.group(1))) if length else b""
                status = int(head.split(b" ", 2)[1])
                retry_after = bool(_RETRY_AFTER.search(head))
                if _CLOSE.search(head):
                    writer.close()
                    open_count -= 1
                else:
                    idle.append(connection)
                break
            except (OSError, asyncio.IncompleteReadError, ValueError) as error:
                if connection is not None:
                    connection[1].close()
                    open_count -= 1
                failure = f"{type(error).__name__}: {error}"
                stale = isinstance(error, asyncio.IncompleteReadError) and not error.partial
                if not (reused and stale):
                    break
        done = time.monotonic()
        samples.append(Sample(due, done - start - due, done - sent, status, retry_after, body, failure))

    due = 0.0
    while due < seconds:
        now = time.monotonic() - start
        if due > now:
            await asyncio.sleep(due - now)
        task = asyncio.ensure_future(one(due))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        due += arrivals.expovariate(rate)
    if tasks:
        await asyncio.wait(tasks)
    for _, writer in idle:
        writer.close()
    return samples


async def closed_loop(url: str, request: bytes, *, connections: int, seconds: float) -> list[Sample]:
    """`connections` clients each sending `request` as soon as the previous answer arrived, for `seconds`."""
    host, port = url.removeprefix("http://").split(":")
    samples: list[Sample] = []
    start = time.monotonic()

    async def client() -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            while (sent := time.monotonic() - start) < seconds:
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                length = _LENGTH.search(head)
                body = await reader.readexactly(int(length.group(1))) if length else b""
                status = int(head.split(b" ", 2)[1])
                took = time.monotonic() - start - sent
                samples.append(Sample(sent, took, took, status, bool(_RETRY_AFTER.search(head)), body))
        finally:
            writer.close()

    await asyncio.gather(*(client() for _ in range(connections)))
    return samples


def percentile(values: Sequence[float], q: float) -> float:
    """The `q`-th percentile (0-100) of `values`, nearest rank; NaN when there are none."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]
