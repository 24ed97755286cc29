"""`GET /readyz`: whether this replica can do its work now, part by part.

`/healthz` says the process is alive (a platform restarts it when that fails); `/readyz` says
whether it should get traffic: the database answers, the scheduler runs (it is paused while
shutting down), and, in Socket Mode, the socket to Slack is connected. A load balancer or
Kubernetes readiness probe takes the replica out of rotation on 503, and the body names what is
down so an operator knows where to look.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

# A database that takes longer than this to answer `SELECT 1` counts as down.
DATABASE_TIMEOUT = 2.0


def readiness(
    *, database: bool, scheduler: bool, socket: bool | None
) -> tuple[int, dict[str, Any]]:
    """The status code and JSON body; `socket` None in HTTP mode (no socket to be connected)."""
    parts: dict[str, bool] = {"database": database, "scheduler": scheduler}
    if socket is not None:
        parts["slack_socket"] = socket
    down = [name for name, up in parts.items() if not up]
    body: dict[str, Any] = {"ready": not down, **{name: "up" if up else "down" for name, up in parts.items()}}
    if down:
        body["down"] = down
    return (200 if not down else 503), body


class DatabaseProbe:
    """`ping` (blocking) run in a thread with a deadline, one at a time: while a ping hangs (a
    database that drops packets), further probes answer "down" at once instead of piling up
    threads in the executor the store's own calls need."""

    def __init__(self, ping: Callable[[], None], timeout: float = DATABASE_TIMEOUT) -> None:
        self._ping = ping
        self._timeout = timeout
        self._running: asyncio.Future[None] | None = None

    async def up(self) -> bool:
        if self._running is not None and not self._running.done():
            return False  # the previous ping has not come back
        self._running = asyncio.ensure_future(asyncio.to_thread(self._ping))
        # Its error is read here even when it arrives after the deadline (no "never retrieved").
        self._running.add_done_callback(lambda done: done.cancelled() or done.exception())
        try:
            await asyncio.wait_for(asyncio.shield(self._running), self._timeout)
        except Exception:  # refused, timed out: either way it does not answer
            return False
        return True
