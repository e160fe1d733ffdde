"""`python -m serve`: run the HTTP server until SIGTERM, SIGINT or the idle timeout, then exit 0.

Connections are `serve.connection.GuardedHttpProtocol` (uvicorn's httptools protocol with a deadline and a
size cap on request heads), and the process raises its open-file limit to the hard limit first, so that
thousands of idle keep-alive connections cannot exhaust its file descriptors.

On SIGTERM (what `docker stop`, Kubernetes and Fly send) uvicorn stops accepting connections, lets
every request already received finish (even one still uploading its body) for up to
`BAKE_DRAIN_TIMEOUT_S`, then the batcher runs what is left in its queue. uvicorn would then re-raise
the signal, making the process die with -15; this server exits 0 instead, as a clean drain should.
"""

from __future__ import annotations

import contextlib
import logging
import resource
import signal
import sys
import threading
from collections.abc import Iterator

import uvicorn

from serve.app import create_app
from serve.connection import GuardedHttpProtocol
from serve.contract.settings import Settings
from serve.runtime import Runtime, State
from serve.threads import configure_interpreter

_DRAIN_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_UNLIMITED_FILES = 1 << 20
"""The soft open-file limit asked for when the hard limit is unlimited (the kernel's default fs.nr_open)."""


class DrainingServer(uvicorn.Server):
    """uvicorn's server, draining on SIGTERM/SIGINT without re-raising the signal afterwards."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """Install `handle_exit` for SIGINT and SIGTERM for the server's lifetime (main thread only)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in _DRAIN_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def build_server(settings: Settings) -> tuple[DrainingServer, Runtime]:
    """A configured server and its runtime, not yet started."""
    server: DrainingServer | None = None

    def request_exit() -> None:
        assert server is not None
        server.should_exit = True

    runtime = Runtime(settings, on_exit=request_exit)
    config = uvicorn.Config(
        create_app(runtime),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=settings.log_level == "debug",
        timeout_graceful_shutdown=settings.drain_timeout_s,
        timeout_keep_alive=settings.keep_alive_s,
        server_header=False,
        lifespan="on",
        http=GuardedHttpProtocol,
    )
    server = DrainingServer(config)
    return server, runtime


def run(settings: Settings) -> int:
    """Serve until stopped; return the exit status (0 after a clean stop, 1 if the model failed to load)."""
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    configure_interpreter()
    raise_open_file_limit()
    server, runtime = build_server(settings)
    server.run()
    return 1 if runtime.state is State.FAILED else 0


def raise_open_file_limit() -> int:
    """Raise the soft limit on open files to the hard limit (as Go's runtime does); return the new limit.

    Hosts often leave the soft limit at 1024 (systemd, some container runtimes): every connection costs a file
    descriptor, so a thousand idle keep-alive clients would otherwise make the server refuse new ones.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = _UNLIMITED_FILES if hard == resource.RLIM_INFINITY else hard
    if soft == resource.RLIM_INFINITY or soft >= target:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):  # the kernel's own ceiling (fs.nr_open) is lower: keep what we have
        return soft
    return target
