"""Durable state: which jobs each channel watches, and the outbox of notifications owed.

SQLAlchemy Core on a synchronous engine; the async side calls it through `asyncio.to_thread`, so
one slow query never blocks Slack acknowledgements. SQLite (WAL, busy timeout) serves one process;
PostgreSQL serves several replicas, which divide the work with leases claimed under
`SELECT … FOR UPDATE SKIP LOCKED` (SQLite has no row locks and needs none: one process).

Exactly once: a notification is an outbox row with a unique key per (job, channel, outcome),
written in the same transaction that ends the watch. Before posting, the row records where the
attempt goes; after Slack accepts it, the row is marked sent. A row found with an attempt but no
`sent_at` (the process died in between) is first checked against Slack (the message carries the
key in its metadata) and only re-posted if Slack does not have it.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from bot.clock import Clock

SCHEMA_VERSION = 7
# libpq waits for the OS (minutes) on a host that drops packets; a poll cycle or a start-up wait
# should hear "no answer" well before that.
CONNECT_TIMEOUT_SECONDS = 10

# The database's "now", in epoch seconds. PostgreSQL's clock_timestamp() moves within a transaction
# (now() would not); SQLite 3.40 lacks unixepoch('subsec'), hence the Julian-day arithmetic.
_PG_NOW = sa.text("SELECT extract(epoch FROM clock_timestamp())")
_SQLITE_NOW = sa.text("SELECT (julianday('now') - 2440587.5) * 86400.0")

metadata = sa.MetaData()

schema_info = sa.Table(
    "finetune_schema",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
)

watches = sa.Table(
    "finetune_watches",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("job_id", sa.String(80), nullable=False),
    sa.Column("team_id", sa.String(64), nullable=False, default=""),
    sa.Column("channel_id", sa.String(64), nullable=False),
    sa.Column("announcement_ts", sa.String(64), nullable=True),
    sa.Column("user_id", sa.String(64), nullable=False),
    # "create" (started from Slack) or "watch" (followed with /finetune watch): the wording differs.
    sa.Column("origin", sa.String(16), nullable=False, default="create"),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("job_created_at", sa.BigInteger, nullable=True),
    sa.Column("last_status", sa.String(64), nullable=True),
    sa.Column("ended_at", sa.Float, nullable=True),
    sa.Column("end_reason", sa.String(200), nullable=True),
    sa.Column("lease_owner", sa.String(64), nullable=True),
    sa.Column("lease_expires_at", sa.Float, nullable=True),
    # The live card (schema 3): what it last showed (bot/card.py card_digest), when it was last
    # edited, and why editing stopped (the message was deleted, the channel refused the bot).
    sa.Column("card_digest", sa.String(64), nullable=True),
    sa.Column("card_edited_at", sa.Float, nullable=True),
    sa.Column("card_stopped", sa.String(64), nullable=True),
    sa.UniqueConstraint("job_id", "channel_id", name="uq_finetune_watches_job_channel"),
)
sa.Index("ix_finetune_watches_active", watches.c.ended_at, watches.c.lease_expires_at)

outbox = sa.Table(
    "finetune_outbox",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("key", sa.String(200), nullable=False, unique=True),
    sa.Column("watch_id", sa.Integer, sa.ForeignKey("finetune_watches.id"), nullable=False),
    sa.Column("job_id", sa.String(80), nullable=False),
    sa.Column("outcome", sa.String(32), nullable=False),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("attempt_channel", sa.String(64), nullable=True),
    sa.Column("attempt_thread_ts", sa.String(64), nullable=True),
    sa.Column("attempt_started_at", sa.Float, nullable=True),
    sa.Column("next_attempt_at", sa.Float, nullable=True),
    sa.Column("last_error", sa.String(500), nullable=True),
    sa.Column("sent_at", sa.Float, nullable=True),
    sa.Column("sent_channel", sa.String(64), nullable=True),
    sa.Column("sent_ts", sa.String(64), nullable=True),
    sa.Column("delivery_note", sa.String(200), nullable=True),
    sa.Column("lease_owner", sa.String(64), nullable=True),
    sa.Column("lease_expires_at", sa.Float, nullable=True),
    # A report's chart, uploaded to Slack but perhaps not yet shared: a restart looks for a message
    # carrying this file in the thread before making another (see bot/reporter.py).
    sa.Column("upload_file_id", sa.String(64), nullable=True),
)
sa.Index("ix_finetune_outbox_unsent", outbox.c.sent_at, outbox.c.lease_expires_at)

replicas = sa.Table(
    "finetune_replicas",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("heartbeat_at", sa.Float, nullable=False),
)

# Webhook deliveries already handled, so a redelivered `webhook-id` changes nothing.
webhook_deliveries = sa.Table(
    "finetune_webhook_deliveries",
    metadata,
    sa.Column("webhook_id", sa.String(200), primary_key=True),
    sa.Column("received_at", sa.Float, nullable=False),
)


# A `/finetune create` from the moment it is accepted, keyed by Slack's trigger_id (also the
# Idempotency-Key sent to OpenAI), so a create can never leave a paid job nobody tracks, and a
# replayed command never starts a second job. Written BEFORE OpenAI is called.
# state: pending (OpenAI called, or about to be) → created (job id known, watch written) →
# announced; or failed (OpenAI refused) or abandoned (no job with this key ever appeared). In
# between, unconfirmed: OpenAI timed out or answered 5xx, so the job may exist; looked up later by
# its key (bot/pending.py), it becomes created, or abandoned once no job can appear any more.
pending_creates = sa.Table(
    "finetune_pending_creates",
    metadata,
    sa.Column("trigger_id", sa.String(200), primary_key=True),
    sa.Column("team_id", sa.String(64), nullable=False),
    sa.Column("channel_id", sa.String(64), nullable=False),
    sa.Column("user_id", sa.String(64), nullable=False),
    sa.Column("response_url", sa.Text, nullable=True),
    sa.Column("params", sa.Text, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("job_id", sa.String(80), nullable=True),
    sa.Column("watch_id", sa.Integer, nullable=True),
    sa.Column("owner", sa.String(64), nullable=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Column("note", sa.String(200), nullable=True),
)
sa.Index("ix_finetune_pending_creates_state", pending_creates.c.state, pending_creates.c.updated_at)

# A training file sent through the create form (bot/training_flow.py): checked, then — on the
# report's Start button — uploaded to OpenAI once and turned into a job. Methods: bot/training_store.py.
# state: checking → ready (no errors; Start offered) or rejected (errors) or failed (could not be
# read); ready → uploading → uploaded (OpenAI file id known) → creating (a create is under way,
# keyed by `create_trigger`) → started (job id known), or back to uploaded when the create made no
# job. A create that outlives its click (OpenAI's answer lost, a crash) is settled later, by
# whoever learns what it came to (bot/training_flow.py `settle_creates`).
training_uploads = sa.Table(
    "finetune_training_uploads",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("team_id", sa.String(64), nullable=False),
    sa.Column("channel_id", sa.String(64), nullable=False),
    sa.Column("user_id", sa.String(64), nullable=False),
    sa.Column("slack_file_id", sa.String(64), nullable=False),
    sa.Column("filename", sa.String(300), nullable=False),
    sa.Column("validation_slack_file_id", sa.String(64), nullable=True),
    sa.Column("params", sa.Text, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("report_channel", sa.String(64), nullable=True),
    sa.Column("report_ts", sa.String(64), nullable=True),
    sa.Column("sha256", sa.String(64), nullable=True),
    sa.Column("validation_sha256", sa.String(64), nullable=True),
    sa.Column("summary", sa.Text, nullable=True),
    sa.Column("openai_file_id", sa.String(80), nullable=True),
    sa.Column("openai_validation_file_id", sa.String(80), nullable=True),
    sa.Column("create_trigger", sa.String(200), nullable=True),
    sa.Column("job_id", sa.String(80), nullable=True),
    sa.Column("owner", sa.String(64), nullable=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Column("note", sa.String(300), nullable=True),
)
# Every poll cycle looks for the uploads whose create is under way (`creating_since`); the rows are
# kept, so without this index that look would read every upload ever checked.
TRAINING_UPLOADS_STATE_INDEX = sa.Index(
    "ix_finetune_training_uploads_state", training_uploads.c.state, training_uploads.c.updated_at
)

# Who did what to which job, and what it came to (bot/audit.py): every state-changing action,
# refused ones included. `at` is this host's clock (time.time) like the other rows' created_at;
# `result` is ok, refused or failed, `reason` a short why, `detail` a small JSON object.
audit = sa.Table(
    "finetune_audit",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("team_id", sa.String(64), nullable=False),
    sa.Column("channel_id", sa.String(64), nullable=False),
    sa.Column("user_id", sa.String(64), nullable=False),
    sa.Column("action", sa.String(32), nullable=False),
    sa.Column("job_id", sa.String(80), nullable=True),
    sa.Column("result", sa.String(16), nullable=False),
    sa.Column("reason", sa.String(200), nullable=True),
    sa.Column("detail", sa.Text, nullable=True),
)
sa.Index("ix_finetune_audit_job", audit.c.job_id, audit.c.at)
sa.Index("ix_finetune_audit_at", audit.c.at)
AUDIT_DETAIL_CHARS = 1000


@dataclass(frozen=True)
class AuditRow:
    id: int
    at: float
    team_id: str
    channel_id: str
    user_id: str
    action: str
    job_id: str | None
    result: str
    reason: str | None
    detail: dict[str, Any]

    @classmethod
    def from_row(cls, row: Any) -> AuditRow:
        values = dict(row._mapping)
        try:
            detail = json.loads(values.get("detail") or "{}")
        except ValueError:
            detail = {}
        values["detail"] = detail if isinstance(detail, dict) else {}
        return cls(**values)


# Added to finetune_watches by the schema 2 → 3 step.
CARD_COLUMNS = ("card_digest", "card_edited_at", "card_stopped")
# Added to finetune_outbox by the schema 3 → 4 step.
REPORT_COLUMNS = ("upload_file_id",)

# The outbox's `outcome` of a completion report (chart and scorecard), owed after the outcome.
REPORT = "report"
# Outcomes that are followed by a report (when the job has any metrics or checkpoints to show).
REPORTED_OUTCOMES = ("succeeded", "failed", "cancelled")

# States of a pending create that still need the bot (see `Store.pending_to_reconcile`).
OPEN_CREATE_STATES = ("pending", "created")


@dataclass(frozen=True)
class StoreGauges:
    """What the metrics read from the store at scrape time (bot/metrics.py)."""

    watches_active: int
    outbox_owed: int
    outbox_oldest_owed_seconds: float  # 0 when nothing is owed


@dataclass(frozen=True)
class PendingCreate:
    trigger_id: str
    team_id: str
    channel_id: str
    user_id: str
    response_url: str | None
    params: dict[str, Any]
    state: str
    job_id: str | None
    watch_id: int | None
    owner: str | None
    created_at: float
    updated_at: float

    @classmethod
    def from_row(cls, row: Any) -> PendingCreate:
        m = dict(row._mapping)
        m["params"] = json.loads(m["params"])
        return cls(**{f: m[f] for f in cls.__dataclass_fields__})


@dataclass(frozen=True)
class Watch:
    id: int
    job_id: str
    team_id: str
    channel_id: str
    announcement_ts: str | None
    user_id: str
    origin: str
    created_at: float
    job_created_at: int | None
    last_status: str | None
    ended_at: float | None
    end_reason: str | None
    card_digest: str | None = None
    card_edited_at: float | None = None
    card_stopped: str | None = None

    @classmethod
    def from_row(cls, row: Any) -> Watch:
        m = row._mapping
        return cls(**{f: m[f] for f in cls.__dataclass_fields__})


# Watch's fields in order, so a row selected with them builds a Watch positionally: a claim reads
# every watch of this replica each cycle, and a mapping per row is most of that read's cost.
_WATCH_COLUMNS = tuple(watches.c[name] for name in Watch.__dataclass_fields__)


@dataclass(frozen=True)
class OutboxItem:
    id: int
    key: str
    watch_id: int
    job_id: str
    outcome: str
    payload: dict[str, Any]
    created_at: float  # when it was owed (this host's clock): the Reporter gives up and backs off by age
    attempts: int
    attempt_channel: str | None
    attempt_thread_ts: str | None
    attempt_started_at: float | None
    sent_at: float | None
    sent_channel: str | None
    sent_ts: str | None
    delivery_note: str | None
    upload_file_id: str | None = None
    next_attempt_at: float | None = None

    @property
    def is_report(self) -> bool:
        return self.outcome == REPORT

    @classmethod
    def from_row(cls, row: Any) -> OutboxItem:
        m = dict(row._mapping)
        m["payload"] = json.loads(m["payload"])
        return cls(**{f: m[f] for f in cls.__dataclass_fields__})


def outbox_key(job_id: str, channel_id: str, outcome: str) -> str:
    return f"{job_id}:{channel_id}:{outcome}"


def report_key(job_id: str, channel_id: str) -> str:
    """Its own prefix: the report is not an outcome, and nothing that looks for a job's outcomes
    by key (`job_id:`) should take it for one."""
    return f"{REPORT}:{job_id}:{channel_id}"


def normalise_url(url: str) -> str:
    """`postgresql://` means psycopg 3 here (SQLAlchemy's default PostgreSQL driver is psycopg2)."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def create_engine(url: str) -> Engine:
    url = normalise_url(url)
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @sa.event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _: Any) -> None:
            # Let SQLAlchemy, not the sqlite3 module, decide when transactions begin (below).
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        @sa.event.listens_for(engine, "begin")
        def _begin_immediate(conn: Connection) -> None:
            # Take the write lock up front: a read-then-write transaction (claiming a lease) must
            # not find at its write that another thread changed the rows it read.
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    return sa.create_engine(
        url,
        pool_pre_ping=True,
        pool_size=5,
        max_overflow=5,
        connect_args={"connect_timeout": CONNECT_TIMEOUT_SECONDS},
    )


class Store:
    def __init__(self, engine: Engine, *, clock: Clock | None = None) -> None:
        """`clock`: for tests only. Without it, leases and heartbeats are measured on the
        database's clock; with it (a fake clock), on that clock instead, so a test can expire a
        lease or let a retry come due without waiting."""
        self.engine = engine
        self._postgres = engine.dialect.name == "postgresql"
        self._clock = clock

    @classmethod
    def from_url(cls, url: str, *, clock: Clock | None = None) -> Store:
        store = cls(create_engine(url), clock=clock)
        store.migrate()
        return store

    def _time(self) -> float:
        """This host's clock (row timestamps), or the test's clock."""
        return time.time() if self._clock is None else self._clock.time()

    def now(self) -> float:
        """The clock row timestamps are written on, for tables whose methods live in a module of
        their own (bot/training_store.py): this host's, or the test's."""
        return self._time()

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        with self.engine.begin() as conn:
            yield conn

    def _insert(self, table: sa.Table) -> Any:
        return (postgresql.insert if self._postgres else sqlite.insert)(table)

    def _db_now(self, conn: Connection) -> float:
        """Seconds since the epoch on the database's clock: every replica then measures leases and
        heartbeats against the same clock, whatever its host's clock says."""
        if self._clock is not None:
            return self._clock.time()
        return float(conn.execute(_PG_NOW if self._postgres else _SQLITE_NOW).scalar_one())

    # -- schema ----------------------------------------------------------------------------------

    def migrate(self) -> None:
        """Create what is missing, then step the schema version up. Each later version adds a
        step here that alters in place; nothing is ever dropped and recreated."""
        with self._tx() as conn:
            if self._postgres:
                # Two replicas starting together must not both create tables.
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(724011)"))
            metadata.create_all(conn, checkfirst=True)
            current = conn.execute(sa.select(schema_info.c.version).where(schema_info.c.id == 1)).scalar()
            if current is None:
                conn.execute(schema_info.insert().values(id=1, version=SCHEMA_VERSION))
            elif current > SCHEMA_VERSION:
                raise RuntimeError(
                    f"the database schema is version {current}, newer than this bot ({SCHEMA_VERSION})"
                )
            elif current < SCHEMA_VERSION:
                # One step per version. 1 → 2 added finetune_pending_creates, which `create_all`
                # above has just created (it only adds what is missing): nothing to alter.
                # 2 → 3 adds the card columns to finetune_watches (create_all never alters a table).
                if current < 3:
                    self._add_missing_columns(conn, watches, CARD_COLUMNS)
                # 3 → 4 adds the report's uploaded file to finetune_outbox.
                if current < 4:
                    self._add_missing_columns(conn, outbox, REPORT_COLUMNS)
                # 4 → 5 adds finetune_training_uploads, which `create_all` has just created.
                # 5 → 6 adds finetune_audit, likewise: nothing to alter.
                # 6 → 7 indexes the training uploads' state (`create_all` indexes only the tables
                # it creates).
                if current < 7:
                    TRAINING_UPLOADS_STATE_INDEX.create(conn, checkfirst=True)
                conn.execute(schema_info.update().values(version=SCHEMA_VERSION))

    def _add_missing_columns(self, conn: Connection, table: sa.Table, names: Sequence[str]) -> None:
        """ALTER TABLE … ADD COLUMN for each nullable column the table lacks (in place: rows kept)."""
        present = {c["name"] for c in sa.inspect(conn).get_columns(table.name)}
        for name in names:
            if name in present:
                continue
            column = table.c[name]
            kind = column.type.compile(dialect=conn.dialect)
            conn.execute(sa.text(f'ALTER TABLE {table.name} ADD COLUMN "{name}" {kind}'))

    def retire(self, owner: str) -> int:
        """On shutdown: hand this replica's watches back and stop counting it as alive, so the
        others take its share at their next cycle instead of waiting for its leases to expire.
        Returns how many watches were released."""
        with self._tx() as conn:
            released = conn.execute(
                watches.update()
                .where(watches.c.lease_owner == owner)
                .values(lease_owner=None, lease_expires_at=None)
            ).rowcount
            conn.execute(replicas.delete().where(replicas.c.id == owner))
        return int(released)

    def renew_leases(self, owner: str, *, ttl: float) -> int:
        """Extend the leases this replica still holds on active watches (database clock)."""
        with self._tx() as conn:
            now = self._db_now(conn)
            return int(
                conn.execute(
                    watches.update()
                    .where(
                        watches.c.lease_owner == owner,
                        watches.c.ended_at.is_(None),
                        watches.c.lease_expires_at >= now,
                    )
                    .values(lease_expires_at=now + ttl)
                ).rowcount
            )

    def release_outbox(self, owner: str) -> int:
        """On shutdown, last: unsent notifications this replica leased become free for others."""
        with self._tx() as conn:
            return int(
                conn.execute(
                    outbox.update()
                    .where(outbox.c.lease_owner == owner, outbox.c.sent_at.is_(None))
                    .values(lease_owner=None, lease_expires_at=None)
                ).rowcount
            )

    def release_all_leases(self) -> None:
        with self._tx() as conn:
            conn.execute(watches.update().values(lease_owner=None, lease_expires_at=None))
            conn.execute(
                outbox.update()
                .where(outbox.c.sent_at.is_(None))
                .values(lease_owner=None, lease_expires_at=None)
            )

    # -- watches ---------------------------------------------------------------------------------

    def add_watch(
        self,
        *,
        job_id: str,
        team_id: str,
        channel_id: str,
        user_id: str,
        announcement_ts: str | None,
        job_created_at: int | None,
        status: str | None,
        origin: str = "create",
        now: float | None = None,
    ) -> tuple[Watch, bool]:
        """Start watching; returns the watch and whether it is new. Watching again a job this
        channel already follows keeps the first watch (and its announcement)."""
        now = self._time() if now is None else now
        with self._tx() as conn:
            return self._add_watch(
                conn,
                job_id=job_id,
                team_id=team_id,
                channel_id=channel_id,
                user_id=user_id,
                announcement_ts=announcement_ts,
                job_created_at=job_created_at,
                status=status,
                origin=origin,
                now=now,
            )

    def _add_watch(
        self,
        conn: Connection,
        *,
        job_id: str,
        team_id: str,
        channel_id: str,
        user_id: str,
        announcement_ts: str | None,
        job_created_at: int | None,
        status: str | None,
        origin: str,
        now: float,
    ) -> tuple[Watch, bool]:
        inserted = conn.execute(
            self._insert(watches)
            .values(
                job_id=job_id,
                team_id=team_id,
                channel_id=channel_id,
                user_id=user_id,
                origin=origin,
                announcement_ts=announcement_ts,
                created_at=now,
                job_created_at=job_created_at,
                last_status=status,
            )
            .on_conflict_do_nothing(index_elements=["job_id", "channel_id"])
            .returning(watches.c.id)
        ).scalar()
        if inserted is None:
            # Watched before: revive it if it had been unwatched.
            conn.execute(
                watches.update()
                .where(
                    watches.c.job_id == job_id,
                    watches.c.channel_id == channel_id,
                    watches.c.end_reason.like("unwatched%"),
                )
                .values(ended_at=None, end_reason=None, lease_owner=None, lease_expires_at=None)
            )
        row = conn.execute(
            sa.select(watches).where(watches.c.job_id == job_id, watches.c.channel_id == channel_id)
        ).one()
        return Watch.from_row(row), inserted is not None

    def set_announcement(self, watch_id: int, ts: str) -> None:
        """Note the parent message's ts: the outcome is threaded under the latest announcement."""
        with self._tx() as conn:
            conn.execute(watches.update().where(watches.c.id == watch_id).values(announcement_ts=ts))

    def get_watch(self, job_id: str, channel_id: str) -> Watch | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(watches).where(watches.c.job_id == job_id, watches.c.channel_id == channel_id)
            ).first()
        return Watch.from_row(row) if row else None

    def end_watch(self, watch_id: int, reason: str, now: float | None = None) -> bool:
        now = self._time() if now is None else now
        with self._tx() as conn:
            result = conn.execute(
                watches.update()
                .where(watches.c.id == watch_id, watches.c.ended_at.is_(None))
                .values(ended_at=now, end_reason=reason[:200], lease_owner=None, lease_expires_at=None)
            )
        return result.rowcount == 1

    def starter_of(self, job_id: str) -> str | None:
        """Who started a job from Slack (its `create` watch records them), or None."""
        with self.engine.connect() as conn:
            return conn.execute(
                sa.select(watches.c.user_id)
                .where(watches.c.job_id == job_id, watches.c.origin == "create")
                .order_by(watches.c.id)
                .limit(1)
            ).scalar()

    def channel_watches(self, channel_id: str, *, active_only: bool = True) -> list[Watch]:
        query = sa.select(watches).where(watches.c.channel_id == channel_id)
        if active_only:
            query = query.where(watches.c.ended_at.is_(None))
        with self.engine.connect() as conn:
            return [Watch.from_row(r) for r in conn.execute(query.order_by(watches.c.id))]

    def active_watches_for_job(self, job_id: str) -> list[Watch]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(watches).where(watches.c.job_id == job_id, watches.c.ended_at.is_(None))
            )
            return [Watch.from_row(r) for r in rows]

    def watches_for_jobs(self, job_ids: Collection[str]) -> list[Watch]:
        """Every watch (active or ended) of these jobs: who may read them (bot/access.py)."""
        if not job_ids:
            return []
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(watches).where(watches.c.job_id.in_(sorted(set(job_ids)))).order_by(watches.c.id)
            )
            return [Watch.from_row(r) for r in rows]

    def set_status(self, watch_ids: Sequence[int], status: str) -> None:
        if not watch_ids:
            return
        with self._tx() as conn:
            conn.execute(watches.update().where(watches.c.id.in_(watch_ids)).values(last_status=status))

    # -- cards -----------------------------------------------------------------------------------

    def card_edited(self, watch_id: int, digest: str, now: float | None = None) -> None:
        """The card now shows `digest` (a restart then does not edit it again)."""
        now = self._time() if now is None else now
        with self._tx() as conn:
            conn.execute(
                watches.update()
                .where(watches.c.id == watch_id)
                .values(card_digest=digest, card_edited_at=now)
            )

    def card_shown(self, digests: dict[int, str]) -> None:
        """Record what cards show without an edit (the announcement already showed it)."""
        if not digests:
            return
        with self._tx() as conn:
            for watch_id, digest in digests.items():
                conn.execute(watches.update().where(watches.c.id == watch_id).values(card_digest=digest))

    def card_owed(self, watch_ids: Collection[int], marker: str) -> None:
        """Never-edited cards now owe an edit: store `marker` (no real digest) as what they show,
        so a process that dies before the edit leaves them for the next one. Cards edited
        meanwhile keep their digest."""
        if not watch_ids:
            return
        with self._tx() as conn:
            conn.execute(
                watches.update()
                .where(watches.c.id.in_(sorted(watch_ids)), watches.c.card_digest.is_(None))
                .values(card_digest=marker)
            )

    def final_cards_to_check(
        self, *, ended_since: float, limit: int = 500
    ) -> list[tuple[Watch, dict[str, Any]]]:
        """Ended watches (since `ended_since`) with a card still editable whose outcome was posted
        in the card's channel, with that outcome's job payload, newest first: at start, cards whose
        final edit a stopped process still owed (the caller compares digests). One query, bounded."""
        query = (
            sa.select(watches, outbox.c.payload.label("outcome_payload"))
            .join(outbox, outbox.c.watch_id == watches.c.id)
            .where(
                watches.c.ended_at >= ended_since,
                watches.c.announcement_ts.is_not(None),
                watches.c.card_stopped.is_(None),
                outbox.c.sent_at.is_not(None),
                outbox.c.outcome != REPORT,  # the outcome's row: a report says nothing of the card
                # By DM means the channel refused the bot: its card is not edited either.
                outbox.c.sent_channel == watches.c.channel_id,
            )
            .order_by(watches.c.ended_at.desc(), outbox.c.id.desc())
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return [(Watch.from_row(r), json.loads(r.outcome_payload)) for r in conn.execute(query)]

    def stop_card(self, watch_id: int, reason: str) -> None:
        """Never edit this card again (deleted message, refused channel); the outcome still posts."""
        with self._tx() as conn:
            conn.execute(
                watches.update().where(watches.c.id == watch_id).values(card_stopped=reason[:64])
            )

    def heartbeat(self, replica_id: str, now: float | None = None, ttl: float = 60.0) -> int:
        """Record that this replica is alive; returns how many replicas are. `now` defaults to
        the database's clock (tests pass their own)."""
        with self._tx() as conn:
            now = self._db_now(conn) if now is None else now
            stmt = self._insert(replicas).values(id=replica_id, heartbeat_at=now)
            conn.execute(stmt.on_conflict_do_update(index_elements=["id"], set_={"heartbeat_at": now}))
            conn.execute(replicas.delete().where(replicas.c.heartbeat_at < now - 10 * ttl))
            return int(
                conn.execute(
                    sa.select(sa.func.count())
                    .select_from(replicas)
                    .where(replicas.c.heartbeat_at >= now - ttl)
                ).scalar_one()
            )

    def claim_watches(
        self,
        owner: str,
        *,
        now: float | None = None,
        ttl: float,
        live_replicas: int,
        include_released: bool = False,
    ) -> list[Watch]:
        """Renew this replica's leases and claim free ones up to a fair share of the active watches,
        releasing any excess, so several replicas divide the work and a dead one's watches move on
        once its leases expire. `now` defaults to the database's clock.

        Returns the kept and claimed watches; with `include_released` (the poller), also the excess
        just released (not renewed), for the cycle to look at this once more. Otherwise, when many
        jobs end together, the share shrinks as they end, and released watches wait cycle after
        cycle for a replica whose share has room (seen with 20 jobs on two replicas: the last
        announced five cycles late). Should
        the replica that claims one next look at it in the same moment, the outbox, not the lease,
        keeps its announcement single."""
        with self._tx() as conn:
            now = self._db_now(conn) if now is None else now
            active = conn.execute(
                sa.select(sa.func.count()).select_from(watches).where(watches.c.ended_at.is_(None))
            ).scalar_one()
            share = max(1, math.ceil(active / max(1, live_replicas)))
            # What this replica holds unexpired, read whole: in the steady state that is every
            # watch the cycle needs, so one read serves both the fair-share split and the answer.
            held = sa.and_(
                watches.c.ended_at.is_(None),
                watches.c.lease_owner == owner,
                watches.c.lease_expires_at >= now,
            )
            mine = [
                Watch(*r) for r in conn.execute(sa.select(*_WATCH_COLUMNS).where(held).order_by(watches.c.id))
            ]
            keep, release = mine[:share], mine[share:]
            if release:
                conn.execute(
                    watches.update()
                    .where(watches.c.id.in_([w.id for w in release]), watches.c.lease_owner == owner)
                    .values(lease_owner=None, lease_expires_at=None)
                )
            if keep:
                # Renewed by the condition that selected them (the excess no longer meets it), not
                # by a list of a thousand ids, which costs more to bind than the update itself.
                conn.execute(watches.update().where(held).values(lease_expires_at=now + ttl))
            wanted = share - len(keep)
            claimed: list[Watch] = []
            if wanted > 0:
                free = (
                    sa.select(watches.c.id)
                    .where(
                        watches.c.ended_at.is_(None),
                        sa.or_(watches.c.lease_expires_at.is_(None), watches.c.lease_expires_at < now),
                    )
                    .order_by(watches.c.id)
                    .limit(wanted)
                    .with_for_update(skip_locked=True)
                )
                claimed_ids = [r.id for r in conn.execute(free)]
                if claimed_ids:
                    conn.execute(
                        watches.update()
                        .where(watches.c.id.in_(claimed_ids))
                        .values(lease_owner=owner, lease_expires_at=now + ttl)
                    )
                    rows = conn.execute(sa.select(*_WATCH_COLUMNS).where(watches.c.id.in_(claimed_ids)))
                    claimed = [Watch(*r) for r in rows]
            looked_at = mine if include_released else keep
            if not claimed:
                return looked_at
            return sorted(looked_at + claimed, key=lambda w: w.id)

    # -- outbox ----------------------------------------------------------------------------------

    def finish_watch(
        self, watch: Watch, outcome: str, payload: dict[str, Any], now: float | None = None
    ) -> bool:
        """In one transaction: owe the channel a notification, and end the watch. The unique key
        makes a second attempt (another replica, the webhook, a restart) a no-op."""
        now = self._time() if now is None else now
        body = json.dumps(payload, separators=(",", ":"))
        with self._tx() as conn:
            created = conn.execute(
                self._insert(outbox)
                .values(
                    key=outbox_key(watch.job_id, watch.channel_id, outcome),
                    watch_id=watch.id,
                    job_id=watch.job_id,
                    outcome=outcome,
                    payload=body,
                    created_at=now,
                    attempts=0,
                )
                .on_conflict_do_nothing(index_elements=["key"])
                .returning(outbox.c.id)
            ).scalar()
            if created is not None and outcome in REPORTED_OUTCOMES:
                # The report is owed in the same transaction as the outcome (so a crash cannot
                # lose it), as a row of its own: it is made and posted apart, after the outcome,
                # and its failures never hold the outcome up.
                conn.execute(
                    self._insert(outbox)
                    .values(
                        key=report_key(watch.job_id, watch.channel_id),
                        watch_id=watch.id,
                        job_id=watch.job_id,
                        outcome=REPORT,
                        payload=body,
                        created_at=now,
                        attempts=0,
                    )
                    .on_conflict_do_nothing(index_elements=["key"])
                )
            conn.execute(
                watches.update()
                .where(watches.c.id == watch.id, watches.c.ended_at.is_(None))
                .values(
                    ended_at=now,
                    end_reason=outcome,
                    last_status=payload.get("status") or outcome,
                    lease_owner=None,
                    lease_expires_at=None,
                )
            )
        return created is not None

    def claim_outbox(
        self,
        owner: str,
        *,
        now: float | None = None,
        ttl: float,
        limit: int = 200,
        include_reports: bool = True,
    ) -> list[OutboxItem]:
        """Lease the notifications due now (`now` defaults to the database's clock). Without
        `include_reports`, report rows are left for a process that makes reports."""
        with self._tx() as conn:
            now = self._db_now(conn) if now is None else now
            due = (
                sa.select(outbox.c.id)
                .where(
                    outbox.c.sent_at.is_(None),
                    sa.true() if include_reports else outbox.c.outcome != REPORT,
                    sa.or_(outbox.c.next_attempt_at.is_(None), outbox.c.next_attempt_at <= now),
                    sa.or_(
                        outbox.c.lease_expires_at.is_(None),
                        outbox.c.lease_expires_at < now,
                        outbox.c.lease_owner == owner,
                    ),
                )
                .order_by(outbox.c.id)
                .limit(limit)
                .with_for_update(skip_locked=True)
            )
            ids = [r.id for r in conn.execute(due)]
            if not ids:
                return []
            conn.execute(
                outbox.update()
                .where(outbox.c.id.in_(ids))
                .values(lease_owner=owner, lease_expires_at=now + ttl)
            )
            rows = conn.execute(sa.select(outbox).where(outbox.c.id.in_(ids)).order_by(outbox.c.id))
            return [OutboxItem.from_row(r) for r in rows]

    def record_attempt(
        self, item_id: int, owner: str, channel: str, thread_ts: str | None, lease_ttl: float = 60.0
    ) -> bool:
        """Durably note where a post is about to go, before posting. False if the lease was lost."""
        with self._tx() as conn:
            now = self._db_now(conn)
            result = conn.execute(
                outbox.update()
                .where(outbox.c.id == item_id, outbox.c.lease_owner == owner, outbox.c.sent_at.is_(None))
                .values(
                    attempt_channel=channel,
                    attempt_thread_ts=thread_ts,
                    attempt_started_at=self._time(),
                    attempts=outbox.c.attempts + 1,
                    # A fresh lease for the post itself, however long the row waited in a queue.
                    lease_expires_at=now + lease_ttl,
                )
            )
        return result.rowcount == 1

    def mark_sent(self, item_id: int, *, channel: str, ts: str | None, note: str | None = None) -> None:
        with self._tx() as conn:
            conn.execute(
                outbox.update()
                .where(outbox.c.id == item_id, outbox.c.sent_at.is_(None))
                .values(
                    sent_at=self._time(),
                    sent_channel=channel,
                    sent_ts=ts,
                    delivery_note=note[:200] if note else None,
                    lease_owner=None,
                    lease_expires_at=None,
                )
            )

    def record_upload(self, item_id: int, owner: str, file_id: str, lease_ttl: float = 60.0) -> bool:
        """Durably note the chart's Slack file id before it is shared, with a fresh lease for the
        share itself: an upload slowed by minutes of 429s may have outlived the lease taken at
        `record_attempt`, and another replica must not take the row over while this one shares.
        False if the lease was lost (another replica holds the row now)."""
        with self._tx() as conn:
            now = self._db_now(conn)
            result = conn.execute(
                outbox.update()
                .where(outbox.c.id == item_id, outbox.c.lease_owner == owner, outbox.c.sent_at.is_(None))
                .values(upload_file_id=file_id, lease_expires_at=now + lease_ttl)
            )
        return result.rowcount == 1

    def outcome_of(self, watch_id: int) -> OutboxItem | None:
        """The outcome row a report follows (the watch's one non-report row)."""
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(outbox)
                .where(outbox.c.watch_id == watch_id, outbox.c.outcome != REPORT)
                .order_by(outbox.c.id)
                .limit(1)
            ).first()
        return OutboxItem.from_row(row) if row is not None else None

    def defer(self, item_id: int, *, error: str, retry_in: float) -> None:
        with self._tx() as conn:
            now = self._db_now(conn)  # compared with the database's clock in claim_outbox
            conn.execute(
                outbox.update()
                .where(outbox.c.id == item_id, outbox.c.sent_at.is_(None))
                .values(
                    last_error=error[:500],
                    next_attempt_at=now + retry_in,
                    lease_owner=None,
                    lease_expires_at=None,
                )
            )

    # -- operations (bot/metrics.py, /readyz) ---------------------------------------------------------

    def ping(self) -> None:
        """`SELECT 1`: raises when the database does not answer."""
        with self.engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))

    def gauges(self) -> StoreGauges:
        """Watches active, outbox rows owed and the oldest one's age (database clock), in one
        query over the two partial-state indexes."""
        now: sa.ColumnClause[Any] = sa.literal_column(
            "extract(epoch FROM clock_timestamp())"
            if self._postgres
            else "(julianday('now') - 2440587.5) * 86400.0"
        )
        owed = outbox.c.sent_at.is_(None)
        query = sa.select(
            sa.select(sa.func.count()).select_from(watches).where(watches.c.ended_at.is_(None)).scalar_subquery(),
            sa.select(sa.func.count()).select_from(outbox).where(owed).scalar_subquery(),
            sa.select(sa.func.min(outbox.c.created_at)).where(owed).scalar_subquery(),
            now,
        )
        with self.engine.connect() as conn:
            active, owed_rows, oldest, db_now = conn.execute(query).one()
        age = max(0.0, float(db_now) - float(oldest)) if oldest is not None else 0.0
        return StoreGauges(int(active), int(owed_rows), age)

    def outbox_items(self) -> list[OutboxItem]:
        with self.engine.connect() as conn:
            return [OutboxItem.from_row(r) for r in conn.execute(sa.select(outbox).order_by(outbox.c.id))]

    def watches_by_id(self, watch_ids: set[int]) -> dict[int, Watch]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(watches).where(watches.c.id.in_(sorted(watch_ids))))
            return {row.id: Watch.from_row(row) for row in rows}

    def watch(self, watch_id: int) -> Watch | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(watches).where(watches.c.id == watch_id)).first()
        return Watch.from_row(row) if row else None

    # -- pending creates -------------------------------------------------------------------------

    def begin_create(
        self,
        *,
        trigger_id: str,
        team_id: str,
        channel_id: str,
        user_id: str,
        response_url: str | None,
        params: dict[str, Any],
        owner: str,
        now: float | None = None,
    ) -> tuple[PendingCreate, bool]:
        """Record a create before OpenAI is called; returns the row and whether it is new (False:
        this trigger_id was seen before — a replayed or redelivered command)."""
        now = self._time() if now is None else now
        with self._tx() as conn:
            inserted = conn.execute(
                self._insert(pending_creates)
                .values(
                    trigger_id=trigger_id,
                    team_id=team_id,
                    channel_id=channel_id,
                    user_id=user_id,
                    response_url=response_url,
                    params=json.dumps(params, separators=(",", ":")),
                    state="pending",
                    owner=owner,
                    created_at=now,
                    updated_at=now,
                )
                .on_conflict_do_nothing(index_elements=["trigger_id"])
                .returning(pending_creates.c.trigger_id)
            ).scalar()
            row = conn.execute(
                sa.select(pending_creates).where(pending_creates.c.trigger_id == trigger_id)
            ).one()
        return PendingCreate.from_row(row), inserted is not None

    def record_created(
        self,
        pending: PendingCreate,
        *,
        job_id: str,
        job_created_at: int | None,
        status: str | None,
        now: float | None = None,
    ) -> Watch | None:
        """In one transaction: note the job on the pending row and watch it in the channel.
        None if another delivery of the same command recorded it first (it announces, not us)."""
        now = self._time() if now is None else now
        with self._tx() as conn:
            claimed = conn.execute(
                pending_creates.update()
                .where(
                    pending_creates.c.trigger_id == pending.trigger_id,
                    pending_creates.c.job_id.is_(None),
                    # Even a create given up on is tracked if its job turns up after all.
                    pending_creates.c.state.in_(("pending", "failed", "unconfirmed", "abandoned")),
                )
                .values(state="created", job_id=job_id, updated_at=now)
            ).rowcount
            if claimed != 1:
                return None
            watch, _ = self._add_watch(
                conn,
                job_id=job_id,
                team_id=pending.team_id,
                channel_id=pending.channel_id,
                user_id=pending.user_id,
                announcement_ts=None,
                job_created_at=job_created_at,
                status=status,
                origin="create",
                now=now,
            )
            conn.execute(
                pending_creates.update()
                .where(pending_creates.c.trigger_id == pending.trigger_id)
                .values(watch_id=watch.id)
            )
        return watch

    def mark_announced(
        self, trigger_id: str, watch_id: int, ts: str | None, now: float | None = None
    ) -> None:
        """The announcement is in Slack (ts None: it went to the user privately instead)."""
        now = self._time() if now is None else now
        with self._tx() as conn:
            if ts is not None:
                conn.execute(watches.update().where(watches.c.id == watch_id).values(announcement_ts=ts))
            conn.execute(
                pending_creates.update()
                .where(pending_creates.c.trigger_id == trigger_id)
                .values(state="announced", updated_at=now)
            )

    def close_create(self, trigger_id: str, state: str, note: str, now: float | None = None) -> None:
        """Move a pending create without a job to `failed` (OpenAI refused), `unconfirmed` (the
        answer was lost: still looked up) or `abandoned`."""
        now = self._time() if now is None else now
        with self._tx() as conn:
            conn.execute(
                pending_creates.update()
                .where(pending_creates.c.trigger_id == trigger_id, pending_creates.c.job_id.is_(None))
                .values(state=state, note=note[:200], updated_at=now)
            )

    def get_pending_create(self, trigger_id: str) -> PendingCreate | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(pending_creates).where(pending_creates.c.trigger_id == trigger_id)
            ).first()
        return PendingCreate.from_row(row) if row else None

    def pending_creates(self) -> list[PendingCreate]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(pending_creates).order_by(pending_creates.c.created_at))
            return [PendingCreate.from_row(r) for r in rows]

    def pending_to_reconcile(
        self, owner: str, *, stale_before: float, others_orphaned: bool, limit: int = 50
    ) -> list[PendingCreate]:
        """Open creates that may need taking over: this process's own (the caller skips those it is
        still carrying out), any whose row has not moved since `stale_before` (its replica died),
        and — when `others_orphaned` (SQLite: one process, so another owner is a dead
        predecessor) — any other owner's. Cheap when there are none: one indexed query."""
        orphaned = sa.or_(pending_creates.c.updated_at < stale_before, pending_creates.c.owner == owner)
        if others_orphaned:
            orphaned = sa.or_(
                orphaned, pending_creates.c.owner.is_(None), pending_creates.c.owner != owner
            )
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(pending_creates)
                .where(pending_creates.c.state.in_(OPEN_CREATE_STATES), orphaned)
                .order_by(pending_creates.c.created_at)
                .limit(limit)
            )
            return [PendingCreate.from_row(r) for r in rows]

    def unconfirmed_creates(self, *, started_before: float, limit: int = 50) -> list[PendingCreate]:
        """Creates whose OpenAI answer was lost (timeout, 5xx), started before `started_before`:
        any replica may look them up (the caller decides which lookups are due; `claim_pending`
        keeps two replicas from doing the same one). Oldest first, one indexed query."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(pending_creates)
                .where(
                    pending_creates.c.state == "unconfirmed", pending_creates.c.created_at < started_before
                )
                .order_by(pending_creates.c.created_at)
                .limit(limit)
            )
            return [PendingCreate.from_row(r) for r in rows]

    def claim_pending(self, pending: PendingCreate, owner: str, now: float | None = None) -> bool:
        """Take over an open create (compare-and-set, so two replicas never both handle it)."""
        now = self._time() if now is None else now
        with self._tx() as conn:
            return (
                conn.execute(
                    pending_creates.update()
                    .where(
                        pending_creates.c.trigger_id == pending.trigger_id,
                        pending_creates.c.state == pending.state,
                        pending_creates.c.updated_at == pending.updated_at,
                    )
                    .values(owner=owner, updated_at=now)
                ).rowcount
                == 1
            )

    def purge_closed_creates(self, before: float) -> int:
        with self._tx() as conn:
            return conn.execute(
                pending_creates.delete().where(
                    pending_creates.c.state.not_in((*OPEN_CREATE_STATES, "unconfirmed")),
                    pending_creates.c.updated_at < before,
                )
            ).rowcount

    # -- webhooks --------------------------------------------------------------------------------

    def remember_webhook(self, webhook_id: str, now: float | None = None) -> bool:
        """True the first time a webhook id is seen."""
        now = self._time() if now is None else now
        with self._tx() as conn:
            conn.execute(
                webhook_deliveries.delete().where(webhook_deliveries.c.received_at < now - 7 * 86400)
            )
            return (
                conn.execute(
                    self._insert(webhook_deliveries)
                    .values(webhook_id=webhook_id[:200], received_at=now)
                    .on_conflict_do_nothing(index_elements=["webhook_id"])
                    .returning(webhook_deliveries.c.webhook_id)
                ).scalar()
                is not None
            )

    # -- audit trail (bot/audit.py) --------------------------------------------------------------

    def add_audit(
        self,
        *,
        at: float,
        team_id: str,
        channel_id: str,
        user_id: str,
        action: str,
        job_id: str | None,
        result: str,
        reason: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        text = json.dumps(detail or {}, sort_keys=True, default=str)
        with self._tx() as conn:
            conn.execute(
                audit.insert().values(
                    at=at,
                    team_id=team_id[:64],
                    channel_id=channel_id[:64],
                    user_id=user_id[:64],
                    action=action[:32],
                    job_id=job_id[:80] if job_id else None,
                    result=result[:16],
                    reason=reason[:200] if reason else None,
                    # Too big to keep whole: kept valid JSON rather than cut mid-way.
                    detail=text if len(text) <= AUDIT_DETAIL_CHARS else json.dumps({"truncated": True}),
                )
            )

    def job_audit(self, job_id: str, *, limit: int = 20) -> list[AuditRow]:
        """A job's audit trail, newest first."""
        with self._tx() as conn:
            rows = conn.execute(
                audit.select()
                .where(audit.c.job_id == job_id)
                .order_by(audit.c.at.desc(), audit.c.id.desc())
                .limit(limit)
            ).all()
        return [AuditRow.from_row(r) for r in rows]

    def last_audited(self, job_id: str, action: str) -> AuditRow | None:
        """The newest successful `action` on the job (who cancelled or paused it, for its card)."""
        with self._tx() as conn:
            row = conn.execute(
                audit.select()
                .where(audit.c.job_id == job_id, audit.c.action == action, audit.c.result == "ok")
                .order_by(audit.c.at.desc(), audit.c.id.desc())
                .limit(1)
            ).first()
        return None if row is None else AuditRow.from_row(row)

    def purge_audit(self, before: float, *, limit: int = 5000) -> int:
        """Delete up to `limit` audit rows older than `before` (bounded: one short transaction
        however many are due; the next cycle takes the rest)."""
        with self._tx() as conn:
            oldest = sa.select(audit.c.id).where(audit.c.at < before).order_by(audit.c.id).limit(limit)
            return conn.execute(audit.delete().where(audit.c.id.in_(oldest))).rowcount
