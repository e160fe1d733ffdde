"""Waiting for a launched server's /ready, with a spinner on a terminal and a clear error on timeout."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from typing import TextIO

import httpx

from bake.errors import LaunchFailed
from serve.contract import routes

_SPINNER = "|/-\\"
_POLL_S = 0.25


def wait_ready(
    url: str,
    *,
    timeout_s: float,
    output: TextIO,
    died: Callable[[], str | None] = lambda: None,
) -> float:
    """Poll `url`/ready until it answers 200; return the seconds waited.

    `died()` is asked between polls and returns a reason when the server can no longer become ready (its
    container exited): then, as on timeout, `LaunchFailed` is raised.
    """
    started = time.monotonic()
    spinner = itertools.cycle(_SPINNER)
    interactive = output.isatty()
    last_status = "no answer yet"
    while True:
        elapsed = time.monotonic() - started
        try:
            response = httpx.get(f"{url}{routes.READY}", timeout=2.0)
            if response.status_code == 200:
                if interactive:
                    output.write("\r" + " " * 60 + "\r")
                return elapsed
            last_status = f"{routes.READY} answers {response.status_code}: {response.text[:120]}"
        except httpx.TransportError as error:
            last_status = f"no answer ({type(error).__name__})"
        reason = died()
        if reason is not None:
            raise LaunchFailed(f"the server stopped before it was ready: {reason}", "see `bake logs` for why")
        if elapsed > timeout_s:
            raise LaunchFailed(
                f"{url} was not ready after {timeout_s:.0f} s ({last_status})",
                "see `bake logs`; a big model may need a longer --ready-timeout-s",
            )
        if interactive:
            output.write(f"\r{next(spinner)} waiting for {url}{routes.READY} ({elapsed:.0f} s)")
            output.flush()
        time.sleep(_POLL_S)
