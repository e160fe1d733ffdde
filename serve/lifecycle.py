"""Request activity tracking, and the idle timeout built on it."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

logger = logging.getLogger("serve")


class Activity:
    """Counts requests in flight and remembers when the last one ended."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.last = time.monotonic()

    def begin(self) -> None:
        """A request started."""
        self.in_flight += 1
        self.last = time.monotonic()

    def end(self) -> None:
        """A request ended."""
        self.in_flight -= 1
        self.last = time.monotonic()

    def idle_for(self) -> float:
        """Seconds since the last request ended (0 while any request is in flight)."""
        return 0.0 if self.in_flight else time.monotonic() - self.last


async def exit_when_idle(activity: Activity, idle_timeout_s: float, on_idle: Callable[[], None]) -> None:
    """Call `on_idle` once nothing but probes has been requested for `idle_timeout_s` seconds."""
    activity.last = time.monotonic()
    tick = min(1.0, idle_timeout_s / 4)
    while activity.idle_for() < idle_timeout_s:
        await asyncio.sleep(tick)
    logger.info("no requests for %.0f s (BAKE_IDLE_TIMEOUT_S): shutting down", idle_timeout_s)
    on_idle()
