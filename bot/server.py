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
import logging
import os
import socket
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bot.config import Settings
from bot.http_guard import GuardedH11Protocol, SlackEvents
from bot.inflight import InFlight
from bot.listeners import register_listeners
from bot.notifier import Notifier
from bot.openai_client import FineTuningClient, build_http_client
from bot.pending import CreateReconciler
from bot.poller import Poller
from bot.runner import CommandRunner
from bot.slack_app import BotIdentity, build_app, build_slack_client
from bot.socket_mode import SocketModeConnection
from bot.store import Store
from bot.webhooks import WebhookReceiver

log = logging.getLogger(__name__)


class ListenProblem(Exception):
    """The port cannot be listened on; its str is one line naming the variable to change."""


def build_asgi(settings: Settings, store: Store, identity: BotIdentity | None = None) -> Starlette:
    """`store` is open and migrated (bot.database.open_database), so a bad DATABASE_URL stopped
    the service at start, with one clear line, before any Slack traffic was accepted. `identity`
    is what auth.test said at start (None if Slack could not be reached)."""
    http = build_http_client(
        max_connections=settings.openai_max_connections, timeout=settings.openai_timeout_seconds
    )
    openai = FineTuningClient(
        http,
        api_key=settings.openai_api_key,
        base_url=settings.openai_base_url,
        organization=settings.openai_organization,
        project=settings.openai_project,
        max_concurrency=settings.openai_max_connections,
    )
    slack_client = build_slack_client(settings)
    app = build_app(settings, slack_client, identity)
    owner = f"{socket.gethostname()}:{settings.port}:{os.getpid()}"
    # A lease outlives several cycles, so a slow cycle never hands a watch to another replica.
    interval = settings.effective_poll_interval
    lease_ttl = max(60.0, 3 * interval)
    if store.engine.dialect.name == "sqlite":
        # SQLite means one process: leases left by a killed predecessor are ours to take now.
        store.release_all_leases()
    posting_client = build_slack_client(settings, posting=True)
    notifier = Notifier(store, posting_client, owner=owner, lease_ttl=lease_ttl)
    runner = CommandRunner(
        openai,
        posting_client,
        store,
        admins=settings.admins,
        read_access=settings.read_access,
        owner=owner,
    )
    # Creates left half-done (a crash, a database failure) are finished each cycle: on SQLite every
    # other owner is a dead predecessor; on PostgreSQL a replica's row is taken over once stale.
    reconciler = CreateReconciler(
        store,
        openai,
        posting_client,
        runner,
        owner=owner,
        stale_after=lease_ttl,
        others_orphaned=store.engine.dialect.name == "sqlite",
    )
    poller = Poller(
        store,
        openai,
        notifier,
        owner=owner,
        lease_ttl=lease_ttl,
        concurrency=settings.poll_concurrency,
        reconcile_creates=reconciler.run,
    )
    inflight = InFlight()
    register_listeners(
        app,
        runner,
        default_model=settings.default_model,
        inflight=inflight,
        allowed_channels=settings.allowed_channels,
    )
    # APScheduler's own job stores are not shared between processes (its FAQ); the schedule is
    # in memory and all coordination between replicas lives in our tables.
    scheduler = AsyncIOScheduler(
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 30}
    )

    async def poll() -> None:
        async with inflight.track():
            await poller.cycle()

    scheduler.add_job(
        poll,
        "interval",
        seconds=interval,
        id="poll",
        # First cycle at once: it also delivers whatever a previous run owed and did not send.
        next_run_time=datetime.datetime.now(datetime.UTC),
    )
    # Size caps, read deadlines and the signature over the raw bytes, before Bolt parses anything.
    slack_events = SlackEvents(app, settings.slack_signing_secret or "")
    receiver = (
        WebhookReceiver(settings.openai_webhook_secret, store, openai, poller)
        if settings.openai_webhook_secret
        else None
    )

    def announce_ready() -> None:
        mode = "socket" if settings.socket_mode else "http"
        log.info("finetune-bot ready on port %d (%s mode)", settings.port, mode)

    socket_mode = (
        SocketModeConnection(
            app, settings.slack_app_token, api_url=settings.slack_api_url, on_connected=announce_ready
        )
        if settings.slack_app_token
        else None
    )

    async def healthz(_: Request) -> Response:
        if socket_mode is None:
            return JSONResponse({"ok": True, "mode": "http"})
        # Still 200 while the socket is down: the process is alive and retrying on its own.
        return JSONResponse({"ok": True, "mode": "socket", "slack_connected": socket_mode.connected})

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        scheduler.start()
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
            # Stop starting new work, then let what was promised finish (bounded: a platform
            # sends SIGKILL ~10 s after SIGTERM, and the outbox makes even that safe).
            scheduler.pause()
            if not await inflight.drain(timeout=4):
                log.warning("stopping with %d replies or poll cycles unfinished", inflight.count)
            if not await notifier.wait_idle(timeout=2):
                log.warning("stopping with notifications queued; the outbox keeps them for the next start")
            if receiver is not None:
                await receiver.drain()
            if socket_mode is not None:
                await socket_mode.close()
            scheduler.shutdown(wait=False)
            await http.aclose()
            await asyncio.to_thread(store.close)
            log.info("finetune-bot stopped")

    routes = [Route("/healthz", healthz, methods=["GET"])]
    if not settings.socket_mode:
        routes.append(Route("/slack/events", slack_events.handle, methods=["POST"]))
    if receiver is not None:
        routes.append(Route("/openai/webhook", receiver.handle, methods=["POST"]))
    return Starlette(routes=routes, lifespan=lifespan)


class _Server(uvicorn.Server):
    def handle_exit(self, sig: int, frame: Any) -> None:
        # SIGTERM is a platform's normal "stop" (Heroku sends it on every deploy): shut down
        # gracefully and exit 0, instead of uvicorn's default of re-raising the signal afterwards.
        super().handle_exit(sig, frame)
        self._captured_signals.clear()


def listen(host: str, port: int) -> socket.socket:
    """Bind the listening socket before anything else starts, so a port in use is reported as
    such (one line naming PORT) before the bot opens its database or says it is ready."""
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
                f"PORT {port} is already in use on {host}: stop what listens there, "
                "or set PORT to a free port"
            ) from None
        if error.errno == errno.EACCES:
            raise ListenProblem(
                f"PORT {port} needs privileges this process lacks: set PORT to 1024 or above"
            ) from None
        raise ListenProblem(f"cannot listen on HOST {host} PORT {port} ({error.strerror})") from None
    return sock


def serve(
    settings: Settings, store: Store, sock: socket.socket, identity: BotIdentity | None = None
) -> None:
    """Serve on `sock`, bound by `listen` before anything else started."""
    config = uvicorn.Config(
        build_asgi(settings, store, identity),
        host=settings.host,
        port=settings.port,
        log_config=None,  # keep our handlers (and their secret redaction)
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=3,
        # uvicorn's h11 protocol plus a deadline on request headers and a connection cap below
        # the open-file limit (bot/http_guard.py): slow clients cannot starve /healthz.
        http=GuardedH11Protocol,
    )
    _Server(config).run(sockets=[sock])
