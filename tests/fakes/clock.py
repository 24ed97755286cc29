"""A clock that moves only when a test moves it, or when code takes a short nap on it.

Handed to the bot's parts through bot.clock.Clock (tests/inprocess.py): leases expiring, backoffs
running out, poll intervals and the notifier's one-post-a-second pacing then cost no wall time.

- A short sleep (at most `SHORT` seconds: pacing between posts, a retry's backoff) moves the clock
  forward at once and only yields to the event loop: such code never waits.
- A longer sleep, or a wait for an event with a timeout, parks the task until the test moves the
  clock past its deadline (`advance`), or the event is set. Parked tasks are "waiting for time":
  InProcessBot.settle does not wait for them.
`sleeps` records every sleep asked for.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

SHORT = 5.0


@dataclass(eq=False)
class _Parked:
    deadline: float
    done: asyncio.Future[bool]
    tasks: set[asyncio.Task[object]] = field(default_factory=set)


class FakeClock:
    def __init__(self, start: float | None = None) -> None:
        # Near the real time by default: Slack timestamps and signed requests stay plausible.
        self._now = time.time() if start is None else start
        self._monotonic = 1_000.0
        self.sleeps: list[float] = []
        self._parked: list[_Parked] = []
        self._park_watchers: list[asyncio.Future[None]] = []

    def time(self) -> float:
        return self._now

    def monotonic(self) -> float:
        return self._monotonic

    def advance(self, seconds: float) -> None:
        """Move time forward; wakes what was parked until then."""
        if seconds < 0:
            raise ValueError("a clock never goes back")
        self._now += seconds
        self._monotonic += seconds
        for parked in [p for p in self._parked if p.deadline <= self._monotonic]:
            self._release(parked, False)

    def next_park(self) -> asyncio.Future[None]:
        """Resolved when a task next parks: a waiter for tasks to finish must look again then, as
        a task it waits for may now be waiting for time instead."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._park_watchers.append(future)
        return future

    def parked_tasks(self) -> set[asyncio.Task[object]]:
        """Tasks waiting for the clock to move (or for their event)."""
        return {task for parked in self._parked for task in parked.tasks}

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        if seconds <= SHORT:
            self.advance(max(0.0, seconds))
            await asyncio.sleep(0)
            return
        await self._park(seconds)

    async def wait(self, event: asyncio.Event, timeout: float) -> bool:
        if event.is_set():
            return True
        return await self._park(timeout, event)

    async def _park(self, seconds: float, event: asyncio.Event | None = None) -> bool:
        loop = asyncio.get_running_loop()
        parked = _Parked(self._monotonic + seconds, loop.create_future())
        me = asyncio.current_task()
        assert me is not None
        parked.tasks.add(me)
        helper: asyncio.Task[bool] | None = None
        if event is not None:
            helper = asyncio.create_task(event.wait())
            parked.tasks.add(helper)  # type: ignore[arg-type]
            helper.add_done_callback(lambda _: self._release(parked, True))
        self._parked.append(parked)
        watchers, self._park_watchers = self._park_watchers, []
        for watcher in watchers:
            if not watcher.done():
                watcher.set_result(None)
        try:
            return await parked.done
        finally:
            self._release(parked, False)
            if helper is not None:
                helper.cancel()

    def _release(self, parked: _Parked, result: bool) -> None:
        # Synchronously: from here on settle() waits for the woken task again.
        if parked in self._parked:
            self._parked.remove(parked)
        if not parked.done.done():
            parked.done.set_result(result)
