"""The server process's life: draining on SIGTERM, the idle timeout, and its exit statuses."""

from __future__ import annotations

import gc
import json
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import uvicorn

from serve.connection import GuardedHttpProtocol
from tests.fixtures import images
from tests.fixtures.servers import REPO_ROOT, ServerProcess, free_port

PHOTO = images.photo(160, 120)


def read_http_response(sock: socket.socket) -> tuple[int, bytes]:
    """Read one HTTP/1.1 response with a Content-Length from `sock`."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, "connection closed before the response headers"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = int(
        next(
            line.split(b":", 1)[1]
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length")
        )
    )
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed before the response body"
        body += chunk
    return status, body


def connection_refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


@pytest.mark.slow
def test_sigterm_answers_requests_already_received_refuses_new_ones_and_exits_0(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    env = {"BAKE_MODEL": str(tiny_models["resnet"]), "BAKE_MAX_BATCH_SIZE": "8", "BAKE_MAX_WAIT_MS": "1500"}
    with ServerProcess(env, tmp_path / "server.log") as server:
        uploading = socket.create_connection(("127.0.0.1", server.port))
        uploading.sendall(
            b"POST /predict HTTP/1.1\r\nHost: test\r\nContent-Type: image/jpeg\r\n"
            b"Content-Length: %d\r\n\r\n" % len(PHOTO) + PHOTO[: len(PHOTO) // 2]
        )
        queued: dict[str, httpx.Response] = {}
        waiting = threading.Thread(
            target=lambda: queued.setdefault(
                "response", httpx.post(server.url + "/predict", content=PHOTO, timeout=30)
            )
        )
        waiting.start()
        time.sleep(0.5)  # the second request now waits in the batch queue (1.5 s timer)
        server.signal(signal.SIGTERM)
        deadline = time.monotonic() + 5
        while not connection_refused(server.port):
            assert time.monotonic() < deadline, "new connections must be refused once draining"
            time.sleep(0.05)
        uploading.sendall(PHOTO[len(PHOTO) // 2 :])
        status, body = read_http_response(uploading)
        uploading.close()
        waiting.join(30)
        assert status == 200 and len(json.loads(body)) == 5
        assert queued["response"].status_code == 200 and len(queued["response"].json()) == 5
        assert server.wait(30) == 0, server.log()


@pytest.mark.slow
def test_idle_timeout_exits_0_and_probes_do_not_keep_it_alive(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    env = {"BAKE_MODEL": str(tiny_models["resnet"]), "BAKE_IDLE_TIMEOUT_S": "2"}
    with ServerProcess(env, tmp_path / "server.log") as server:
        httpx.post(server.url + "/predict", content=PHOTO).raise_for_status()
        last_request = time.monotonic()
        assert server.process is not None
        while server.process.poll() is None:
            assert time.monotonic() - last_request < 30, "the idle timeout did not stop the server"
            try:
                httpx.get(server.url + "/health", timeout=1)
                httpx.get(server.url + "/ready", timeout=1)
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        assert time.monotonic() - last_request >= 2
        assert server.wait() == 0
        assert "BAKE_IDLE_TIMEOUT_S" in server.log()


@pytest.mark.slow
def test_an_idle_keep_alive_connection_is_kept_for_bake_keep_alive_s_then_closed(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    keep_alive_s = 3.0
    env = {"BAKE_MODEL": str(tiny_models["resnet"]), "BAKE_KEEP_ALIVE_S": str(keep_alive_s)}
    request = (
        b"POST /predict HTTP/1.1\r\nHost: test\r\nContent-Type: image/jpeg\r\n"
        b"Content-Length: %d\r\n\r\n" % len(PHOTO) + PHOTO
    )
    with ServerProcess(env, tmp_path / "server.log") as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as connection:
            connection.sendall(request)
            assert read_http_response(connection)[0] == 200
            time.sleep(keep_alive_s - 1)  # idle, but within the setting: the next request is answered
            connection.sendall(request)
            assert read_http_response(connection)[0] == 200
            idle_since = time.monotonic()
            assert connection.recv(1) == b"", "the server must close a connection idle past the setting"
            assert keep_alive_s - 0.5 <= time.monotonic() - idle_since <= keep_alive_s + 5


def run_serve(env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "serve"],
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO_ROOT), "PORT": str(free_port()), **env},
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_bad_settings_exit_2_with_one_line_naming_the_variable() -> None:
    result = run_serve({"BAKE_MODEL": "org/model", "BAKE_MAX_BATCH_SIZE": "zero"})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "BAKE_MAX_BATCH_SIZE" in lines[0]


@pytest.mark.slow
def test_a_model_that_cannot_load_exits_1_and_says_why(tmp_path: Path) -> None:
    result = run_serve(
        {"BAKE_MODEL": str(tmp_path / "missing-model"), "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path)}
    )
    assert result.returncode == 1
    assert "missing-model" in result.stderr and "not a directory" in result.stderr


async def _hello(scope: dict, receive: object, send: object) -> None:
    """The smallest ASGI app that answers a request (and ignores lifespan)."""
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})  # type: ignore[operator]
    await send({"type": "http.response.body", "body": b"ok"})  # type: ignore[operator]


def test_a_connection_reset_after_its_answer_is_not_kept_until_the_keep_alive_timer_fires() -> None:
    """uvicorn cancels its keep-alive timer on a clean close only; after a reset, the timer (75 s by
    default) would keep the connection's protocol and its last request in memory. Thousands of clients that
    give up this way grew the server's memory by a fifth (docs/reliability.md)."""
    config = uvicorn.Config(
        _hello,
        port=free_port(),
        lifespan="off",
        log_level="warning",
        timeout_keep_alive=60,
        http=GuardedHttpProtocol,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.05)
        for _ in range(20):
            with socket.create_connection(("127.0.0.1", config.port), timeout=10) as sock:
                sock.sendall(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
                assert read_http_response(sock) == (200, b"ok")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST
        deadline = time.monotonic() + 10
        while (alive := _live_protocols()) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert alive == 0, f"{alive} reset connections are still held, until their keep-alive timers fire"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def _live_protocols() -> int:
    gc.collect()
    return sum(type(obj) is GuardedHttpProtocol for obj in gc.get_objects())
