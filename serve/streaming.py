"""Progress streams: Server-Sent Events for requests sent with `Accept: text/event-stream`.

A stream answers 200 at once and then sends, in order:

    event: progress   data: {"step": 3, "total": 20}         after each step the device finished
    event: <result>   data: {...}                              the task's result events (text-to-image: image)
    event: done       data: {}

If the request fails once the stream has started (queue full, deadline, inference error), an
`event: error` with `{"error": message, "status": the HTTP status it would have had}` replaces the result
events, and `done` still ends the stream. A client that closes the stream cancels its request.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from serve.channel import StepListener
from serve.errors import RequestError

MEDIA_TYPE = "text/event-stream"
HEADERS = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
"""Response headers of a stream: never cached, never buffered by a proxy (nginx honours the second)."""


def server_sent_event(name: str, data: Any) -> bytes:
    """One event in the `text/event-stream` format, its data as one line of JSON."""
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


async def event_stream(
    infer: Callable[[StepListener], Awaitable[Any]],
    finish: Callable[[Any], Awaitable[list[tuple[str, Any]]]],
) -> AsyncIterator[bytes]:
    """Run `infer(on_step)`, stream the steps it reports to `on_step`, then the events of `finish(output)`.

    Must be iterated on the event loop that runs the server; closing the iterator cancels `infer`.
    """
    loop = asyncio.get_running_loop()
    steps: asyncio.Queue[tuple[int, int] | None] = asyncio.Queue()
    result = asyncio.ensure_future(
        infer(lambda done, total: loop.call_soon_threadsafe(steps.put_nowait, (done, total)))
    )
    # Reported steps are queued before the device thread hands the output back, so they all come first.
    result.add_done_callback(lambda _: steps.put_nowait(None))
    try:
        while (step := await steps.get()) is not None:
            yield server_sent_event("progress", {"step": step[0], "total": step[1]})
        try:
            events = await finish(result.result())
        except RequestError as error:
            events = [("error", {"error": error.message, "status": error.status})]
        for name, data in events:
            yield server_sent_event(name, data)
        yield server_sent_event("done", {})
    finally:
        result.cancel()
