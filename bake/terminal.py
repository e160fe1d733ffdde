"""How bake talks to the person at the terminal: colour, live views and logging, decided in one place.

- Colour and animation only on a terminal: every view draws through a rich `Console` made by `console()`,
  which colours only when its stream is a TTY and never when `NO_COLOR` is set (to anything but the empty
  string, as no-color.org says; rich reads it). Piped output is plain text, line by line.
- Logging: `configure_logging` (called once by the CLI's `main`) sends the `bake` and `fly` loggers'
  INFO lines to stderr as `fly: creating a Machine ...`, so long waits say what they wait for; `--verbose`
  adds DEBUG and every library's log lines (httpx's requests, ...), with times.
- `Activity`: what a wait of more than a second shows on a terminal (a spinner, a bar once the number of
  steps is known, the time it took so far), gone once the wait ends.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from types import TracebackType
from typing import TextIO

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn
from rich.text import Text

OWN_LOGGERS = ("bake", "fly")
"""The loggers whose INFO lines a person sees without --verbose."""
SHOW_AFTER_S = 1.0
"""A wait shorter than this shows nothing."""


def console(stream: TextIO) -> Console:
    """A rich console on `stream`: colour and cursor movement only on a terminal without NO_COLOR."""
    return Console(file=stream, highlight=False, soft_wrap=True)


def is_terminal(stream: TextIO) -> bool:
    """Whether `stream` is a terminal that can take a live view (not a pipe, a file or TERM=dumb)."""
    view = console(stream)
    return view.is_terminal and not view.is_dumb_terminal


def print_error(message: str, stream: TextIO | None = None) -> None:
    """`bake: error: <message>` on one line (the word "error" in red on a colour terminal)."""
    line = Text.assemble("bake: ", ("error:", "bold red"), " ", message)
    console(stream or sys.stderr).print(line, markup=False, emoji=False)


class _StderrHandler(logging.StreamHandler):
    """A handler on whatever `sys.stderr` is when a record comes (a live view redirects it meanwhile)."""

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _: TextIO) -> None:
        pass


def configure_logging(*, verbose: bool) -> None:
    """Send log records to stderr: the `bake` and `fly` INFO lines always, everything with `verbose`."""
    handler = _StderrHandler()
    root = logging.getLogger()
    for previous in [h for h in root.handlers if isinstance(h, _StderrHandler)]:
        root.removeHandler(previous)
    root.addHandler(handler)
    if verbose:
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s", "%H:%M:%S"))
        root.setLevel(logging.DEBUG)
        levels = {name: logging.DEBUG for name in OWN_LOGGERS}
    else:
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
        root.setLevel(logging.WARNING)
        levels = {name: logging.INFO for name in OWN_LOGGERS}
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


class Activity:
    """A transient progress line on a terminal for a wait that lasts more than `SHOW_AFTER_S`.

    `update(completed, total)` reports steps (a bar once `total` is known); without updates it is a spinner
    with the elapsed time. Off a terminal it shows nothing: piped output stays free of redraws.
    """

    def __init__(self, stream: TextIO, description: str) -> None:
        self._enabled = is_terminal(stream)
        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[count]}"),
            TimeElapsedColumn(),
            console=console(stream),
            transient=True,
            redirect_stdout=False,
            redirect_stderr=False,
        )
        self._task: TaskID = self._progress.add_task(description, total=None, count="")
        self._lock = threading.Lock()
        self._shown = False
        self._ended = False
        self._timer = threading.Timer(SHOW_AFTER_S, self._show)
        self._timer.daemon = True
        self._started = time.monotonic()

    def __enter__(self) -> Activity:
        if self._enabled:
            self._timer.start()
        return self

    def update(self, completed: int, total: int | None, unit: str = "steps") -> None:
        """Report `completed` of `total` steps."""
        count = f"{completed}/{total} {unit}" if total else f"{completed} {unit}"
        self._progress.update(self._task, completed=completed, total=total, count=count)
        if self._enabled and time.monotonic() - self._started >= SHOW_AFTER_S:
            self._show()
            self._progress.refresh()

    def _show(self) -> None:
        with self._lock:
            if not self._shown and not self._ended:
                self._shown = True
                self._progress.start()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._timer.cancel()
        with self._lock:
            self._ended = True
            if self._shown:
                self._progress.stop()
