"""Build the bot's parts and connect them, without serving anything.

`bot.server.build_asgi` adds what only a served process has (the scheduler, the HTTP routes,
Socket Mode, shutdown). Tests build the same parts, with the same settings, around a fake clock
(tests/inprocess.py): the poller, notifier, runner, reporter and webhook receiver they exercise
are the production ones, wired the production way, talking over real HTTP to the fake servers.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import httpx
from slack_bolt.async_app import AsyncApp
from slack_sdk.web.async_client import AsyncWebClient

from bot.audit import Auditor, AuditRetention
from bot.cards_updater import CardEditor, build_card_client
from bot.chart_renderer import ChartRenderer
from bot.clock import SYSTEM_CLOCK, Clock
from bot.config import Settings
from bot.inflight import InFlight
from bot.listeners import register_listeners
from bot.metrics import Metrics
from bot.notifier import Notifier
from bot.openai_client import FineTuningClient, build_http_client
from bot.pending import CreateReconciler
from bot.poller import Poller
from bot.reporter import Reporter
from bot.runner import CommandRunner
from bot.slack_app import BotIdentity, build_app, build_slack_client
from bot.store import Store
from bot.training_flow import TrainingFlow
from bot.training_store import TrainingUploads
from bot.webhooks import WebhookReceiver


@dataclass(frozen=True)
class Components:
    settings: Settings
    store: Store
    metrics: Metrics
    owner: str
    lease_ttl: float
    single_process: bool
    http: httpx.AsyncClient  # OpenAI's connection pool
    openai: FineTuningClient
    slack: AsyncWebClient  # the posting client (announcements, outcomes, reports)
    app: AsyncApp
    cards: CardEditor
    reporter: Reporter
    notifier: Notifier
    auditor: Auditor
    runner: CommandRunner
    training: TrainingFlow
    reconciler: CreateReconciler
    poller: Poller
    receiver: WebhookReceiver | None
    inflight: InFlight  # replies owed to users

    async def close(self) -> None:
        await self.http.aclose()
        await self.reporter.close()
        await self.training.close()


def lease_ttl_for(settings: Settings) -> float:
    # A lease only has to outlive one cycle's work (a slow cycle must not hand its watches to
    # another replica mid-way), not the gap between cycles: it follows POLL_INTERVAL_SECONDS even
    # when webhooks stretch the cycles to RECONCILE_INTERVAL_SECONDS. Between those passes a
    # keep-alive renews the heartbeat and leases every POLL_INTERVAL_SECONDS, so live replicas keep
    # their share while a crashed one's watches are free after max(60 s, 3 polls), not 15 minutes.
    # Should a lease lapse anyway (a stalled loop) and another replica take the watch, nothing is
    # announced twice: the outbox, not the lease, keeps announcements single.
    return max(60.0, 3 * settings.poll_interval_seconds)


def build_components(
    settings: Settings,
    store: Store,
    *,
    identity: BotIdentity | None = None,
    owner: str | None = None,
    clock: Clock = SYSTEM_CLOCK,
    renderer: ChartRenderer | None = None,
) -> Components:
    """`store` is open and migrated. `owner` names this replica on leases (host:port:pid by
    default). `clock` is the system's except in tests."""
    # This app's own registry: the edges below count into it, /metrics exposes it.
    metrics = Metrics()
    metrics.watch_store(store.gauges)
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
        metrics=metrics,
        sleep=clock.sleep,
        monotonic=clock.monotonic,
    )
    slack_client = build_slack_client(settings, metrics=metrics, sleep=clock.sleep)
    app = build_app(settings, slack_client, identity, metrics)
    owner = owner or f"{socket.gethostname()}:{settings.port}:{os.getpid()}"
    lease_ttl = lease_ttl_for(settings)
    single_process = store.engine.dialect.name == "sqlite"
    if single_process:
        # SQLite means one process: leases left by a killed predecessor are ours to take now.
        store.release_all_leases()
    posting_client = build_slack_client(settings, posting=True, metrics=metrics, sleep=clock.sleep)
    # Cards are edited through a client of their own, so their 429s never hold up an outcome.
    cards = CardEditor(
        store,
        openai,
        build_card_client(settings.slack_bot_token, settings.slack_api_url, metrics),
        per_card_seconds=settings.card_update_seconds,
        per_minute=settings.card_edits_per_minute,
        concurrency=settings.poll_concurrency,
        metrics=metrics,
        clock=clock.time,
        monotonic=clock.monotonic,
    )
    # Completion reports (chart and scorecard) are drawn in a worker process and posted apart
    # from the outcomes, which they follow and never hold up.
    reporter = Reporter(
        store,
        openai,
        posting_client,
        renderer or ChartRenderer(),
        owner=owner,
        lease_ttl=lease_ttl,
        clock=clock.time,
        waits=clock,
    )
    notifier = Notifier(
        store,
        posting_client,
        owner=owner,
        lease_ttl=lease_ttl,
        cards=cards,
        reporter=reporter,
        clock=clock.time,
        monotonic=clock.monotonic,
        sleep=clock.sleep,
    )
    auditor = Auditor(store, clock=clock.time)
    runner = CommandRunner(
        openai,
        posting_client,
        store,
        auditor=auditor,
        admins=settings.admins,
        read_access=settings.read_access,
        owner=owner,
        show_card=cards.show_now,
        reporter=reporter,
        default_model=settings.default_model,
        clock=clock.time,
    )
    # Training files from the create form: checked, then uploaded and started from the report.
    training = TrainingFlow(
        TrainingUploads(store),
        openai,
        posting_client,
        bot_token=settings.slack_bot_token,
        run_create=runner.run,
        prices=settings.training_prices,
        max_upload_bytes=settings.max_upload_mb * 1_000_000,
        admins=settings.admins,
        owner=owner,
        download_hosts=frozenset({"files.slack.com", httpx.URL(settings.slack_api_url).host}),
        auditor=auditor,
        clock=clock,
        stale_after=lease_ttl,
        others_orphaned=single_process,
    )
    runner.attach_training(training)
    # Creates left half-done (a crash, a database failure) are finished each cycle: on SQLite every
    # other owner is a dead predecessor; on PostgreSQL a replica's row is taken over once stale.
    reconciler = CreateReconciler(
        store,
        openai,
        posting_client,
        runner,
        owner=owner,
        stale_after=lease_ttl,
        others_orphaned=single_process,
        clock=clock.time,
        auditor=auditor,
    )

    async def reconcile_creates() -> int:
        # Then the training files whose create that concluded: their report and row follow it.
        return await reconciler.run() + await training.settle_creates()

    poller = Poller(
        store,
        openai,
        notifier,
        owner=owner,
        lease_ttl=lease_ttl,
        concurrency=settings.poll_concurrency,
        single_process=single_process,
        reconcile_creates=reconcile_creates,
        cards=cards,
        audit_retention=AuditRetention(store, days=settings.audit_retention_days, clock=clock.time),
    )
    inflight = InFlight()
    register_listeners(
        app,
        runner,
        default_model=settings.default_model,
        inflight=inflight,
        allowed_channels=settings.allowed_channels,
        training_flow=training,
        metrics=metrics,
        clock=clock,
    )
    receiver = (
        WebhookReceiver(settings.openai_webhook_secret, store, openai, poller, metrics)
        if settings.openai_webhook_secret
        else None
    )
    return Components(
        settings=settings,
        store=store,
        metrics=metrics,
        owner=owner,
        lease_ttl=lease_ttl,
        single_process=single_process,
        http=http,
        openai=openai,
        slack=posting_client,
        app=app,
        cards=cards,
        reporter=reporter,
        notifier=notifier,
        auditor=auditor,
        runner=runner,
        training=training,
        reconciler=reconciler,
        poller=poller,
        receiver=receiver,
        inflight=inflight,
    )
