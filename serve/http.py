"""HTTP plumbing every protocol shares: reading a body within its limit, and giving up when the client
leaves."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import TypeVar

from starlette.requests import Request

from serve.errors import ClientDisconnected, PayloadTooLarge, RequestTimeout

T = TypeVar("T")


async def read_body(request: Request, limit: int, *, deadline: float) -> bytes:
    """The whole body, refusing (413) as soon as it is known to exceed `limit` bytes, and (408) when it has
    not all arrived by `deadline` (`time.monotonic()` seconds: a client trickling its body holds nothing for
    longer than a request may take)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(
            f"the body is {declared} bytes, over the limit of {limit} (BAKE_MAX_BODY_BYTES)"
        )
    try:
        return await asyncio.wait_for(_read(request, limit), timeout=max(deadline - time.monotonic(), 0.0))
    except asyncio.TimeoutError:
        raise RequestTimeout(
            "the request's body did not arrive within the request's deadline (BAKE_TIMEOUT_S)"
        ) from None


async def _read(request: Request, limit: int) -> bytes:
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the body is over the limit of {limit} bytes (BAKE_MAX_BODY_BYTES)")
        chunks.append(chunk)
    return b"".join(chunks)


async def until_disconnected(request: Request, work: Awaitable[T]) -> T:
    """The result of `work`, or `ClientDisconnected` once the client goes away first (`work` is cancelled).

    The request's body must have been read already: what arrives afterwards can only be the disconnect.
    """
    job = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait((job, gone), return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if job.done():
        return job.result()
    job.cancel()
    raise ClientDisconnected()


async def _disconnected(request: Request) -> None:
    """Return once the client has gone away."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
