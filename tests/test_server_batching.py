"""The HTTP server's queueing contract (503, 504, disconnects, isolation, readiness) over real HTTP.

A gated test task stands in for the model so that "the device is busy" is a state the test controls.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from serve.contract.settings import Settings
from serve.runtime import State
from tests.fixtures.gated_task import Gates, gated_settings, registered
from tests.fixtures.servers import ThreadServer


@pytest.fixture
def gates() -> Iterator[Gates]:
    with registered() as gates:
        yield gates


def settings(tmp_path: Path, **overrides: Any) -> Settings:
    return gated_settings(tmp_path, **({"max_batch_size": 1, "max_wait_ms": 0, "max_queue": 8} | overrides))


async def wait_for(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


def post(client: httpx.AsyncClient, text: str) -> Any:
    return client.post("/predict", json={"inputs": text})


async def test_ready_answers_503_until_the_model_is_loaded_and_warmed(tmp_path: Path, gates: Gates) -> None:
    gates.load.clear()
    server = ThreadServer(settings(tmp_path)).start(wait_for="/health")
    try:
        async with httpx.AsyncClient(base_url=server.url) as client:
            ready = await client.get("/ready")
            assert ready.status_code == 503 and ready.json()["status"] == "loading"
            assert (await client.get("/health")).status_code == 200
            early = await post(client, "hello")
            assert early.status_code == 503
            assert "loading" in early.json()["error"] and early.headers["Retry-After"]
            gates.load.set()
            await wait_for(lambda: server.runtime.state is State.READY)
            assert (await client.get("/ready")).status_code == 200
            answer = await post(client, "hello")
            assert answer.status_code == 200 and answer.json() == {"output": "HELLO"}
    finally:
        server.stop()


async def test_predictions_are_answered_while_larger_buckets_warm_up(tmp_path: Path, gates: Gates) -> None:
    """A scaled-to-zero server's first request does not wait for every batch bucket: once the smallest has
    run it is answered between the warm-up jobs, while /ready says 503 until the last bucket has run."""
    gates.warm_up_s = 0.5
    server = ThreadServer(settings(tmp_path, max_batch_size=8, max_wait_ms=5)).start(wait_for="/health")
    try:
        async with httpx.AsyncClient(base_url=server.url) as client:
            await wait_for(lambda: server.runtime.task is not None)
            answer = await post(client, "early")
            assert answer.status_code == 200 and answer.json() == {"output": "EARLY"}
            ready = await client.get("/ready")
            assert ready.status_code == 503 and ready.json()["status"] == "loading"
            await wait_for(lambda: server.runtime.state is State.READY)
            assert (await client.get("/ready")).status_code == 200
            with gates.lock:
                sizes = [len(batch) if set(batch) == {"warm"} else batch[0] for batch in gates.batches]
            assert sizes[0] == 1 and sorted(map(str, sizes[1:])) == ["2", "4", "8", "early"]
            assert sizes.index("early") < sizes.index(8), "answered before the last bucket was warm"
    finally:
        server.stop()


async def test_full_queue_is_refused_at_once_with_503_and_retry_after(tmp_path: Path, gates: Gates) -> None:
    with ThreadServer(settings(tmp_path, max_queue=2)) as server:
        gates.device.clear()
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            running = asyncio.ensure_future(post(client, "a"))
            await wait_for(lambda: server.runtime.batcher.depth == 0 and gates_waiting(server))
            queued = [asyncio.ensure_future(post(client, text)) for text in ("b", "c")]
            await wait_for(lambda: server.runtime.batcher.depth == 2)
            began = time.monotonic()
            refused = await post(client, "d")
            assert time.monotonic() - began < 2.0, "a full queue must answer at once"
            assert refused.status_code == 503
            assert "queue is full" in refused.json()["error"]
            assert int(refused.headers["Retry-After"]) >= 1
            gates.device.set()
            answers = await asyncio.gather(running, *queued)
            assert [answer.json()["output"] for answer in answers] == ["A", "B", "C"]
            assert "d" not in gates.ran()


def gates_waiting(server: ThreadServer) -> bool:
    """True once the device thread has taken a batch (the queue is empty, a request is in flight)."""
    return server.runtime.activity.in_flight >= 1


async def test_request_past_its_deadline_gets_504_and_the_server_keeps_serving(
    tmp_path: Path, gates: Gates
) -> None:
    with ThreadServer(settings(tmp_path, timeout_s=0.5)) as server:
        gates.device.clear()
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            late = await post(client, "slow")
            assert late.status_code == 504
            assert "deadline" in late.json()["error"]
            gates.device.set()
            assert (await post(client, "fast")).json() == {"output": "FAST"}


async def test_client_that_disconnects_is_dropped_from_the_queue(tmp_path: Path, gates: Gates) -> None:
    with ThreadServer(settings(tmp_path)) as server:
        gates.device.clear()
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            blocker = asyncio.ensure_future(post(client, "blocker"))
            await wait_for(lambda: gates_waiting(server))
            body = b'{"inputs": "abandoned"}'
            with socket.create_connection(("127.0.0.1", server.runtime.settings.port)) as sock:
                sock.sendall(
                    b"POST /predict HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
                )
                await wait_for(lambda: server.runtime.batcher.depth == 1)
            await wait_for(lambda: server.runtime.batcher.depth == 0)
            gates.device.set()
            assert (await blocker).json() == {"output": "BLOCKER"}
            assert (await post(client, "after")).json() == {"output": "AFTER"}
        assert "abandoned" not in gates.ran()


async def test_a_failing_request_does_not_fail_its_batch_mates(tmp_path: Path, gates: Gates) -> None:
    with ThreadServer(settings(tmp_path, max_batch_size=4, max_wait_ms=300)) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            answers = await asyncio.gather(*(post(client, text) for text in ("one", "please fail", "two")))
            assert [answer.status_code for answer in answers] == [200, 500, 200]
            assert answers[0].json() == {"output": "ONE"} and answers[2].json() == {"output": "TWO"}
            assert "this input always fails" in answers[1].json()["error"]
            together = {"one", "please fail", "two"}
            assert any(set(batch) == together for batch in gates.batches), (
                "the three must first share a batch"
            )
            assert (await post(client, "still up")).status_code == 200


async def test_model_that_cannot_load_reports_why_and_stops_the_server(tmp_path: Path) -> None:
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    server = ThreadServer(settings(tmp_path, model=str(empty), task=None)).start(wait_for=None)
    try:
        await wait_for(lambda: server.runtime.error is not None)
        assert "config.json" in server.runtime.error
        await wait_for(lambda: not server.running, timeout=30)
    finally:
        server.stop()
