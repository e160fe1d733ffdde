"""Waiting for a launched server's /ready, showing what the server says meanwhile, with a clear error on
timeout.

On a terminal the wait is a live view: a spinner with the time waited and the last answer, over the last
lines of the container's log; it goes away once the server is ready, and on failure the log lines stay.
Off a terminal it is one line saying what is awaited, then each log line as it comes.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from types import TracebackType
from typing import TextIO

import httpx
from rich.console import Group, RenderableType
from rich.live import Live
from rich.spinner import Spinner
from rich.text import Text

from bake import terminal
from bake.errors import LaunchFailed
from bake.launch.container_logs import LogFollower
from serve.contract import routes

_POLL_S = 0.25
_LOG_LINES = 8
"""Lines of the container's log shown under the spinner."""
_LOG_PREFIX = "  | "
_READY = "ready"


def wait_ready(
    url: str,
    *,
    timeout_s: float,
    output: TextIO,
    died: Callable[[], str | None] = lambda: None,
    logs: LogFollower | None = None,
) -> float:
    """Poll `url`/ready until it answers 200; return the seconds waited.

    `died()` is asked between polls and returns a reason when the server can no longer become ready (its
    container exited): then, as on timeout, `LaunchFailed` is raised. `logs` are shown while waiting.
    """
    started = time.monotonic()
    last_status = "no answer yet"
    with _WaitView(output, url, timeout_s) as view:
        while True:
            elapsed = time.monotonic() - started
            try:
                response = httpx.get(f"{url}{routes.READY}", timeout=2.0)
                if response.status_code == 200:
                    view.show(elapsed, _READY, logs.new_lines() if logs else [])
                    return elapsed
                last_status = f"{routes.READY} answers {response.status_code}: {response.text[:120]}"
            except httpx.TransportError as error:
                last_status = f"no answer ({type(error).__name__})"
            view.show(elapsed, last_status, logs.new_lines() if logs else [])
            reason = died()
            if reason is not None:
                view.keep_log()
                raise LaunchFailed(
                    f"the server stopped before it was ready: {reason}", "see `bake logs` for why"
                )
            if elapsed > timeout_s:
                view.keep_log()
                raise LaunchFailed(
                    f"{url} was not ready after {timeout_s:.0f} s ({last_status})",
                    "see `bake logs`; a big model may need a longer --ready-timeout-s",
                )
            time.sleep(_POLL_S)


class _WaitView:
    """What the person sees while `wait_ready` polls."""

    def __init__(self, output: TextIO, url: str, timeout_s: float) -> None:
        self._output = output
        self._console = terminal.console(output)
        self._live_view = terminal.is_terminal(output)
        self._what = f"waiting for {url}{routes.READY}"
        self._timeout_s = timeout_s
        self._status = ""
        self._elapsed = 0.0
        self._log: deque[str] = deque(maxlen=_LOG_LINES)
        self._lock = threading.Lock()
        self._shown = False
        self._spinner = Spinner("dots")
        self._live = Live(
            get_renderable=self._render, console=self._console, refresh_per_second=8, transient=True
        )

    def __enter__(self) -> _WaitView:
        return self

    def show(self, elapsed: float, status: str, lines: list[str]) -> None:
        """The time waited, the last answer, and the log lines that came since the last call (nothing at
        all if the server is ready at the first poll)."""
        self._elapsed, self._status = elapsed, status
        with self._lock:
            self._log.extend(lines)
        if not self._shown and status == _READY:
            return
        if not self._shown:
            self._shown = True
            if self._live_view:
                self._live.start()
            else:
                self._output.write(f"{self._what} (up to {self._timeout_s:.0f} s)\n")
                lines = list(self._log)
        if not self._live_view and lines:
            self._output.write("".join(f"{_LOG_PREFIX}{line}\n" for line in lines))
        self._output.flush()

    def keep_log(self) -> None:
        """The wait failed: leave the last log lines on a terminal (off one they are printed already)."""
        if self._live_view:
            self._live.stop()
            for line in self._log:
                self._console.print(f"{_LOG_PREFIX}{line}", markup=False, emoji=False)

    def _render(self) -> RenderableType:
        self._spinner.text = Text.assemble(self._what, (f"  {self._elapsed:.0f}s  {self._status}", "dim"))
        with self._lock:
            lines = list(self._log)
        log = [Text(f"{_LOG_PREFIX}{line}", "dim", no_wrap=True, overflow="ellipsis") for line in lines]
        return Group(self._spinner, *log)

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if self._live_view:
            self._live.stop()
