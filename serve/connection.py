"""The HTTP/1.1 connection: uvicorn's httptools protocol with the limits a public endpoint needs before any
route runs.

uvicorn bounds neither the time nor the size of a request's head (request line and headers): a client that
trickles its headers a byte at a time (slow-loris), or sends megabytes of them, holds a connection and its
memory for as long as it likes. And what it refuses at this level (a malformed request, a request smuggling
shape such as Content-Length with Transfer-Encoding) it answers in plain text. This protocol:

- gives every request head `HEADER_TIMEOUT_S` from its first byte (and a new connection as long to send
  one): past it, 408 and the connection is closed;
- refuses a head of more than `MAX_HEADER_BYTES` with 431 (the body's own limit, `BAKE_MAX_BODY_BYTES`, is
  the routes' business: `serve.http.read_body`);
- answers every refusal of its own as JSON, `{"error": "..."}`, and closes the connection (after an
  unparseable request nothing on the connection can be trusted).

A slow body is bounded by the request's deadline (`serve.http.read_body`).
"""

from __future__ import annotations

import asyncio
import http
import json
import logging

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

HEADER_TIMEOUT_S = 10.0
"""Most seconds a client may take to send a request's head (Go's ReadHeaderTimeout is typically 10 s)."""
MAX_HEADER_BYTES = 64 * 1024
"""Largest request head accepted (nginx's default large_client_header_buffers hold 32 KiB)."""

logger = logging.getLogger("serve")


class GuardedHttpProtocol(HttpToolsProtocol):
    """`HttpToolsProtocol` with a deadline and a size cap on request heads, and JSON refusals."""

    header_timeout_s = HEADER_TIMEOUT_S
    max_header_bytes = MAX_HEADER_BYTES

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Start the clock for the first request's head."""
        self._head_bytes = 0
        self._reading_head = True
        self._head_timer: asyncio.TimerHandle | None = None
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        """Stop the clocks: the head's, and the keep-alive timer.

        uvicorn cancels its keep-alive timer only when a connection closes cleanly. After a reset (a client
        that gave up, a proxy purging idle connections) the timer would keep this protocol, and the request
        it last served, alive for `BAKE_KEEP_ALIVE_S`: measured, +22 % resident memory after 10 000 abandoned
        clients at the 75 s default (the same bug in another project: Soju06/codex-lb#2041).
        """
        self._cancel_head_timer()
        super().connection_lost(exc)
        self._unset_keepalive_if_required()

    def data_received(self, data: bytes) -> None:
        """Feed the parser, counting the bytes of a head that is still incomplete."""
        if self._reading_head:
            self._head_bytes += len(data)
            if self._head_timer is None:
                self._arm_head_timer()
        super().data_received(data)
        if (
            self._reading_head
            and self._head_bytes > self.max_header_bytes
            and not self.transport.is_closing()
        ):
            self._refuse_large_head()

    def on_headers_complete(self) -> None:
        """The head is complete: stop its clock, check its size, then let uvicorn start the request."""
        self._reading_head = False
        self._cancel_head_timer()
        size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        if size > self.max_header_bytes:
            self._refuse_large_head()
            raise httptools.HttpParserError("request head too large")  # stops the parser; already answered
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        """The body is complete: what arrives next is the next request's head."""
        super().on_message_complete()
        self._reading_head = True
        self._head_bytes = 0

    def send_400_response(self, msg: str) -> None:
        """A request uvicorn cannot parse: 400 as JSON, then close (unless it was answered already)."""
        if not self.transport.is_closing():
            self._refuse(http.HTTPStatus.BAD_REQUEST, f"malformed HTTP request: {msg.rstrip('.')}")

    def _refuse_large_head(self) -> None:
        self._refuse(
            http.HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
            f"the request's headers are over the limit of {self.max_header_bytes} bytes",
        )

    def _arm_head_timer(self) -> None:
        self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self._reading_head or self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.keep_alive = False  # a pipelined head trickles in: close once this answer is out
            return
        if self._head_bytes == 0:
            self.transport.close()  # nothing was asked: nobody to answer
            return
        self._refuse(
            http.HTTPStatus.REQUEST_TIMEOUT,
            f"the request's headers did not arrive within {self.header_timeout_s:g} s",
        )

    def _refuse(self, status: http.HTTPStatus, message: str) -> None:
        """Answer `status` with `{"error": message}` and close the connection."""
        logger.info("refused a request from %s: %s", _peer(self.client), message)
        self._reading_head = False
        self._cancel_head_timer()
        body = json.dumps({"error": message}).encode()
        head = [f"HTTP/1.1 {status.value} {status.phrase}".encode()]
        head += [name + b": " + value for name, value in self.server_state.default_headers]
        head += [
            b"content-type: application/json",
            b"content-length: " + str(len(body)).encode(),
            b"connection: close",
        ]
        self.transport.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
        self.transport.close()


def _peer(client: tuple[str, int] | None) -> str:
    return f"{client[0]}:{client[1]}" if client else "an unknown client"
