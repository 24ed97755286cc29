"""Shared plumbing for the fake servers: an aiohttp app on 127.0.0.1 running in its own thread.

Each fake owns a private event loop in a daemon thread so that it keeps serving while a synchronous
test blocks (e.g. in ``wait_for``) and while an async test's own loop is busy running the bot.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import inspect
import socket
import textwrap
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from types import TracebackType
from typing import Any, Self, TypeVar

from aiohttp import web

T = TypeVar("T")

POLL_INTERVAL = 0.02
_START_TIMEOUT = 10.0


class FakeServer:
    """Base class: lifecycle (start/stop/with), a state lock and ``wait_for`` helpers.

    Subclasses implement ``_make_app`` and may override ``_on_stop`` (called on the server loop
    before the runner is torn down, e.g. to close websockets) and ``describe`` (used in timeout
    messages).
    """

    def __init__(self) -> None:
        # RLock because test helpers that hold the lock call other helpers that take it again.
        self.lock = threading.RLock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        # In-flight handler tasks, cancelled on stop() so hung/slow requests never block shutdown.
        self._inflight: set[asyncio.Task[Any]] = set()

    # -- subclass hooks -------------------------------------------------------------------------

    def _make_app(self) -> web.Application:
        raise NotImplementedError

    async def _on_stop(self) -> None:
        """Runs on the server loop before the HTTP runner is cleaned up."""

    def describe(self) -> str:
        """A short human-readable dump of recorded traffic, appended to wait_for timeout errors."""
        return ""

    # -- lifecycle ------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._loop is not None

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError(
                f"{type(self).__name__} is not started; call start() or use it as a context manager"
            )
        return self._port

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Self:
        if self._loop is not None:
            raise RuntimeError(f"{type(self).__name__} is already running on port {self._port}")
        loop = asyncio.new_event_loop()
        thread = threading.Thread(
            target=self._run_loop, args=(loop,), name=f"{type(self).__name__}-loop", daemon=True
        )
        thread.start()
        self._loop, self._thread = loop, thread
        try:
            asyncio.run_coroutine_threadsafe(self._astart(), loop).result(_START_TIMEOUT)
        except BaseException:
            self._shutdown_loop()
            raise
        return self

    def stop(self) -> None:
        if self._loop is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._astop(), self._loop).result(_START_TIMEOUT)
        finally:
            self._shutdown_loop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        # start() only blocks for the few ms the other thread needs to bind; not worth a to_thread hop.
        return self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @staticmethod
    def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            # Cancel whatever is left (e.g. websocket readers) so loop.close() does not warn.
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def _shutdown_loop(self) -> None:
        loop, thread = self._loop, self._thread
        self._loop = self._thread = None
        self._runner = None
        self._port = None
        if loop is not None:
            loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join(_START_TIMEOUT)

    async def _astart(self) -> None:
        app = self._make_app()
        app.middlewares.append(self._track_inflight)
        # A short shutdown_timeout: pending requests of a test fake are never worth waiting for.
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.2)
        await runner.setup()
        # Binding the socket ourselves gives a race-free random port without peeking at privates.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        sock.setblocking(False)
        await web.SockSite(runner, sock).start()
        self._runner = runner
        self._port = sock.getsockname()[1]

    async def _astop(self) -> None:
        with contextlib.suppress(Exception):
            await self._on_stop()
        for task in list(self._inflight):
            task.cancel()
        if self._runner is not None:
            await self._runner.cleanup()

    @web.middleware
    async def _track_inflight(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        task = asyncio.current_task()
        if task is not None:
            self._inflight.add(task)
        try:
            return await handler(request)
        finally:
            if task is not None:
                self._inflight.discard(task)

    def cancel_inflight(self) -> None:
        """Cancel requests still being handled (e.g. ones injected to hang)."""
        if self._loop is None:
            return

        async def _cancel() -> None:
            for task in list(self._inflight):
                task.cancel()

        self._run(_cancel())

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float = _START_TIMEOUT) -> T:
        """Run ``coro`` on the server loop from any other thread and return its result."""
        if self._loop is None:
            coro.close()
            raise RuntimeError(f"{type(self).__name__} is not started")
        if threading.current_thread() is self._thread:
            coro.close()
            # Blocking on our own loop would deadlock; server-side code must await directly.
            raise RuntimeError("cannot call a blocking fake helper from the fake's own event loop")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _run_async(self, coro: Coroutine[Any, Any, T]) -> T:
        """Await ``coro`` running on the server loop from another loop without blocking it."""
        if self._loop is None:
            coro.close()
            raise RuntimeError(f"{type(self).__name__} is not started")
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self._loop))

    # -- waiting --------------------------------------------------------------------------------

    def wait_for(
        self, predicate: Callable[[Self], T], timeout: float = 5.0, *, message: str | None = None
    ) -> T:
        """Poll ``predicate(self)`` every 20 ms until it is truthy and return its value.

        Blocks the calling thread. From an async test whose event loop also runs the code under
        test, use ``await wait_for_async(...)`` instead, or that code never gets to run.
        """
        deadline = time.monotonic() + timeout
        while True:
            result = predicate(self)
            if result:
                return result
            if time.monotonic() >= deadline:
                raise AssertionError(self._timeout_message(predicate, timeout, message, blocking=True))
            time.sleep(POLL_INTERVAL)

    async def wait_for_async(
        self, predicate: Callable[[Self], T], timeout: float = 5.0, *, message: str | None = None
    ) -> T:
        """Like ``wait_for`` but yields to the caller's event loop between polls."""
        deadline = time.monotonic() + timeout
        while True:
            result = predicate(self)
            if result:
                return result
            if time.monotonic() >= deadline:
                raise AssertionError(self._timeout_message(predicate, timeout, message, blocking=False))
            await asyncio.sleep(POLL_INTERVAL)

    def _timeout_message(
        self, predicate: Callable[..., object], timeout: float, message: str | None, *, blocking: bool
    ) -> str:
        what = message or _describe_callable(predicate)
        lines = [f"{type(self).__name__}: timed out after {timeout:.2f}s waiting for {what}"]
        if blocking and _in_running_loop():
            lines.append(
                "  note: wait_for() blocked a running event loop; if the code under test runs on that "
                "loop, use `await wait_for_async(...)`"
            )
        state = self.describe()
        if state:
            lines.append(state)
        return "\n".join(lines)


def _in_running_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _describe_callable(fn: Callable[..., object]) -> str:
    """Best-effort source text of a predicate so timeout messages say what was awaited."""
    name = getattr(fn, "__name__", repr(fn))
    if name != "<lambda>":
        return name
    try:
        source = textwrap.dedent(inspect.getsource(fn))
    except (OSError, TypeError):
        return "<lambda>"
    # getsource returns the whole statement holding the lambda; cut out just the lambda.
    with contextlib.suppress(SyntaxError):
        lambdas = [node for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Lambda)]
        if len(lambdas) == 1:
            segment = ast.get_source_segment(source, lambdas[0])
            if segment:
                return " ".join(segment.split())
    start = source.find("lambda")
    return " ".join(source[start:].split()) if start >= 0 else "<lambda>"
