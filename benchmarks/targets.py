"""The server the reliability benchmarks load: `python -m serve` with a tiny image classifier, and what they
send it (a photo-sized JPEG over the Hugging Face route), plus a sampler of its memory and queue."""

from __future__ import annotations

import argparse
import os
import re
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

from benchmarks.openloop import post_request
from tests.fixtures import images
from tests.fixtures.models import make_image_classifier
from tests.fixtures.servers import ServerProcess

PHOTO_SIZE = (1600, 1200)
"""A camera-sized photo: decoding it is most of a request's cost (as a real model's forward pass would be),
so the load is about the server's work, not about the load generator's HTTP speed on a 2-core machine."""
PHOTO = images.photo(*PHOTO_SIZE, seed=1)
REQUEST = post_request("/predict", PHOTO, "image/jpeg")
SERVER_ENV = {"BAKE_MAX_BATCH_SIZE": "16", "BAKE_MAX_WAIT_MS": "5"}
"""The tiny regime of `benchmarks.serving`; the queue bound and deadline are the defaults (256, 30 s)."""


def add_split_cores_option(parser: argparse.ArgumentParser) -> None:
    """`--split-cores`, for `tiny_server(split_cores=...)`."""
    parser.add_argument(
        "--split-cores",
        action="store_true",
        help="the load generator on the first core alone, the server on the others",
    )


@contextmanager
def tiny_server(*, split_cores: bool = False, **env: str) -> Iterator[ServerProcess]:
    """A running server with a tiny random-weight ResNet (settings: `SERVER_ENV`, then `env`).

    With `split_cores` the server runs on every core but the first and this process (the load generator)
    on the first alone, as a client on another machine would: on a machine this small the generator's own
    scheduling delays otherwise count as the server's latency. The server starts pinned, so the torch
    threads it chooses at warm-up fit its cores.
    """
    cores = sorted(os.sched_getaffinity(0))
    if split_cores and len(cores) < 2:
        raise RuntimeError("--split-cores needs at least 2 cores")
    with tempfile.TemporaryDirectory(prefix="bake-reliability-") as tmp:
        model = make_image_classifier(Path(tmp) / "resnet", "resnet", num_labels=10)
        server = ServerProcess({**SERVER_ENV, "BAKE_MODEL": str(model), **env}, Path(tmp) / "server.log")
        if split_cores:
            os.sched_setaffinity(0, cores[1:])  # the server inherits it
        try:
            server.start()
        finally:
            os.sched_setaffinity(0, cores[:1] if split_cores else cores)
        try:
            yield server
        finally:
            os.sched_setaffinity(0, cores)
            server.stop()


@dataclass
class Sampler:
    """Samples the server's resident memory and queue depth every `interval_s` from a thread."""

    url: str
    pid: int
    interval_s: float = 1.0
    samples: list[tuple[float, float, float]] = field(default_factory=list)
    """(seconds since start, RSS in MiB, queue depth)"""

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._process = psutil.Process(self.pid)

    def rss_mib(self) -> float:
        """The server's resident memory now."""
        return self._process.memory_info().rss / 2**20

    def _run(self) -> None:
        start = time.monotonic()
        with httpx.Client(timeout=10) as client:
            while not self._stop.wait(self.interval_s):
                try:
                    text = client.get(self.url + "/metrics").text
                    match = re.search(r"^bake_queue_depth (\S+)$", text, re.MULTILINE)
                    depth = float(match.group(1)) if match else float("nan")
                except httpx.HTTPError:
                    depth = float("nan")
                self.samples.append((time.monotonic() - start, self.rss_mib(), depth))

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)
