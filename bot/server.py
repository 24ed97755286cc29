"""The one asyncio process: uvicorn serving Starlette, with Bolt, OpenAI and the scheduler inside.

HTTP mode serves `POST /slack/events`; Socket Mode connects out to Slack instead (in the
background: `/healthz` answers while it connects). Both serve `GET /healthz` on PORT, so a
platform's health check works the same in either mode.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import errno
import gc
import hmac
import logging
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import uvicorn
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.schedulers.base import STATE_RUNNING
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bot.config import Settings
from bot.http_guard import GuardedH11Protocol, SlackEvents
from bot.inflight import InFlight
from bot.logs import set_replica
from bot.metrics import CONTENT_TYPE
from bot.readiness import DatabaseProbe, readiness
from bot.slack_app import BotIdentity
from bot.socket_mode import SocketModeConnection
from bot.store import Store
from bot.wiring import Components, build_components

log = logging.getLogger(__name__)

# After the shutdown window: the time allowed to tell users what could not finish.
FAREWELL_SECONDS = 3.0
# How long uvicorn waits for open HTTP connections (acknowledgements take milliseconds) before the
# lifespan shutdown, which has the real window.
CONNECTIONS_GRACE_SECONDS = 3.0


class ListenProblem(Exception):
    """The port cannot be listened on; its str is one line naming the variable to change."""


Endpoint = Callable[[Request], Awaitable[Response]]


def bearer(token: str, endpoint: Endpoint) -> Endpoint:
    """`endpoint` behind `Authorization: Bearer <token>`, compared in constant time; 401 otherwise."""
    expected = f"Bearer {token}".encode()

    async def guarded(request: Request) -> Response:
        given = request.headers.get("authorization", "").encode("utf-8", "replace")
        if not hmac.compare_digest(given, expected):
            return JSONResponse(
                {"error": "unauthorized"}, status_code=401, headers={"WWW-Authenticate": "Bearer"}
            )
        return await endpoint(request)

    return guarded


class _SecondServer(uvicorn.Server):
    """A server sharing the main one's event loop: the main server handles the signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class MetricsServer:
    """`GET /metrics` alone, without a token, on METRICS_PORT bound to 127.0.0.1: for a Prometheus
    (or an agent) on the same host or in the same pod, never reachable from outside."""

    def __init__(self, endpoint: Endpoint, port: int) -> None:
        self._app = Starlette(routes=[Route("/metrics", endpoint, methods=["GET"])])
        self._port = port
        self._server: _SecondServer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self, sock: socket.socket | None = None) -> None:
        """Serve on `sock` (bound by `listen` at start-up), or bind 127.0.0.1:METRICS_PORT now."""
        sock = sock or listen("127.0.0.1", self._port, name="METRICS_PORT")
        config = uvicorn.Config(self._app, log_config=None, access_log=False, lifespan="off")
        self._server = _SecondServer(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name="metrics-server")
        log.info("serving /metrics on 127.0.0.1:%d", self._port)

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._task, 5)


def build_asgi(
    settings: Settings,
    store: Store,
    identity: BotIdentity | None = None,
    metrics_socket: socket.socket | None = None,
    *,
    parts: Components | None = None,
) -> Starlette:
    """`store` is open and migrated (bot.database.open_database), so a bad DATABASE_URL stopped
    the service at start, with one clear line, before any Slack traffic was accepted. `identity`
    is what auth.test said at start (None if Slack could not be reached). `metrics_socket`:
    127.0.0.1:METRICS_PORT, bound at start-up (bound when serving starts if not given). `parts`:
    built by the caller (tests build them around a fake clock and drive the poller themselves,
    without the lifespan that starts the scheduler)."""
    parts = parts or build_components(settings, store, identity=identity)
    set_replica(parts.owner)  # every log line names this replica (LOG_FORMAT=json)
    metrics, poller, notifier, reporter = parts.metrics, parts.poller, parts.notifier, parts.reporter
    owner, inflight, receiver, app = parts.owner, parts.inflight, parts.receiver, parts.app
    interval = settings.effective_poll_interval
    polling = InFlight()  # the poll cycle, apart: its end is when our watches can be handed over
    # APScheduler's own job stores are not shared between processes (its FAQ); the schedule is
    # in memory and all coordination between replicas lives in our tables.
    scheduler = AsyncIOScheduler(
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 30}
    )

    async def poll() -> None:
        if inflight.closing:
            return  # shutting down: the watches are being handed over
        async with polling.track():
            with metrics.poll_cycle():
                await poller.cycle()

    if settings.webhooks_enabled and not parts.single_process:

        async def keep_alive() -> None:
            if inflight.closing:
                return
            async with polling.track():  # shutdown retires this replica only after it
                await poller.keep_alive()

        scheduler.add_job(keep_alive, "interval", seconds=settings.poll_interval_seconds, id="keep_alive")
    scheduler.add_job(
        poll,
        "interval",
        seconds=interval,
        id="poll",
        # First cycle at once: it also delivers whatever a previous run owed and did not send.
        next_run_time=datetime.datetime.now(datetime.UTC),
    )
    # Size caps, read deadlines and the signature over the raw bytes, before Bolt parses anything.
    slack_events = SlackEvents(app, settings.slack_signing_secret or "", metrics)

    def announce_ready() -> None:
        mode = "socket" if settings.socket_mode else "http"
        log.info("finetune-bot ready on port %d (%s mode)", settings.port, mode)

    socket_mode = (
        SocketModeConnection(
            app,
            settings.slack_app_token,
            api_url=settings.slack_api_url,
            on_connected=announce_ready,
            metrics=metrics,
        )
        if settings.slack_app_token
        else None
    )

    async def healthz(_: Request) -> Response:
        if socket_mode is None:
            return JSONResponse({"ok": True, "mode": "http"})
        # Still 200 while the socket is down: the process is alive and retrying on its own.
        return JSONResponse({"ok": True, "mode": "socket", "slack_connected": socket_mode.connected})

    database = DatabaseProbe(store.ping)

    async def readyz(_: Request) -> Response:
        status, body = readiness(
            database=await database.up(),
            scheduler=scheduler.state == STATE_RUNNING,  # paused while shutting down
            socket=None if socket_mode is None else socket_mode.connected,
        )
        return JSONResponse(body, status_code=status)

    async def metrics_page(_: Request) -> Response:
        return Response(await metrics.exposition(), media_type=CONTENT_TYPE)

    metrics_server = (
        MetricsServer(metrics_page, settings.metrics_port) if settings.metrics_port is not None else None
    )

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        scheduler.start()
        if metrics_server is not None:
            await metrics_server.start(metrics_socket)
        try:
            # Everything built at start-up lives as long as the process: keep it out of the
            # collector's full passes, whose pauses otherwise show up as acknowledgement latency.
            gc.freeze()
            log.info(
                "polling every %gs%s", interval, " (reconciliation; webhooks enabled)" if receiver else ""
            )
            if socket_mode is None:
                announce_ready()
            else:
                # "ready" is logged once the socket is up; meanwhile /healthz already answers.
                log.info("serving /healthz on port %d; connecting to Slack in Socket Mode", settings.port)
                socket_mode.start()
            yield
        finally:
            await shut_down()
            if metrics_server is not None:
                await metrics_server.stop()
            if socket_mode is not None:
                await socket_mode.close()
            scheduler.shutdown(wait=False)
            await parts.close()
            await asyncio.to_thread(store.close)
            log.info("finetune-bot stopped")

    async def shut_down() -> None:
        """Refuse new commands, let promised work finish within SHUTDOWN_GRACE_SECONDS of the
        signal, tell the users of what cannot, and hand this replica's leases over."""
        inflight.close()  # usually already done by the signal handler, which starts the window
        deadline = (inflight.closed_at or time.monotonic()) + settings.shutdown_grace_seconds

        def remaining() -> float:
            return max(0.0, deadline - time.monotonic())

        scheduler.pause()
        if not await polling.drain(remaining()):
            log.warning("stopping with a poll cycle unfinished; the next owner repeats it")
        # From here on other replicas may take over this replica's watches at their next cycle.
        try:
            log.info("handed over %d watches", await asyncio.to_thread(store.retire, owner))
        except Exception:  # the database is down: the leases simply expire, as after a crash
            log.exception("could not hand this replica's watches over; their leases will expire")
        if not await inflight.drain(remaining()):
            abandoned = await inflight.abandon(FAREWELL_SECONDS)
            log.warning("told %d users their command could not finish before the restart", abandoned)
        if receiver is not None:
            await receiver.drain()
        if not await notifier.wait_idle(max(0.5, remaining())):
            log.warning("stopping with notifications queued; the outbox keeps them for the next start")
        if not await reporter.wait_idle(max(0.5, remaining())):
            log.warning("stopping with reports under way; the outbox keeps them for the next start")
        try:
            await asyncio.to_thread(store.release_outbox, owner)
        except Exception:
            log.exception("could not release this replica's notifications; their leases will expire")

    routes = [Route("/healthz", healthz, methods=["GET"]), Route("/readyz", readyz, methods=["GET"])]
    if settings.metrics_token:
        routes.append(Route("/metrics", bearer(settings.metrics_token, metrics_page), methods=["GET"]))
    if not settings.socket_mode:
        routes.append(Route("/slack/events", slack_events.handle, methods=["POST"]))
    if receiver is not None:
        routes.append(Route("/openai/webhook", receiver.handle, methods=["POST"]))
    asgi = Starlette(routes=routes, lifespan=lifespan)
    asgi.state.inflight = inflight  # serve() closes it the moment SIGTERM arrives
    asgi.state.metrics = metrics
    return asgi


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, inflight: InFlight) -> None:
        super().__init__(config)
        self._inflight = inflight

    def handle_exit(self, sig: int, frame: Any) -> None:
        # SIGTERM is a platform's normal "stop" (Heroku sends it on every deploy): shut down
        # gracefully and exit 0, instead of uvicorn's default of re-raising the signal afterwards.
        # The shutdown window starts now, and commands arriving from now on are refused.
        self._inflight.close()
        super().handle_exit(sig, frame)
        self._captured_signals.clear()


def listen(host: str, port: int, *, name: str = "PORT") -> socket.socket:
    """Bind the listening socket before anything else starts, so a port in use is reported as
    such (one line naming PORT, or `name`) before the bot opens its database or says it is ready."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as error:
        raise ListenProblem(f"HOST {host!r} is not an address to listen on ({error.strerror})") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(2048)
    except OSError as error:
        sock.close()
        if error.errno == errno.EADDRINUSE:
            raise ListenProblem(
                f"{name} {port} is already in use on {host}: stop what listens there, "
                f"or set {name} to a free port"
            ) from None
        if error.errno == errno.EACCES:
            raise ListenProblem(
                f"{name} {port} needs privileges this process lacks: set {name} to 1024 or above"
            ) from None
        raise ListenProblem(f"cannot listen on HOST {host} {name} {port} ({error.strerror})") from None
    return sock


def serve(
    settings: Settings,
    store: Store,
    sock: socket.socket,
    identity: BotIdentity | None = None,
    metrics_socket: socket.socket | None = None,
) -> None:
    """Serve on `sock` (and /metrics alone on `metrics_socket`), bound by `listen` before anything
    else started."""
    asgi = build_asgi(settings, store, identity, metrics_socket)
    config = uvicorn.Config(
        asgi,
        host=settings.host,
        port=settings.port,
        log_config=None,  # keep our handlers (and their secret redaction)
        access_log=False,
        lifespan="on",
        # Part of SHUTDOWN_GRACE_SECONDS (measured from the signal), not added to it.
        # uvicorn hands it to asyncio.timeout, which takes seconds as a float; its hint says int.
        timeout_graceful_shutdown=min(  # type: ignore[arg-type]
            CONNECTIONS_GRACE_SECONDS, settings.shutdown_grace_seconds
        ),
        # uvicorn's h11 protocol plus a deadline on request headers and a connection cap below
        # the open-file limit (bot/http_guard.py): slow clients cannot starve /healthz.
        http=GuardedH11Protocol,
    )
    _Server(config, asgi.state.inflight).run(sockets=[sock])
