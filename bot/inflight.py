"""Work that must finish before the process exits: replies owed after an ack, a running poll cycle.

On SIGTERM the bot closes the door (`close`: new commands are refused in their acknowledgement),
then waits here, bounded by SHUTDOWN_GRACE_SECONDS, so a user who was promised an answer gets it
instead of the event loop cancelling the reply half-way. What still runs when the window ends is
`abandon`ed: cancelled, and its farewell (a last "I could not finish" message) is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

Farewell = Callable[[], Awaitable[None]]


@dataclass
class _Entry:
    task: asyncio.Task[object] | None
    farewell: Farewell | None
    finished: bool = False


class InFlight:
    def __init__(self) -> None:
        self._count = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._tickets = itertools.count(1)
        self._reserved: set[int] = set()
        self._running: dict[int, _Entry] = {}
        self.closed_at: float | None = None  # time.monotonic() of close()

    @property
    def count(self) -> int:
        return self._count

    @property
    def closing(self) -> bool:
        return self.closed_at is not None

    def close(self) -> None:
        """Refuse new work from now on. Safe to call from a signal handler (no awaits, no I/O)."""
        if self.closed_at is None:
            self.closed_at = time.monotonic()

    def reserve(self) -> int:
        """Count work before it starts: a command's reply is owed from its acknowledgement, but Bolt
        starts the task that sends it only afterwards. Hand the ticket to `track`."""
        ticket = next(self._tickets)
        self._reserved.add(ticket)
        self._enter()
        return ticket

    @contextlib.asynccontextmanager
    async def track(self, ticket: int | None = None, farewell: Farewell | None = None) -> AsyncIterator[None]:
        """Track the current task until the block ends. `farewell` tells its user it could not finish
        if `abandon` has to cancel it."""
        if ticket in self._reserved:
            self._reserved.discard(ticket)  # already counted at reserve()
        else:
            self._enter()
        key = next(self._tickets)
        entry = _Entry(asyncio.current_task(), farewell)
        self._running[key] = entry
        try:
            yield
            entry.finished = True
        finally:
            del self._running[key]
            self._leave()

    async def drain(self, timeout: float) -> bool:
        """Wait until nothing is in flight; False if time ran out first."""
        try:
            await asyncio.wait_for(self._idle.wait(), max(0.0, timeout))
        except TimeoutError:
            return False
        return True

    async def abandon(self, timeout: float) -> int:
        """Cancel what is still running and send each its farewell, all within `timeout`; returns
        how many were abandoned. Reservations whose task never started are forgotten."""
        entries = [e for e in self._running.values() if e.task is not None and not e.task.done()]
        for entry in entries:
            assert entry.task is not None
            entry.task.cancel()
        if entries:
            await asyncio.wait([e.task for e in entries if e.task is not None], timeout=timeout / 2)
        farewells = [e.farewell() for e in entries if e.farewell is not None and not e.finished]
        if farewells:
            done, pending = await asyncio.wait(
                [asyncio.ensure_future(f) for f in farewells], timeout=max(0.1, timeout / 2)
            )
            for task in pending:
                task.cancel()
            failed = sum(1 for task in done if task.cancelled() or task.exception() is not None)
            if pending or failed:
                unsent = len(pending) + failed
                log.warning("%d of %d farewell messages could not be sent", unsent, len(farewells))
        self._count -= len(self._reserved)
        self._reserved.clear()
        if self._count <= 0:
            self._count = 0
            self._idle.set()
        return len(entries)

    def _enter(self) -> None:
        self._count += 1
        self._idle.clear()

    def _leave(self) -> None:
        self._count -= 1
        if self._count == 0:
            self._idle.set()
