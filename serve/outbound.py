"""The only network requests a server makes on a client's behalf: fetching a remote input, posting a webhook.

Both are decided by a `HostPolicy` the operator sets, never by the client alone:

- Remote inputs (an `http(s)://` image URL in a Cog or Hugging Face request) are off unless
  `BAKE_REMOTE_INPUT_HOSTS` lists hosts; then only those hosts are fetched, within `BAKE_MAX_BODY_BYTES` and
  `BAKE_REMOTE_INPUT_TIMEOUT_S`.
- Webhooks (Cog's `webhook`) go to any host that resolves to public addresses only, unless
  `BAKE_WEBHOOK_HOSTS` lists hosts; then only to those.

A listed host may be an exact name (any address, private ones included: the operator named it) or a
`*.example.com` wildcard (public addresses only). Every redirect hop is checked against the same policy, so a
redirect can never lead to an address the policy would refuse. Requests run on worker threads (blocking
urllib: the runtime needs no HTTP client library).
"""

from __future__ import annotations

import ipaddress
import json
import socket
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from serve.contract.settings import ServeSettings
from serve.errors import BadRequest, InvalidParameters, PayloadTooLarge

USER_AGENT = "bake-serve"
_CHUNK = 1 << 16


class Refused(InvalidParameters):
    """The policy does not allow a request to this URL (422)."""


@dataclass(frozen=True)
class HostPolicy:
    """Which hosts may be reached. `hosts` empty: any public address when `public_by_default`, else none."""

    hosts: tuple[str, ...]
    public_by_default: bool
    what: str
    """What the URL is for, in error messages ("a remote input", "a webhook")."""
    setting: str
    """The variable that changes the policy, in error messages."""

    def check(self, url: str) -> None:
        """Raise `Refused` unless `url` is an http(s) URL this policy allows, resolved now."""
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        if parts.scheme not in ("http", "https") or not host:
            raise Refused(f"{self.what} must be an http(s) URL with a host, not {url[:80]!r}")
        exact = host in self.hosts
        wildcard = any(entry.startswith("*.") and host.endswith(entry[1:]) for entry in self.hosts)
        if not (exact or wildcard or (not self.hosts and self.public_by_default)):
            allowed = ", ".join(self.hosts) if self.hosts else "none"
            raise Refused(
                f"{self.what} to {host} is not allowed (allowed hosts: {allowed}; see {self.setting})"
            )
        if not exact and not _public(host, parts.port or (443 if parts.scheme == "https" else 80)):
            raise Refused(f"{self.what} to {host} is not allowed: it resolves to a private address")


def fetch(url: str, policy: HostPolicy, *, max_bytes: int, timeout_s: float) -> bytes:
    """The body at `url` (redirects re-checked by `policy`), refusing more than `max_bytes`."""
    policy.check(url)
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    try:
        with _opener(policy).open(request, timeout=timeout_s) as response:
            declared = response.headers.get("Content-Length")
            if declared is not None and declared.isdigit() and int(declared) > max_bytes:
                raise PayloadTooLarge(f"{policy.what} is {declared} bytes, over the limit of {max_bytes}")
            chunks, size = [], 0
            while chunk := response.read(_CHUNK):
                size += len(chunk)
                if size > max_bytes:
                    raise PayloadTooLarge(f"{policy.what} is over the limit of {max_bytes} bytes")
                chunks.append(chunk)
            return b"".join(chunks)
    except urllib.error.HTTPError as error:
        raise BadRequest(f"{policy.what} could not be fetched: {url[:80]} answered {error.code}") from None
    except (urllib.error.URLError, OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        raise BadRequest(f"{policy.what} could not be fetched from {url[:80]}: {reason}") from None


def post_json(url: str, payload: Any, policy: HostPolicy, *, timeout_s: float) -> int:
    """POST `payload` as JSON to `url`; the status answered (0 when the request failed on the way)."""
    policy.check(url)
    body = json.dumps(payload).encode()
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "application/json", "User-Agent": USER_AGENT}
    )
    try:
        with _opener(policy).open(request, timeout=timeout_s) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except (urllib.error.URLError, OSError):
        return 0


def remote_inputs(settings: ServeSettings) -> HostPolicy:
    """Where remote inputs may come from (`BAKE_REMOTE_INPUT_HOSTS`; none by default)."""
    return HostPolicy(_hosts(settings.remote_input_hosts), False, "a remote input", "BAKE_REMOTE_INPUT_HOSTS")


def webhooks(settings: ServeSettings) -> HostPolicy:
    """Where webhooks may go (`BAKE_WEBHOOK_HOSTS`; any public address by default)."""
    return HostPolicy(_hosts(settings.webhook_hosts), True, "a webhook", "BAKE_WEBHOOK_HOSTS")


def _hosts(value: str) -> tuple[str, ...]:
    return tuple(host.strip().lower() for host in value.split(",") if host.strip())


def _opener(policy: HostPolicy) -> urllib.request.OpenerDirector:
    return urllib.request.build_opener(_CheckedRedirects(policy))


class _CheckedRedirects(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only where the policy allows the original request to go."""

    max_redirections = 3

    def __init__(self, policy: HostPolicy) -> None:
        super().__init__()
        self.policy = policy

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> Any:
        self.policy.check(newurl)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _public(host: str, port: int) -> bool:
    """Whether every address `host` resolves to is a public one."""
    try:
        addresses: Sequence[Any] = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    except OSError:
        return True  # it will not resolve for the request either, which then fails with the reason
    return all(ipaddress.ip_address(entry[4][0].split("%")[0]).is_global for entry in addresses)
