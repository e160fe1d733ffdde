"""Faults at serving time (issue 13): a poison input, out of memory, clients that vanish, SIGTERM under load.

- A request that makes the model raise fails alone: 500 in its protocol's shape with an incident id, the
  server's log line names that id (with the traceback), its batch-mates succeed, /metrics counts it.
- A batch too large for the device's memory is split and retried until every request succeeds (CUDA's
  out-of-memory error, raised by a test task above a size threshold: the CPU has no such limit).
- Clients that disconnect while queued or while their batch runs leave nothing behind (file descriptors,
  memory): `benchmarks/disconnects.py` with a few hundred clients (the script runs 10 000).
- SIGTERM under load: requests already sent are answered, new connections are refused, and the process exits
  0 within the kill timeouts that bake writes for Fly (fly.toml `kill_timeout`) and Knative (`timeoutSeconds`,
  which is the pod's termination grace period).
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import tomlkit

from bake.labels import ImageFacts
from bake.launch.kubernetes import KubernetesOptions, render_manifests
from benchmarks.disconnects import SERVER_ENV, run_disconnects
from fly import FlyServiceSpec, render_fly_toml
from serve.contract.settings import ServeSettings, Settings
from tests.fixtures import images
from tests.fixtures.gated_task import Gates, gated_settings, registered
from tests.fixtures.servers import ServerProcess, ThreadServer

PHOTO = images.photo(160, 120, seed=2)


@pytest.fixture
def gates() -> Iterator[Gates]:
    with registered() as gates:
        yield gates


def faults_settings(tmp_path: Path, **overrides: Any) -> Settings:
    return gated_settings(
        tmp_path, **({"max_batch_size": 8, "max_wait_ms": 300, "max_queue": 64} | overrides)
    )


def metric(url: str, pattern: str) -> float:
    """The sum of the /metrics samples whose line matches `pattern`."""
    text = httpx.get(url + "/metrics").text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if re.match(pattern, line))


async def test_a_poison_input_fails_alone_with_an_incident_id_in_its_answer_and_the_log(
    tmp_path: Path, gates: Gates, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("ERROR", logger="serve")
    with ThreadServer(faults_settings(tmp_path)) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            texts = ["one", "two", "poison: fail", "three", "four"]
            answers = await asyncio.gather(*(client.post("/predict", json={"inputs": t}) for t in texts))
            cog = await client.post("/predictions", json={"input": {"input": "fail again"}})
        assert [answer.status_code for answer in answers] == [200, 200, 500, 200, 200]
        assert [answers[i].json() for i in (0, 1, 3, 4)] == [
            {"output": t.upper()} for t in texts if "fail" not in t
        ]
        assert any(set(batch) == set(texts) for batch in gates.batches), "the five must first share a batch"
        message = answers[2].json()["error"]
        incident = re.search(r"incident ([0-9a-f]{12})", message)
        assert incident and "this input always fails" in message
        logged = [record for record in caplog.records if incident.group(1) in record.getMessage()]
        assert len(logged) == 1 and logged[0].exc_info is not None, "one log line, with the traceback"
        assert (
            cog.status_code == 200 and cog.json()["status"] == "failed" and "incident" in cog.json()["error"]
        )
        assert metric(server.url, r'bake_inference_failures_total\{reason="error"\}') == 2
        assert metric(server.url, r'bake_requests_total\{path="/predict".*status="500"\}') == 1
        assert httpx.post(server.url + "/predict", json={"inputs": "still up"}).json() == {
            "output": "STILL UP"
        }


async def test_a_batch_that_runs_out_of_memory_is_split_until_every_request_succeeds(
    tmp_path: Path, gates: Gates
) -> None:
    with ThreadServer(faults_settings(tmp_path)) as server:
        gates.memory_rows = 2  # after the warm-up, which ran every batch size
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            texts = [f"request {i}" for i in range(8)]
            answers = await asyncio.gather(*(client.post("/predict", json={"inputs": t}) for t in texts))
        assert [answer.json() for answer in answers] == [{"output": t.upper()} for t in texts]
        tried = [len(batch) for batch in gates.batches if "warm" not in batch]
        assert tried == [8, 4, 2, 2, 4, 2, 2], "one batch of eight, split in halves until they fit"
        assert metric(server.url, r"bake_out_of_memory_splits_total") == 3
        assert metric(server.url, r"bake_inference_failures_total") == 0


@pytest.mark.slow
def test_clients_that_disconnect_while_queued_or_running_leak_nothing(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    env = {**SERVER_ENV, "BAKE_MODEL": str(tiny_models["resnet"])}
    with ServerProcess(env, tmp_path / "server.log") as server:
        assert server.process is not None
        report = run_disconnects(server.url, server.process.pid, count=400, concurrency=16)
    assert report.fds_after <= report.fds_before, report
    assert report.rss_growth < 0.05, report
    assert report.still_correct
    assert report.recorded_gone >= 0.1 * report.clients, "requests must be abandoned before their answer"
    assert report.rows_run < report.clients, "the work of requests abandoned in the queue never runs"


def kill_timeouts(drain_s: float, timeout_s: float) -> dict[str, float]:
    """How long Fly and Knative wait after SIGTERM before SIGKILL, read from the configs bake generates."""
    serve = ServeSettings.from_environment(
        {"BAKE_DRAIN_TIMEOUT_S": str(drain_s), "BAKE_TIMEOUT_S": str(timeout_s)}
    )
    spec = FlyServiceSpec(
        app="drain-test",
        image="bake/tiny:1",
        max_batch_size=8,
        max_queue=256,
        warmup_seconds=5,
        drain_seconds=serve.drain_timeout_s,
        weights_bytes=1_000_000,
    )
    fly_toml = tomlkit.parse(render_fly_toml(spec))
    facts = ImageFacts(
        model="tiny",
        revision="main",
        commit_sha="0" * 40,
        task="image-classification",
        device="cpu",
        weights={},
        weights_bytes=1_000_000,
        serve=serve,
        bake_version="0",
    )
    knative = render_manifests(facts, "bake/tiny:1", KubernetesOptions(name="drain-test"))[0]
    return {
        "fly": float(str(fly_toml["kill_timeout"]).removesuffix("s")),
        "knative": float(knative["spec"]["template"]["spec"]["timeoutSeconds"]),
    }


class Client(threading.Thread):
    """Sends predictions one after another on fresh connections until `stop` is set, recording when each
    was sent and how it ended (a status, "refused", or the connection error)."""

    def __init__(self, port: int, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.stop = stop
        self.results: list[tuple[float, float, int | str]] = []
        """(connecting at, request sent at, status or error name)"""

    def run(self) -> None:
        request = (
            b"POST /predict HTTP/1.1\r\nHost: bake\r\nConnection: close\r\nContent-Type: image/jpeg\r\n"
            b"Content-Length: %d\r\n\r\n" % len(PHOTO)
        ) + PHOTO
        while not self.stop.is_set():
            connecting = sent = time.monotonic()
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=60) as sock:
                    sock.sendall(request)
                    sent = time.monotonic()
                    head = sock.recv(65536)
                    while sock.recv(65536):
                        pass
                outcome: int | str = int(head.split(b" ", 2)[1]) if head else "closed without an answer"
            except ConnectionRefusedError:
                outcome = "refused"
                time.sleep(0.05)
            except OSError as error:
                outcome = type(error).__name__
            self.results.append((connecting, sent, outcome))


@pytest.mark.slow
def test_sigterm_under_load_answers_what_was_sent_refuses_new_and_exits_0_within_the_kill_timeouts(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    drain_s, timeout_s = 10.0, 10.0
    grace = kill_timeouts(drain_s, timeout_s)
    env = {
        "BAKE_MODEL": str(tiny_models["resnet"]),
        "BAKE_MAX_BATCH_SIZE": "8",
        "BAKE_MAX_WAIT_MS": "20",
        "BAKE_DRAIN_TIMEOUT_S": str(drain_s),
        "BAKE_TIMEOUT_S": str(timeout_s),
    }
    server = ServerProcess(env, tmp_path / "server.log").start()
    stop = threading.Event()
    clients = [Client(server.port, stop) for _ in range(16)]
    for client in clients:
        client.start()
    time.sleep(3)
    signalled = time.monotonic()
    server.signal(signal.SIGTERM)
    status = server.wait(max(grace.values()) + 30)
    exited = time.monotonic() - signalled
    time.sleep(max(0.0, signalled + 3 - time.monotonic()))
    stop.set()
    for client in clients:
        client.join(30)
    results = [result for client in clients for result in client.results]
    assert status == 0, server.log()[-3000:]
    assert exited < min(grace.values()), f"drained in {exited:.1f} s; kill timeouts {grace}"
    before = [outcome for _, sent, outcome in results if sent < signalled - 0.2]
    assert len(before) >= 16 and set(before) == {200}, f"requests sent before SIGTERM: {set(before)}"
    after = [outcome for connecting, _, outcome in results if connecting > signalled + 1.0]
    assert after and set(after) == {"refused"}, f"connections after SIGTERM: {set(after)}"
    answered = [outcome for _, _, outcome in results if isinstance(outcome, int)]
    assert set(answered) <= {200, 503}, f"every answer is a prediction or a 503: {set(answered)}"
    print(f"drained and exited in {exited:.2f} s (kill timeouts: {grace}); {len(answered)} answers")


def test_the_kill_timeouts_cover_the_drain() -> None:
    grace = kill_timeouts(drain_s=30, timeout_s=10)
    assert grace["fly"] >= 30 + 5 and grace["knative"] >= 30 + 5


@pytest.mark.slow
def test_2000_keep_alive_connections_are_held_while_requests_flow(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    """2000 clients hold keep-alive connections open (a request every 3 s, under uvicorn's 5 s keep-alive
    timeout) while 20 others predict without pause. The server starts with a soft open-file limit of 1024:
    it raises its own, so no connection is refused or dropped and every request is answered; once the
    clients leave, its file descriptors are back to what they were."""
    env = {
        "BAKE_MODEL": str(tiny_models["resnet"]),
        "BAKE_MAX_BATCH_SIZE": "8",
        "BAKE_MAX_WAIT_MS": "10",
        "BAKE_CPU_THREADS": "1",
    }
    server = ServerProcess(env, tmp_path / "server.log", open_files=1024).start()
    assert server.process is not None
    process = psutil.Process(server.process.pid)
    try:
        before = process.num_fds()
        outcome = asyncio.run(hold_connections(server.url, process, idle=2000, busy=20, seconds=20))
        after = settled_fds(process, before)
    finally:
        status = server.stop()
    assert outcome.held == 2000 and outcome.peak_fds >= before + 2000, outcome
    assert outcome.idle_errors == [] and outcome.busy_errors == [], outcome
    assert outcome.idle_answers >= 2000 * 5 and outcome.predictions >= 50 and outcome.wrong == 0, outcome
    assert after <= before + 2, f"{before} file descriptors before, {after} after"
    assert "Too many open files" not in server.log() and status == 0
    print(f"held 2000 connections: {outcome}; fds {before} -> peak {outcome.peak_fds} -> {after}")


def settled_fds(process: psutil.Process, target: int, timeout_s: float = 30.0) -> int:
    """The process's open file descriptors once back at `target` (or after `timeout_s`)."""
    deadline = time.monotonic() + timeout_s
    while process.num_fds() > target and time.monotonic() < deadline:
        time.sleep(0.5)
    return process.num_fds()


@dataclass
class Held:
    """What the clients of `hold_connections` saw."""

    held: int = 0
    idle_answers: int = 0
    idle_errors: list[str] = field(default_factory=list)
    predictions: int = 0
    busy_errors: list[str] = field(default_factory=list)
    wrong: int = 0
    peak_fds: int = 0


async def hold_connections(
    url: str, process: psutil.Process, *, idle: int, busy: int, seconds: float
) -> Held:
    """`idle` keep-alive connections that GET /health every 3 s and `busy` ones that predict back to back
    (waiting 50 ms after a 503), all for `seconds`."""
    host, port = url.removeprefix("http://").split(":")
    held = Held()
    reference = [item["label"] for item in httpx.post(url + "/predict", content=PHOTO, timeout=30).json()]
    stop = time.monotonic() + seconds
    health = b"GET /health HTTP/1.1\r\nHost: bake\r\n\r\n"
    predict = (
        b"POST /predict HTTP/1.1\r\nHost: bake\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n"
        % len(PHOTO)
    ) + PHOTO

    async def exchange(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
    ) -> tuple[int, bytes]:
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        length = re.search(rb"(?i)content-length: (\d+)", head)
        body = await reader.readexactly(int(length.group(1))) if length else b""
        return int(head.split(b" ", 2)[1]), body

    async def idle_client(index: int) -> None:
        try:
            reader, writer = await asyncio.open_connection(host, int(port))
        except OSError as error:
            held.idle_errors.append(f"connect: {error}")
            return
        held.held += 1
        try:
            await asyncio.sleep(3 * index / idle)  # spread the pings over the period
            while time.monotonic() < stop:
                status, _ = await exchange(reader, writer, health)
                if status != 200:
                    held.idle_errors.append(str(status))
                held.idle_answers += 1
                await asyncio.sleep(3)
        except (OSError, asyncio.IncompleteReadError) as error:
            held.idle_errors.append(f"{type(error).__name__}: {error}")
        finally:
            writer.close()

    async def busy_client() -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            while time.monotonic() < stop:
                status, body = await exchange(reader, writer, predict)
                if status == 503:
                    await asyncio.sleep(0.05)
                elif status != 200:
                    held.busy_errors.append(str(status))
                else:
                    held.predictions += 1
                    held.wrong += [item["label"] for item in json.loads(body)] != reference
        except (OSError, asyncio.IncompleteReadError) as error:
            held.busy_errors.append(f"{type(error).__name__}: {error}")
        finally:
            writer.close()

    async def watch_fds() -> None:
        while time.monotonic() < stop:
            held.peak_fds = max(held.peak_fds, process.num_fds())
            await asyncio.sleep(1)

    await asyncio.gather(
        *(idle_client(i) for i in range(idle)), *(busy_client() for _ in range(busy)), watch_fds()
    )
    return held
