"""Time, as the long-running parts see it: one object to hand them, so a test can hand them another.

The poller, notifier, reporter, card editor, runner and reconciler read the wall clock (when a row
was written, how old an outbox row is), a monotonic clock (budgets, pacing) and sleep (pacing
between posts, retry backoff). Production passes `SYSTEM_CLOCK`; tests pass a fake clock
(tests/fakes/clock.py) whose time moves only when the test says so, or when code sleeps, so that a
lease expiring, a backoff running out or a poll interval passing costs no wall time.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    def time(self) -> float:
        """Seconds since the epoch (wall clock)."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (intervals only)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait this long on this clock."""
        ...

    async def wait(self, event: asyncio.Event, timeout: float) -> bool:
        """Wait until `event` is set (True) or `timeout` passes on this clock (False)."""
        ...


class SystemClock:
    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    async def wait(self, event: asyncio.Event, timeout: float) -> bool:
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            return False
        return True


SYSTEM_CLOCK: Clock = SystemClock()
