"""Following a container's log while bake waits for it: `docker logs --follow` in a background thread.

The docker CLI is run with the client's own connection flags (`--host`, context, config), so a remote
engine's container is followed as well as a local one's. The caller takes the lines gathered so far at
each of its polls; leaving the `with` block ends the follower.
"""

from __future__ import annotations

import queue
import subprocess
import threading
from types import TracebackType

from python_on_whales import DockerClient


class LogFollower:
    """The lines a container writes (stdout and stderr), from its start, as they come."""

    def __init__(self, client: DockerClient, container: str, *, since: float | None = None) -> None:
        """Follow `container`'s log from its start, or from `since` (a Unix time) on."""
        since_flag = ["--since", f"{since:.3f}"] if since is not None else []
        self._command = [
            *map(str, client.client_config.docker_cmd),
            "container",
            "logs",
            "--follow",
            *since_flag,
            container,
        ]
        self._lines: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._process: subprocess.Popen[bytes] | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> LogFollower:
        try:
            self._process = subprocess.Popen(
                self._command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        except OSError:
            return self  # no docker CLI to follow with: the wait goes on without the log
        self._thread = threading.Thread(target=self._read, name="container-logs", daemon=True)
        self._thread.start()
        return self

    def _read(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        for raw in self._process.stdout:
            self._lines.put(raw.decode(errors="replace").rstrip())

    def new_lines(self) -> list[str]:
        """The lines written since the last call."""
        lines = []
        while True:
            try:
                lines.append(self._lines.get_nowait())
            except queue.Empty:
                return lines

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait()
        if self._thread is not None:
            self._thread.join(timeout=5)
