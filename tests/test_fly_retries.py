"""Fly Machines API calls when the API is busy or failing (issue 13), against the local Machines API.

- 429: any call is repeated (the API refused it unprocessed), after the Retry-After it sends (seconds or an
  HTTP date), or with exponential backoff when it sends none.
- 5xx, or a connection closed without an answer: an idempotent call (GET) is repeated; a POST is not (it may
  have taken effect: a second Machine), and its error says so at once.
- A connection refused before anything was sent is repeated for any call.
- After the last attempt the error is the API's own, with its status.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import pytest

from fly import FlyApiError, FlyError, FlyMachines, FlyServiceSpec, machine_config
from fly.machines import RETRY_ATTEMPTS
from tests.fixtures.fly_api import DISCONNECT, FlyApiServer

TOKEN = "FlyV1 fm2_retry-secret-0c1d"
APP = "retry-demo"
SPEC = FlyServiceSpec(
    app=APP,
    image="registry.fly.io/retry-demo:bake-1",
    max_batch_size=8,
    max_queue=256,
    warmup_seconds=5,
    drain_seconds=30,
    weights_bytes=50_000_000,
)


@pytest.fixture
def fly_api() -> Iterator[FlyApiServer]:
    with FlyApiServer(token=TOKEN) as server:
        yield server


def client(server: FlyApiServer, **options: float) -> FlyMachines:
    return FlyMachines(TOKEN, server.url, retry_base_s=0.05, **options)


def with_app(server: FlyApiServer) -> None:
    with client(server) as api:
        api.create_app(APP, "personal")


def test_a_get_is_repeated_through_5xx_and_dropped_connections(fly_api: FlyApiServer) -> None:
    with_app(fly_api)
    fly_api.fail_next("Apps_show", 503, "service unavailable", times=2)
    fly_api.fail_next("Apps_show", DISCONNECT, "", times=1)
    with client(fly_api) as api:
        app = api.get_app(APP)
    assert app is not None and app["name"] == APP
    assert [call.status for call in fly_api.calls("Apps_show")] == [503, 503, DISCONNECT, 200]
    assert fly_api.invalid_requests() == []


def test_429_repeats_even_a_post_after_the_retry_after_it_asks_for(fly_api: FlyApiServer) -> None:
    with_app(fly_api)
    fly_api.fail_next("Machines_create", 429, "rate limited", headers={"Retry-After": "1"})
    started = time.monotonic()
    with client(fly_api) as api:
        machine = api.create_machine(APP, machine_config(SPEC), region="iad")
    waited = time.monotonic() - started
    assert machine["state"] == "started" and len(fly_api.machine_list(APP)) == 1
    assert [call.status for call in fly_api.calls("Machines_create")] == [429, 200]
    assert 1.0 <= waited < 5, f"Retry-After: 1 was honoured ({waited:.2f} s)"


def test_a_retry_after_date_is_honoured(fly_api: FlyApiServer) -> None:
    with_app(fly_api)
    when = format_datetime(datetime.now(timezone.utc) + timedelta(seconds=2), usegmt=True)
    fly_api.fail_next("Machines_list", 429, "slow down", headers={"Retry-After": when})
    started = time.monotonic()
    with client(fly_api) as api:
        assert api.list_machines(APP) == []
    assert 0.9 <= time.monotonic() - started < 5


def test_a_post_that_failed_with_5xx_is_not_repeated(fly_api: FlyApiServer) -> None:
    with_app(fly_api)
    fly_api.fail_next("Machines_create", 502, "bad gateway")
    with client(fly_api) as api, pytest.raises(FlyApiError) as caught:
        api.create_machine(APP, machine_config(SPEC), region="iad")
    assert caught.value.status == 502
    assert len(fly_api.calls("Machines_create")) == 1 and fly_api.machine_list(APP) == []


def test_a_post_whose_connection_dropped_is_not_repeated(fly_api: FlyApiServer) -> None:
    with_app(fly_api)
    fly_api.fail_next("Machines_create", DISCONNECT, "")
    with client(fly_api) as api, pytest.raises(FlyError, match="could not reach the Fly Machines API"):
        api.create_machine(APP, machine_config(SPEC), region="iad")
    assert len(fly_api.calls("Machines_create")) == 1


def test_after_the_last_attempt_the_error_is_the_apis(fly_api: FlyApiServer) -> None:
    with_app(fly_api)
    fly_api.fail_next("Machines_list", 500, "internal error", times=RETRY_ATTEMPTS)
    with client(fly_api) as api, pytest.raises(FlyApiError) as caught:
        api.list_machines(APP)
    calls = fly_api.calls("Machines_list")
    assert caught.value.status == 500 and "internal error" in str(caught.value)
    assert len(calls) == RETRY_ATTEMPTS
    assert TOKEN not in str(caught.value)


def test_a_refused_connection_is_repeated_for_any_call() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = time.monotonic()
    with FlyMachines(TOKEN, f"http://127.0.0.1:{port}/v1", retry_base_s=0.05, attempts=3) as api:
        with pytest.raises(FlyError, match="could not reach") as caught:
            api.create_app(APP, "personal")
    assert time.monotonic() - started >= 0.05 + 0.1 * 0.5, "two backoffs: 0.05 s, then 0.1 s (x 0.5-1)"
    assert "ConnectError" in str(caught.value) and TOKEN not in str(caught.value)
