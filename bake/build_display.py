"""What `bake build` shows while BuildKit works (`--progress`), always from BuildKit's plain log:

- `plain`: that log, line by line (what CI logs want; what `auto` means when stderr is not a terminal);
- `auto` on a terminal: a live view that collapses: a header with the time and the steps done, one line
  per finished step (its time, or "cached"), and each running step with its last lines of output, which
  go away once it finishes;
- `quiet`: nothing while it works.

Every display feeds every line to the `BuildLog` first, so what the build reports (cached stages, the
cause of a failure) does not depend on what was shown; and a failed build always ends with the failed
step's output on the screen, so the error's "see the build output above" holds in every mode.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from types import TracebackType
from typing import Literal, TextIO

from rich.console import Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from bake import terminal
from bake.buildkit_log import BuildLog, Step

Progress = Literal["auto", "plain", "quiet"]
PROGRESS_MODES: tuple[Progress, ...] = ("auto", "plain", "quiet")
_RUNNING_OUTPUT_LINES = 5
"""Lines of output shown under a running step in the live view."""
_MARKS = {"done": ("✔", "green"), "cached": ("✔", "green"), "error": ("✘", "bold red"), "canceled": ("-", "")}


class BuildDisplay:
    """Plain: every line of BuildKit's log as it comes."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._lock = threading.Lock()

    def note(self, text: str) -> None:
        """A line of bake's own about the build (what is being built)."""
        self.stream.write(text + "\n")
        self.stream.flush()

    def warning(self, text: str) -> None:
        """`bake: warning: <text>`: something the build works around (shown in every mode, quiet too)."""
        self.note(f"bake: warning: {text}")

    def feed(self, log: BuildLog, line: str) -> None:
        """Record `line` in `log`, then show it."""
        with self._lock:
            log.feed(line)
        self._show(line)

    def _show(self, line: str) -> None:
        self.stream.write(line + "\n")
        self.stream.flush()

    def failed(self, log: BuildLog) -> None:
        """The build failed: make sure its failed step's output is on the screen (plain: it is already)."""

    def __enter__(self) -> BuildDisplay:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        pass


class QuietDisplay(BuildDisplay):
    """Nothing while the build works; the failed step's output if it fails."""

    def note(self, text: str) -> None:
        """Quiet: bake's own lines are not shown either."""

    def warning(self, text: str) -> None:
        """Warnings are shown even when quiet."""
        BuildDisplay.note(self, f"bake: warning: {text}")

    def _show(self, line: str) -> None:
        pass

    def failed(self, log: BuildLog) -> None:
        """The failed step's title, last lines of output and error (else the log's last lines)."""
        step = log.failed_step
        lines = _failure_lines(step) if step else list(log.tail)[-_RUNNING_OUTPUT_LINES * 4 :]
        self.stream.write("".join(line + "\n" for line in lines))
        self.stream.flush()


class LiveDisplay(BuildDisplay):
    """The collapsing terminal view (rich `Live`), redrawn a few times a second from the log."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self._console = terminal.console(stream)
        self._log = BuildLog()
        self._started = time.monotonic()
        self._ended: float | None = None
        self._live = Live(
            get_renderable=self._render, console=self._console, refresh_per_second=8, transient=False
        )

    def note(self, text: str) -> None:
        """Above the live view."""
        self._console.print(text, markup=False, emoji=False)

    def feed(self, log: BuildLog, line: str) -> None:
        """Record `line`; the next redraw shows it."""
        self._log = log
        super().feed(log, line)

    def _show(self, line: str) -> None:
        pass

    def __enter__(self) -> BuildDisplay:
        self._started, self._ended = time.monotonic(), None
        self._live.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._ended = time.monotonic()
        self._live.stop()

    def _render(self) -> RenderableType:
        with self._lock:
            steps = [step for step in self._log.steps.values() if step.number != "0"]
            rows = [(step, list(step.output)) for step in steps]
        finished = sum(step.finished for step in steps)
        seconds = (self._ended or time.monotonic()) - self._started
        if not self._ended:
            header = Text.assemble(("Building ", "bold"), f"{seconds:.1f}s ({finished}/{len(steps)} steps)")
        elif self._log.failed_step is not None:
            header = Text.assemble(("Build failed", "bold red"), f" after {seconds:.1f}s")
        else:
            cached = sum(step.state == "cached" for step in steps)
            header = Text.assemble(
                ("Built", "bold"), f" in {seconds:.1f}s ({len(steps)} steps, {cached} cached)"
            )
        table = Table.grid(expand=True, padding=(0, 1))
        table.add_column(width=1)
        table.add_column(ratio=1, no_wrap=True, overflow="ellipsis")
        table.add_column(justify="right", no_wrap=True)
        lines = _fit(rows, room=max(3, self._console.height - 2))
        for step, output in lines:
            _add_step(table, step, output)
        return Group(header, table)


def _fit(rows: list[tuple[Step, list[str]]], *, room: int) -> list[tuple[Step, list[str]]]:
    """The steps to draw in `room` lines: every unfinished one (with its output), then the latest others."""
    shown = [(step, _visible_output(step, output)) for step, output in rows]
    height = sum(1 + len(output) for _, output in shown)
    while height > room and any(not output for _, output in shown):
        index = next(i for i, (_, output) in enumerate(shown) if not output)
        height -= 1
        del shown[index]
    return shown


def _visible_output(step: Step, output: list[str]) -> list[str]:
    if step.state == "running":
        return output[-_RUNNING_OUTPUT_LINES:]
    if step.state == "error":
        return [*output, f"ERROR: {step.error}"]
    return []


def _add_step(table: Table, step: Step, output: Iterable[str]) -> None:
    if step.state == "running":
        mark, seconds = Text("•", "yellow"), f"{time.monotonic() - step.started:.1f}s"
    else:
        symbol, style = _MARKS[step.state]
        mark = Text(symbol, style)
        seconds = "cached" if step.state == "cached" else f"{step.seconds or 0.0:.1f}s"
    style = "red" if step.state == "error" else ""
    table.add_row(mark, Text(step.title, style=style), Text(seconds, "dim"))
    for line in output:
        if step.state == "error":  # the failure in full: it is what the person has to read
            table.add_row("", Text("  " + line, "red", no_wrap=False, overflow="fold"), "")
        else:
            table.add_row("", Text("  " + line, "dim"), "")


def _failure_lines(step: Step) -> list[str]:
    return [f"failed step: {step.title}", *(f"  {line}" for line in step.output), f"ERROR: {step.error}"]


def display_for(mode: Progress, stream: TextIO) -> BuildDisplay:
    """The display `--progress mode` asks for on `stream` (auto: live on a terminal, plain otherwise)."""
    if mode == "quiet":
        return QuietDisplay(stream)
    if mode == "auto" and terminal.is_terminal(stream):
        return LiveDisplay(stream)
    return BuildDisplay(stream)
