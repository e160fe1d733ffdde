"""A small client for the Fly Machines REST API (https://api.machines.dev/v1), and the Machine config bake
asks for.

Request bodies follow the OpenAPI spec's schemas exactly (CreateAppRequest, CreateMachineRequest,
UpdateMachineRequest, fly.MachineConfig, assignIPRequest); tests check every request against the spec.

Calls are retried while the API is busy (429, honouring Retry-After) and, when idempotent, while it fails
(5xx) or cannot be reached, with exponential backoff (`FlyMachines._retry_delay`).

`machine_config(spec)` is the Machines API twin of the fly.toml that `fly.toml` renders: the same image,
env, guest size, service (ports 80/443, concurrency, /ready check, autostop/autostart/min running) and
stop signal/timeout, derived by the same functions of `fly.spec`. On the raw API `autostart` defaults to
false, so it is always set explicitly.
"""

from __future__ import annotations

import email.utils
import logging
import random
import time
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote

import httpx

from fly.auth import authorization_header
from fly.errors import FlyApiError, FlyAuthError, FlyError
from fly.spec import (
    CHECK_INTERVAL,
    CHECK_TIMEOUT,
    KILL_SIGNAL,
    FlyServiceSpec,
    check_grace_period_s,
    check_no_gpu,
    concurrency_limits,
    duration,
    kill_timeout_s,
    runtime_env,
    vm_size,
)
from serve.contract.routes import READY

DEFAULT_API_URL = "https://api.machines.dev/v1"
PROCESS_GROUP = "app"
"""The process group flyctl gives the Machines of an app without [processes]; bake's Machines use it too,
so `flyctl deploy` and `fly scale` treat them as the app's own."""
WAIT_CALL_MAX_S = 60
"""The Machines API holds a wait request open for at most 60 s."""
RETRY_ATTEMPTS = 5
"""Tries per call while the API answers 429 (or 5xx, or nothing, to an idempotent call)."""
RETRY_BASE_S = 0.5
"""First backoff between tries (doubling, with jitter) when the API sends no Retry-After."""
RETRY_MAX_WAIT_S = 30.0
"""Longest single wait, whatever Retry-After asks for."""
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
_RETRIED_5XX = frozenset({500, 502, 503, 504})
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
"""Transport errors that happen before the request leaves: safe to repeat for any method."""

logger = logging.getLogger("fly")


def machine_config(spec: FlyServiceSpec, image: str | None = None) -> dict[str, Any]:
    """The fly.MachineConfig for `spec`, running `image` (default: `spec.image`)."""
    check_no_gpu(spec)
    size = vm_size(spec)
    limits = concurrency_limits(spec)
    return {
        "image": image or spec.image,
        "env": runtime_env(spec),
        "guest": {"cpu_kind": size.cpu_kind, "cpus": size.cpus, "memory_mb": size.memory_mb},
        "services": [
            {
                "protocol": "tcp",
                "internal_port": spec.internal_port,
                "autostop": spec.auto_stop,
                "autostart": spec.auto_start,
                "min_machines_running": spec.min_machines_running,
                "ports": [
                    {"port": 80, "handlers": ["http"], "force_https": True},
                    {"port": 443, "handlers": ["tls", "http"]},
                ],
                "concurrency": {
                    "type": "requests",
                    "soft_limit": limits.soft_limit,
                    "hard_limit": limits.hard_limit,
                },
                "checks": [
                    {
                        "type": "http",
                        "protocol": "http",
                        "port": spec.internal_port,
                        "method": "GET",
                        "path": READY,
                        "grace_period": duration(check_grace_period_s(spec)),
                        "interval": CHECK_INTERVAL,
                        "timeout": CHECK_TIMEOUT,
                    }
                ],
            }
        ],
        "stop_config": {"signal": KILL_SIGNAL, "timeout": duration(kill_timeout_s(spec))},
        "restart": {"policy": "on-failure", "max_retries": 10},
        "metadata": {"fly_platform_version": "v2", "fly_process_group": PROCESS_GROUP, "managed_by": "bake"},
    }


class FlyMachines:
    """The Machines API calls a deploy needs. Every error becomes a `FlyError` subclass; the token never
    appears in one.

    `transport` replaces httpx's network transport (tests pass none and point `base_url` at a local server).
    """

    def __init__(
        self,
        token: str,
        base_url: str = DEFAULT_API_URL,
        *,
        transport: httpx.BaseTransport | None = None,
        timeout_s: float = 30.0,
        attempts: int = RETRY_ATTEMPTS,
        retry_base_s: float = RETRY_BASE_S,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._attempts = max(1, attempts)
        self._retry_base_s = retry_base_s
        self._client = httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": authorization_header(token), "User-Agent": "bake-fly"},
            timeout=httpx.Timeout(timeout_s, read=WAIT_CALL_MAX_S + timeout_s),
            transport=transport,
        )

    def __enter__(self) -> FlyMachines:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._client.close()

    def get_app(self, app: str) -> dict[str, Any] | None:
        """The app, or None when it does not exist."""
        try:
            return self._call("GET", f"/apps/{_seg(app)}")
        except FlyApiError as error:
            if error.status == 404:
                return None
            raise

    def create_app(self, app: str, org_slug: str) -> None:
        """Create `app` in the organization `org_slug`."""
        self._call("POST", "/apps", json={"name": app, "org_slug": org_slug})

    def list_ip_assignments(self, app: str) -> list[dict[str, Any]]:
        """The app's IP addresses."""
        return self._call("GET", f"/apps/{_seg(app)}/ip_assignments").get("ips") or []

    def assign_ip(self, app: str, kind: str) -> dict[str, Any]:
        """Allocate an address of `kind` (`shared_v4`, `v6`, ...) to the app."""
        return self._call("POST", f"/apps/{_seg(app)}/ip_assignments", json={"type": kind})

    def list_machines(self, app: str) -> list[dict[str, Any]]:
        """The app's Machines."""
        return self._call("GET", f"/apps/{_seg(app)}/machines")

    def get_machine(self, app: str, machine_id: str) -> dict[str, Any]:
        """One Machine, with its state and check results."""
        return self._call("GET", f"/apps/{_seg(app)}/machines/{_seg(machine_id)}")

    def create_machine(self, app: str, config: dict[str, Any], *, region: str) -> dict[str, Any]:
        """Create and start a Machine with `config` in `region`."""
        return self._call("POST", f"/apps/{_seg(app)}/machines", json={"config": config, "region": region})

    def update_machine(self, app: str, machine_id: str, config: dict[str, Any]) -> dict[str, Any]:
        """Replace a Machine's config; Fly restarts it on the new one."""
        return self._call("POST", f"/apps/{_seg(app)}/machines/{_seg(machine_id)}", json={"config": config})

    def wait_for_state(
        self,
        app: str,
        machine_id: str,
        state: str = "started",
        *,
        version: str | None = None,
        timeout_s: float = WAIT_CALL_MAX_S,
    ) -> dict[str, Any]:
        """Block until the Machine (at `version`, its instance id, when given) reaches `state`.

        Longer timeouts than the API's 60 s per request are covered by repeating the request.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = max(1, min(WAIT_CALL_MAX_S, round(deadline - time.monotonic())))
            params: dict[str, Any] = {"state": state, "timeout": remaining}
            if version:
                params["version"] = version
            try:
                return self._call("GET", f"/apps/{_seg(app)}/machines/{_seg(machine_id)}/wait", params=params)
            except FlyApiError as error:
                if error.status != 408 or time.monotonic() >= deadline:
                    raise

    def _call(self, method: str, path: str, *, json: Any = None, params: dict[str, Any] | None = None) -> Any:
        """One API call, retried (see `_retry_delay`) while the API is busy or unreachable."""
        for attempt in range(1, self._attempts + 1):
            try:
                response = self._client.request(method, path, json=json, params=params)
            except httpx.HTTPError as error:
                delay = self._retry_delay(method, attempt, error=error)
                if delay is None:
                    raise FlyError(
                        f"could not reach the Fly Machines API at {self.base_url} "
                        f"({type(error).__name__}: {error})",
                        "check the network and proxy settings, then retry",
                    ) from None
                reason = type(error).__name__
            else:
                delay = None if response.is_success else self._retry_delay(method, attempt, response=response)
                if delay is None:
                    break
                reason = str(response.status_code)
            logger.info(
                "Fly Machines API %s %s: %s, retrying in %.1f s (attempt %d of %d)",
                method,
                path,
                reason,
                delay,
                attempt + 1,
                self._attempts,
            )
            time.sleep(delay)
        if response.is_success:
            return response.json() if response.content else {}
        body = _json_or_none(response)
        message = (body or {}).get("error") or response.text.strip()[:300] or response.reason_phrase
        if response.status_code in (401, 403):
            raise FlyAuthError(
                f"Fly refused the API token for {method} {path} ({response.status_code}: {message})",
                "check FLY_API_TOKEN: it must be allowed to manage this app (fly tokens create "
                "deploy -a <app>; a new app needs an org token: fly tokens create org), and the "
                "app name must not belong to another organization",
            )
        fix = None
        if (body or {}).get("status") == "insufficient_capacity":
            fix = "Fly has no room for this Machine size there: retry later or choose another primary_region"
        raise FlyApiError(method, path, response.status_code, message, fix)

    def _retry_delay(
        self,
        method: str,
        attempt: int,
        *,
        response: httpx.Response | None = None,
        error: httpx.HTTPError | None = None,
    ) -> float | None:
        """Seconds to wait before trying again, or None when the call must not be repeated.

        Repeated: any call the API refused as too many (429) or that never reached it (connection refused
        or timed out before sending); an idempotent call (GET) that failed on the way or got a 5xx. A POST
        that got a 5xx may have taken effect (a Machine created), so it is not repeated. The wait is the
        API's `Retry-After` when it sends one (at most `RETRY_MAX_WAIT_S`), else exponential backoff with
        jitter from `retry_base_s`.
        """
        if attempt >= self._attempts:
            return None
        idempotent = method in IDEMPOTENT_METHODS
        if error is not None:
            if not (idempotent or isinstance(error, _NOT_SENT)):
                return None
        elif response is not None:
            status = response.status_code
            if not (status == 429 or (idempotent and status in _RETRIED_5XX)):
                return None
            if (after := _retry_after_s(response.headers.get("retry-after"))) is not None:
                return min(after, RETRY_MAX_WAIT_S)
        return self._retry_base_s * 2 ** (attempt - 1) * random.uniform(0.5, 1.0)


def _retry_after_s(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delay-seconds or an HTTP date), or None."""
    if not value:
        return None
    if value.strip().isdigit():
        return float(value.strip())
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def _seg(value: str) -> str:
    return quote(value, safe="")


def _json_or_none(response: httpx.Response) -> dict[str, Any] | None:
    try:
        body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None
