"""Closed-loop HTTP load with wrk (C, one thread): N connections POST the same body as fast as answered.

wrk costs far less CPU per request than any Python client, which matters on a 2-core machine where the
load generator shares the cores with the server under test.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

_SCRIPT = r"""
local f = assert(io.open(os.getenv("BENCH_BODY"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*all")
f:close()
wrk.headers["Content-Type"] = os.getenv("BENCH_CONTENT_TYPE")
done = function(summary, latency, requests)
  io.write(string.format(
    '\nBENCH_RESULT {"requests": %d, "duration_us": %d, "non2xx": %d, "socket_errors": %d, ' ..
    '"p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d}\n',
    summary.requests, summary.duration, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"""


@dataclass(frozen=True)
class LoadResult:
    """Throughput and latency of one load run."""

    requests: int
    seconds: float
    throughput: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    failures: int

    def as_dict(self) -> dict[str, float | int]:
        """JSON-able form."""
        return asdict(self)


def wrk_available() -> bool:
    """Whether the wrk binary is on PATH."""
    return shutil.which("wrk") is not None


def run_load(url: str, body: bytes, content_type: str, *, connections: int, seconds: float) -> LoadResult:
    """POST `body` to `url` over `connections` keep-alive connections for `seconds`."""
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp, "post.lua")
        script.write_text(_SCRIPT)
        body_file = Path(tmp, "body")
        body_file.write_bytes(body)
        env = {**os.environ, "BENCH_BODY": str(body_file), "BENCH_CONTENT_TYPE": content_type}
        command = [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            "--timeout",
            "60s",
            "-s",
            str(script),
            url,
        ]
        completed = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    line = next(line for line in completed.stdout.splitlines() if line.startswith("BENCH_RESULT "))
    raw = json.loads(line.removeprefix("BENCH_RESULT "))
    duration = raw["duration_us"] / 1e6
    return LoadResult(
        requests=raw["requests"],
        seconds=duration,
        throughput=raw["requests"] / duration,
        p50_ms=raw["p50_us"] / 1000,
        p90_ms=raw["p90_us"] / 1000,
        p99_ms=raw["p99_us"] / 1000,
        max_ms=raw["max_us"] / 1000,
        failures=raw["non2xx"] + raw["socket_errors"],
    )
