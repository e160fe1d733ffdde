"""Clients that go away mid-request: nothing may leak (issue 13).

Thousands of clients each send a whole prediction request, then close the connection after a random delay:
before their request reaches the queue, while it waits there for its batch, or while its batch runs. The
server must drop the ones still queued (their work never runs), discard the answers of the rest, and keep
nothing: its open file descriptors return to what they were before, its resident memory (once it has returned
its free memory after the burst, `serve.memory`) to within 5 %, and it still answers correctly.

Usage: python -m benchmarks.disconnects [--count 10000] [--warmup 1000] [--concurrency 32]
                                        [--max-delay-ms 150] [--out benchmarks/results/disconnects.json]
The baseline of file descriptors and memory is taken after `--warmup` abandoned clients.
(`run_disconnects` is also what tests/test_faults.py runs, with a few hundred clients.)
"""

from __future__ import annotations

import argparse
import random
import re
import socket
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import psutil

from benchmarks.report import machine, write_report
from serve.memory import QUIET_S
from tests.fixtures import images
from tests.fixtures.models import make_image_classifier
from tests.fixtures.servers import ServerProcess

PHOTO = images.photo(320, 240, seed=5)
REQUEST = (
    b"POST /predict HTTP/1.1\r\nHost: bake\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n"
    % len(PHOTO)
) + PHOTO
SERVER_ENV = {
    "BAKE_MAX_BATCH_SIZE": "8",
    "BAKE_MAX_WAIT_MS": "50",
    "BAKE_WORKERS": "2",
    "BAKE_CPU_THREADS": "1",
}


@dataclass(frozen=True)
class DisconnectReport:
    """What the server kept, before and after the clients went away."""

    clients: int
    seconds: float
    fds_before: int
    fds_after: int
    rss_before_mib: float
    rss_after_mib: float
    recorded_gone: int
    """Requests the server recorded as abandoned by their client (status 499 in /metrics)."""
    rows_run: int
    """Requests that reached the device all the same (their batch had started, or their answer was ready)."""
    still_correct: bool

    @property
    def rss_growth(self) -> float:
        """RSS after / before - 1."""
        return self.rss_after_mib / self.rss_before_mib - 1


def run_disconnects(
    url: str,
    pid: int,
    *,
    count: int,
    concurrency: int = 32,
    max_delay_s: float = 0.15,
    seed: int = 0,
    warmup: int = 0,
) -> DisconnectReport:
    """Send `count` requests to the server at `url` (process `pid`), each abandoned after a random delay;
    `warmup` more are abandoned first, before the file descriptors and memory are measured (the memory the
    paths of abandoned requests take once is not a per-request leak)."""
    process = psutil.Process(pid)
    reference = httpx.post(url + "/predict", content=PHOTO, timeout=30).json()
    delays = random.Random(seed)

    def abandon(clients: int) -> None:
        with ThreadPoolExecutor(concurrency) as pool:
            list(
                pool.map(
                    lambda delay: _abandon(url, delay),
                    [delays.uniform(0, max_delay_s) for _ in range(clients)],
                )
            )

    abandon(warmup)
    gone_before, rows_before = _metric(url, _GONE), _metric(url, _ROWS)
    fds_before, rss_before = _settled_fds(process, None), _quiet_rss(process)
    started = time.monotonic()
    abandon(count)
    seconds = time.monotonic() - started
    fds_after = _settled_fds(process, fds_before)
    time.sleep(1)
    gone, rows = _metric(url, _GONE) - gone_before, _metric(url, _ROWS) - rows_before
    answer = httpx.post(url + "/predict", content=PHOTO, timeout=30).json()
    rss_after = _quiet_rss(process)
    return DisconnectReport(
        clients=count,
        seconds=seconds,
        fds_before=fds_before,
        fds_after=fds_after,
        rss_before_mib=rss_before / 2**20,
        rss_after_mib=rss_after / 2**20,
        recorded_gone=int(gone),
        rows_run=int(rows),
        still_correct=[item["label"] for item in answer] == [item["label"] for item in reference],
    )


def _abandon(url: str, delay_s: float) -> None:
    """Send the whole request, wait `delay_s`, then reset the connection without reading the answer."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(REQUEST)
        time.sleep(delay_s)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST


def _quiet_rss(process: psutil.Process) -> int:
    """The server's resident memory once it has been without a request in flight long enough to return its
    free memory to the system (`serve.memory`), as it does after every burst."""
    time.sleep(QUIET_S + 1)
    return process.memory_info().rss


def _settled_fds(process: psutil.Process, target: int | None, timeout_s: float = 30.0) -> int:
    """The process's open file descriptors once they stop changing (or reach `target`)."""
    deadline = time.monotonic() + timeout_s
    last = process.num_fds()
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = process.num_fds()
        if (target is not None and now <= target) or (target is None and now == last):
            return now
        last = now
    return last


_GONE = r'bake_requests_total\{path="/predict",protocol="huggingface",status="499"\} (\S+)'
_ROWS = r"bake_batch_size_sum (\S+)"


def _metric(url: str, pattern: str) -> float:
    match = re.search(pattern, httpx.get(url + "/metrics", timeout=30).text)
    return float(match.group(1)) if match else 0.0


def main() -> None:
    """Start a server with a tiny model, abandon `--count` requests, print and record what leaked."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument(
        "--warmup", type=int, default=1000, help="clients abandoned before the baseline is taken"
    )
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--max-delay-ms", type=float, default=150)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/disconnects.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bake-disconnects-") as tmp:
        model = make_image_classifier(Path(tmp) / "resnet", "resnet", image_size=64)
        with ServerProcess({**SERVER_ENV, "BAKE_MODEL": str(model)}, Path(tmp) / "server.log") as server:
            assert server.process is not None
            report = run_disconnects(
                server.url,
                server.process.pid,
                count=args.count,
                concurrency=args.concurrency,
                max_delay_s=args.max_delay_ms / 1000,
                warmup=args.warmup,
            )
    print(f"{report.clients} clients gone within {args.max_delay_ms:.0f} ms, in {report.seconds:.0f} s")
    print(f"  file descriptors  {report.fds_before} -> {report.fds_after}")
    print(f"  RSS               {report.rss_before_mib:.0f} -> {report.rss_after_mib:.0f} MiB")
    print(f"                    ({100 * report.rss_growth:+.1f} %)")
    print(f"  recorded as gone  {report.recorded_gone}; ran on the device anyway: {report.rows_run}")
    print(f"  answers correct   {report.still_correct}")
    write_report(
        {"machine": machine(), "settings": vars(args) | {"out": str(args.out)}, **asdict(report)}, args.out
    )


if __name__ == "__main__":
    main()
