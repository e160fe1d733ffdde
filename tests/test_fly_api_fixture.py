"""The local Machines API really holds requests to the spec: what it accepts and what it refuses."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.fixtures.fly_api import FlyApiServer

TOKEN = "fixture-token"


@pytest.fixture
def server() -> Iterator[FlyApiServer]:
    with FlyApiServer(token=TOKEN) as running:
        yield running


@pytest.fixture
def client(server: FlyApiServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {TOKEN}"}) as http:
        http.post("/apps", json={"name": "demo", "org_slug": "personal"}).raise_for_status()
        yield http


def test_a_valid_machine_request_is_served(server: FlyApiServer, client: httpx.Client) -> None:
    response = client.post(
        "/apps/demo/machines",
        json={
            "config": {
                "image": "registry.fly.io/demo:1",
                "guest": {"cpu_kind": "shared", "cpus": 1, "memory_mb": 256},
                "services": [{"internal_port": 8080, "autostart": True, "autostop": "stop"}],
            },
            "region": "iad",
        },
    )

    assert response.status_code == 200, response.text
    assert response.json()["state"] == "started"
    assert server.invalid_requests() == []


@pytest.mark.parametrize(
    ("method", "path", "params", "body", "reason"),
    [
        (
            "POST",
            "/apps/demo/machines",
            None,
            {"config": {"image": "x", "autostart": True}},
            "'autostart' was unexpected",
        ),
        (
            "POST",
            "/apps/demo/machines",
            None,
            {"config": {"image": "x", "services": [{"auto_start_machines": True}]}},
            "'auto_start_machines' was unexpected",
        ),
        (
            "POST",
            "/apps/demo/machines",
            None,
            {"config": {"image": "x", "services": [{"autostop": True}]}},
            "True is not of type 'string'",
        ),
        (
            "POST",
            "/apps/demo/machines",
            None,
            {"config": {"image": "x", "stop_config": {"timeout": 30}}},
            "30 is not of type 'string'",
        ),
        (
            "POST",
            "/apps/demo/machines",
            None,
            {"config": {"image": "x", "guest": {"memory_mb": "1gb"}}},
            "'1gb' is not of type 'integer'",
        ),
        ("POST", "/apps", None, {"app_name": "demo2", "org_slug": "personal"}, "'app_name' was unexpected"),
        ("GET", "/apps/demo/machines/abc/wait", {"state": "running"}, None, "Invalid query parameter: state"),
        ("GET", "/apps/demo/machinez", None, None, "Path not found"),
        ("PUT", "/apps/demo/machines", None, {}, "Operation put not found"),
    ],
)
def test_requests_outside_the_spec_are_refused_with_400(
    server: FlyApiServer,
    client: httpx.Client,
    method: str,
    path: str,
    params: dict[str, str] | None,
    body: Any,
    reason: str,
) -> None:
    response = client.request(method, path, params=params, json=body)

    assert response.status_code == 400
    assert reason in response.json()["error"]
    assert reason in (server.invalid_requests()[-1].problem or "")


def test_requests_without_the_token_are_refused_with_401(server: FlyApiServer) -> None:
    response = httpx.get(f"{server.url}/apps/demo", headers={"Authorization": "Bearer nope"})

    assert (response.status_code, response.json()) == (401, {"error": "unauthorized"})
    assert server.requests[-1].problem == "missing or wrong Authorization header"


def test_gpu_guests_are_refused_like_fly_does_now(client: httpx.Client) -> None:
    response = client.post(
        "/apps/demo/machines", json={"config": {"image": "x", "guest": {"gpu_kind": "l40s"}}}
    )

    assert response.status_code == 400
    assert "GPU" in response.json()["error"]


def test_the_server_checks_its_own_answers_against_the_spec(
    server: FlyApiServer, client: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(server.apps["demo"], "nickname", "not in the App schema")

    response = client.get("/apps/demo")

    assert response.status_code == 500
    assert "'nickname' was unexpected" in response.json()["error"]
