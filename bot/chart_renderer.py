"""Runs the report's chart (bot/chart.py) in a worker process, off the event loop.

This module is light on purpose: the bot's own process imports it, and never matplotlib or numpy
(about 40 MB, needed only by the worker, which imports bot.chart on its first render).

Why a process and not a thread: drawing a 10,000-step chart holds the GIL for a few hundred
milliseconds, which in the bot's process would show up as Slack acknowledgement latency and late
notifications; and a stuck render in a process can be killed, which a thread cannot.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import multiprocessing
from collections.abc import Callable
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import TypeVar

from bot.training_metrics import CheckpointInfo, MetricPoint, MetricSeries, ResultFileError, parse_result_file

T = TypeVar("T")
R = TypeVar("R")


class ChartError(Exception):
    """No chart could be made: nothing to draw, the renderer failed, timed out or died."""


@dataclass(frozen=True)
class ChartInput:
    title: str  # e.g. from scorecard.chart_title(): job id and model
    points: tuple[MetricPoint, ...]
    checkpoints: tuple[CheckpointInfo, ...] = ()


def _render_in_worker(spec: ChartInput) -> bytes:
    """Runs in the worker: only there is the drawing module (matplotlib, numpy) imported."""
    from bot.chart import render_in_worker

    return render_in_worker(spec)


class ChartRenderer:
    """Runs render_chart (and, if wanted, parse_result_file) in a worker process, off the event loop.

    One worker, started on the first call (spawned: a forked copy of a process with threads and an
    event loop is unsafe) and restarted after it dies. Calls take turns, so each one's timeout
    counts its own work, not the queue before it; a call that times out has its worker killed so
    that a stuck render cannot hold up the rest.
    """

    def __init__(self, *, timeout: float = 60.0) -> None:
        self._timeout = timeout
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        self._turn: asyncio.Lock | None = None
        self._turn_loop: asyncio.AbstractEventLoop | None = None

    def _executor(self) -> concurrent.futures.ProcessPoolExecutor:
        if self._pool is None:
            self._pool = concurrent.futures.ProcessPoolExecutor(
                max_workers=1, mp_context=multiprocessing.get_context("spawn")
            )
        return self._pool

    def _lock(self) -> asyncio.Lock:
        # An asyncio.Lock belongs to one event loop; a renderer outliving its loop (tests) gets a new one.
        loop = asyncio.get_running_loop()
        if self._turn is None or self._turn_loop is not loop:
            self._turn, self._turn_loop = asyncio.Lock(), loop
        return self._turn

    def _kill(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        # The process list must be read before shutdown(), which forgets it.
        processes = list((getattr(pool, "_processes", None) or {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            process.kill()  # SIGKILL: a render stuck in C code does not answer SIGTERM promptly

    async def _call(self, function: Callable[[T], R], argument: T, timeout: float | None, what: str) -> R:
        limit = self._timeout if timeout is None else timeout
        async with self._lock():
            try:
                future = self._executor().submit(function, argument)
            except (BrokenProcessPool, RuntimeError):  # died between calls: start a new worker
                self._kill()
                future = self._executor().submit(function, argument)
            try:
                return await asyncio.wait_for(asyncio.wrap_future(future), limit)
            except TimeoutError:
                self._kill()
                raise ChartError(f"{what} took longer than {limit:g} s") from None
            except BrokenProcessPool as error:
                self._kill()
                raise ChartError("the chart worker process died") from error
            except (ChartError, ResultFileError):
                raise
            except Exception as error:
                raise ChartError(f"{what} failed: {type(error).__name__}: {error}") from error

    async def render(self, spec: ChartInput, *, timeout: float | None = None) -> bytes:
        """PNG bytes; raises ChartError when there is nothing to draw, the worker fails, dies or
        takes longer than the timeout (the renderer's own unless `timeout` is given)."""
        return await self._call(_render_in_worker, spec, timeout, "the chart")

    async def parse(self, data: bytes, *, timeout: float | None = None) -> MetricSeries:
        """parse_result_file in the worker: a 10,000-row file takes ~50 ms of pure Python, a 50 MB
        one over 10 s, and either would stall the event loop. Raises ResultFileError for something
        that is not a metrics CSV, ChartError when the worker dies or times out."""
        return await self._call(parse_result_file, data, timeout, "reading the result file")

    def close(self) -> None:
        """Stop the worker without waiting for a render in progress."""
        self._kill()
