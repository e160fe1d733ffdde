"""The hostile-input corpus: malformed and hostile requests kept as files, and how to send one.

Each file of `requests/` is one request in TOML:

    why = "a JPEG cut off half-way, as an interrupted upload leaves it"
    server = "classifier"                # or "generator" (text-to-image); default classifier
    method = "POST"
    path = "/predict"
    headers = { "Content-Type" = "image/jpeg" }
    payload = "truncated-jpeg"           # the body: a payload of tests/hostile/payloads.py
    body = '...'                         # or the body as text
    template = '{"inputs": "$data_url"}' # or text with $base64 / $data_url / $payload of the payload
    raw = "POST /predict HTTP/1.1\r\n..." # or the exact bytes sent over a raw socket (latin-1; $payload)
    trickle = { filler = "a", bytes_per_s = 10 }  # raw: then `filler` slowly until the server answers
    expect = 400                         # the status (raw: the list of statuses, one per response)
    error = "truncated"                  # a fragment the error message must hold (case-insensitive)
    check = "pipeline"                   # a 200 must equal transformers' pipeline on the payload

Every answer is checked the same way: the expected status, a JSON body, and for errors a message in the
protocol's own error shape (`error_message`).
"""

from __future__ import annotations

import base64
import json
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from string import Template
from typing import Any

import httpx
import tomlkit

from tests.hostile import payloads

REQUESTS_DIR = Path(__file__).resolve().parent / "requests"
SNIFFED_TYPES = {b"\xff\xd8": "image/jpeg", b"\x89PN": "image/png", b"GIF": "image/gif", b"RIF": "image/webp"}


@dataclass(frozen=True)
class Case:
    """One request of the corpus."""

    name: str
    why: str
    expect: list[int]
    server: str = "classifier"
    method: str = "POST"
    path: str = "/predict"
    headers: dict[str, str] = field(default_factory=dict)
    payload: str | None = None
    body: str | None = None
    template: str | None = None
    raw: str | None = None
    trickle: dict[str, Any] | None = None
    error: str | None = None
    check: str | None = None

    @property
    def slow(self) -> bool:
        """Whether the case takes seconds by design (a trickle, or a stall until a deadline)."""
        return self.trickle is not None or 408 in self.expect

    def content(self) -> bytes:
        """The request body (or, for raw cases, the bytes sent at once)."""
        data = payloads.get(self.payload) if self.payload else b""
        if self.raw is not None:
            return Template(self.raw).safe_substitute(payload=data.decode("latin-1")).encode("latin-1")
        if self.template is not None:
            encoded = base64.b64encode(data).decode("ascii")
            media_type = next(
                (t for magic, t in SNIFFED_TYPES.items() if data.startswith(magic)), "image/png"
            )
            return (
                Template(self.template)
                .substitute(
                    base64=encoded,
                    data_url=f"data:{media_type};base64,{encoded}",
                    payload=data.decode("latin-1"),
                )
                .encode()
            )
        if self.body is not None:
            return self.body.encode("utf-8", "surrogatepass")
        return data


def load_cases() -> list[Case]:
    """Every case of `requests/`, sorted by name."""
    cases = []
    for path in sorted(REQUESTS_DIR.glob("*.toml")):
        spec = tomlkit.parse(path.read_text(encoding="utf-8")).unwrap()
        expect = spec.pop("expect")
        cases.append(Case(name=path.stem, expect=expect if isinstance(expect, list) else [expect], **spec))
    return cases


@dataclass
class Answer:
    """What the server sent back: one (status, headers, body) per response on the connection."""

    responses: list[tuple[int, dict[str, str], bytes]]
    seconds: float


def send(case: Case, url: str, *, timeout: float = 60.0) -> Answer:
    """Send `case` to the server at `url` and collect its answers."""
    started = time.monotonic()
    if case.raw is None:
        response = httpx.request(
            case.method, url + case.path, headers=case.headers, content=case.content(), timeout=timeout
        )
        responses = [(response.status_code, dict(response.headers), response.content)]
    else:
        host, port = url.removeprefix("http://").split(":")
        responses = _send_raw(case, host, int(port), timeout)
    return Answer(responses, time.monotonic() - started)


def error_message(body: Any) -> str | None:
    """The error message of an error body in any of the protocols' shapes, or None when there is none.

    Hugging Face, OIP and the operational routes: `{"error": "..."}`; OpenAI: `{"error": {"message"}}`; Cog:
    `{"detail": [{"msg"}]}`, `{"error", "status": "failed"}` or `{}` (an unknown prediction).
    """
    if not isinstance(body, dict):
        return None
    error = body.get("error")
    if isinstance(error, str):
        return error
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return error["message"]
    detail = body.get("detail")
    if isinstance(detail, list) and detail and all(isinstance(item, dict) for item in detail):
        return "; ".join(f"{'.'.join(map(str, item.get('loc', [])))}: {item.get('msg')}" for item in detail)
    if body == {}:
        return ""
    return None


def _send_raw(case: Case, host: str, port: int, timeout: float) -> list[tuple[int, dict[str, str], bytes]]:
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(case.content())
        if case.trickle is not None:
            _trickle(sock, case.trickle, timeout)
        return _read_responses(sock, timeout)


def _trickle(sock: socket.socket, spec: dict[str, Any], timeout: float) -> None:
    """Send `filler` one byte at a time, `bytes_per_s` a second, until the server answers or closes."""
    filler = spec["filler"].encode("latin-1")
    interval = 1.0 / spec["bytes_per_s"]
    deadline = time.monotonic() + timeout
    sock.settimeout(interval)
    while time.monotonic() < deadline:
        try:
            if sock.recv(1, socket.MSG_PEEK):
                break
            return  # closed without a word: the caller finds no response
        except TimeoutError:
            pass
        try:
            sock.sendall(filler)
        except OSError:
            break
    sock.settimeout(timeout)


def _read_responses(sock: socket.socket, timeout: float) -> list[tuple[int, dict[str, str], bytes]]:
    """Every response the server sends before it closes the connection (Content-Length framing)."""
    sock.settimeout(timeout)
    data = b""
    responses = []
    while True:
        while b"\r\n\r\n" not in data:
            chunk = _recv(sock)
            if not chunk:
                return responses
            data += chunk
        head, _, data = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {
            name.strip().lower(): value.strip()
            for name, _, value in (line.partition(":") for line in lines[1:])
        }
        length = int(headers.get("content-length", "0"))
        while len(data) < length:
            chunk = _recv(sock)
            if not chunk:
                break
            data += chunk
        responses.append((status, headers, data[:length]))
        data = data[length:]
        if headers.get("connection", "").lower() == "close":
            return responses


def _recv(sock: socket.socket) -> bytes:
    """The next bytes, or b"" once the server closed the connection (or said nothing until the timeout:
    the caller then finds fewer responses than expected)."""
    try:
        return sock.recv(65536)
    except (ConnectionResetError, TimeoutError):
        return b""


def parse_json(body: bytes) -> Any:
    """`body` as JSON, or None when it is not JSON."""
    try:
        return json.loads(body)
    except ValueError:
        return None
