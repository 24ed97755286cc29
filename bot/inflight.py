"""Work that must finish before the process exits: replies owed after an ack, a running poll cycle.

On SIGTERM the server stops taking requests, then waits here (bounded) so a user who was promised
an answer gets it, instead of the event loop cancelling the reply half-way.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


class InFlight:
    def __init__(self) -> None:
        self._count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def count(self) -> int:
        return self._count

    @contextlib.asynccontextmanager
    async def track(self) -> AsyncIterator[None]:
        self._count += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._count -= 1
            if self._count == 0:
                self._idle.set()

    async def drain(self, timeout: float) -> bool:
        """Wait until nothing is in flight; False if time ran out first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True
