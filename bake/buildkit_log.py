"""Reading BuildKit's plain progress log (`docker buildx build --progress plain`), line by line.

bake always asks BuildKit for the plain log, whatever it shows the person (see `bake.build_display`): it
says which stages came from the cache and, when a build fails, which step failed and why. Its lines:

    #14 [deps 2/2] RUN --mount=type=cache,... pip install ...     a step starts (the same header again later
                                                                   when BuildKit switches back to it)
    #14 12.31 Collecting torch                                     the step's output, with its time
    #14 transferring context: 2B done                              the step's own status
    #14 CACHED | #14 DONE 3.2s | #14 ERROR: process ... exit code: 1 | #14 CANCELED
"""

from __future__ import annotations

import re
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

_LINE = re.compile(r"^#(\d+) (.*)$")
_STAGE = re.compile(r"^\[(\S+) ")
_DONE = re.compile(r"^DONE ([\d.]+)s$")
_OUTPUT_TIME = re.compile(r"^\d+\.\d+ ")
_MOUNT_FLAGS = re.compile(r"--(?:mount|network|security)=\S+\s*")
_TAIL_LINES = 400
OUTPUT_LINES = 20
"""Lines of output kept per step (a failed step's are shown when the live view is on)."""

State = Literal["running", "done", "cached", "error", "canceled"]


@dataclass
class Step:
    """One step of the build (a Dockerfile instruction, or BuildKit's own work such as exporting)."""

    number: str
    name: str
    started: float = field(default_factory=time.monotonic)
    state: State = "running"
    seconds: float | None = None
    """How long BuildKit says it took (DONE <seconds>s)."""
    error: str = ""
    output: deque[str] = field(default_factory=lambda: deque(maxlen=OUTPUT_LINES))

    @property
    def title(self) -> str:
        """The name without the RUN flags that make BuildKit's headers hundreds of characters long."""
        return " ".join(_MOUNT_FLAGS.sub("", self.name).split())

    @property
    def finished(self) -> bool:
        """Whether the step is over (in any way)."""
        return self.state != "running"


@dataclass
class BuildLog:
    """What the build's progress output said: its steps, which stages ran and which came from the cache."""

    stage_of_step: dict[str, str] = field(default_factory=dict)
    cached_steps: set[str] = field(default_factory=set)
    steps: dict[str, Step] = field(default_factory=dict)
    """Every step by its number, in the order they started."""
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=_TAIL_LINES))

    def feed(self, line: str) -> None:
        """Record one line of `--progress plain` output."""
        self.tail.append(line)
        match = _LINE.match(line)
        if match is None:
            return
        number, text = match.groups()
        step = self.steps.get(number)
        if step is None:
            self.steps[number] = Step(number, text)
            if stage := _STAGE.match(text):
                self.stage_of_step[number] = stage.group(1)
        elif text != step.name:
            self._update(step, text)

    def _update(self, step: Step, text: str) -> None:
        if text == "CACHED":
            step.state = "cached"
            self.cached_steps.add(step.number)
        elif done := _DONE.match(text):
            step.state, step.seconds = "done", float(done.group(1))
        elif text.startswith("ERROR:"):
            step.state, step.error = "error", text.removeprefix("ERROR:").strip()
        elif text == "CANCELED":
            step.state = "canceled"
        else:
            step.output.append(_OUTPUT_TIME.sub("", text, count=1))

    def stage_cached(self, stage: str) -> bool:
        """Whether every step of `stage` came from the cache (False if the stage never showed up)."""
        steps = [step for step, name in self.stage_of_step.items() if name == stage]
        return bool(steps) and all(step in self.cached_steps for step in steps)

    @property
    def failed_step(self) -> Step | None:
        """The step that failed, if one did."""
        return next((step for step in reversed(self.steps.values()) if step.state == "error"), None)
