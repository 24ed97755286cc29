"""A create can never leave a paid job nobody tracks, nor start two jobs.

The bot writes every create down (keyed by Slack's trigger_id, also the Idempotency-Key) before it
calls OpenAI. Here a real `python -m bot` is SIGKILLed between OpenAI creating the job and writing
it down, and its database (SQLite on an ext4 filesystem) turns read-only under it while OpenAI
creates the job, for good: the user still gets the job id, and the process still exits cleanly.

The rest is shown in process on a fake clock, in tests/test_inprocess_create.py, on the same really
failing databases defined here (SQLite on a tmpfs filled to the last byte or on an ext4 that turns
read-only, PostgreSQL switched to read-only transactions or given a tablespace on a full tmpfs):
each of them failing before and during a create and coming back; the very same signed command
delivered three times; and the next process taking over a create stopped half-way, on SQLite and on
PostgreSQL (where it waits until the row is stale).
"""

from __future__ import annotations

import contextlib
import errno
import json
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from bot.store import SCHEMA_VERSION, Store, metadata, pending_creates, schema_info
from tests.db import PG_ADMIN_URL, fresh_postgres_database, require_postgres
from tests.fakes import FakeOpenAI, FakeSlack
from tests.fakes.openai import RecordedRequest
from tests.fakes.slack import RecordedMessage
from tests.harness import Harness, all_text, query_db, start_bot
from tests.test_e2e_exactly_once import wait_killed
from tests.test_e2e_notifications import outcomes

CHANNEL = "C123"


def announcements(slack: FakeSlack, job_id: str) -> list[RecordedMessage]:
    """Top-level messages in the channel that announce `job_id` (not its outcome)."""
    return [
        m
        for m in slack.messages_in(CHANNEL)
        if m.thread_ts is None
        and job_id in all_text({"t": m.text, "b": m.blocks})
        and (m.params.get("metadata") or {}).get("event_type") != "finetune_outcome"
    ]


def create_audits(db_url: str, job_id: str) -> list[tuple[str, str | None]]:
    """The job's create rows in the audit trail: result, and who concluded it (None: the runner)."""
    sql = "SELECT result, detail FROM finetune_audit WHERE job_id = :j AND action = 'create' ORDER BY id"
    rows = query_db(db_url, sql, j=job_id)
    return [(r.result, json.loads(r.detail or "{}").get("by")) for r in rows]


def creates(openai: FakeOpenAI) -> list[RecordedRequest]:
    return openai.requests_to(r"/fine_tuning/jobs", "POST")


# ------------------------------------------------------------------------------ idempotency


def test_fake_openai_honours_idempotency_key(fake_openai: FakeOpenAI) -> None:
    url = f"{fake_openai.base_url}/fine_tuning/jobs"
    auth = {"Authorization": f"Bearer {fake_openai.api_key}", "Idempotency-Key": "k-1"}
    body = {"model": "gpt-4o-mini-2024-07-18", "training_file": "file-abc123"}
    first = httpx.post(url, json=body, headers=auth).json()
    again = httpx.post(url, json=body, headers=auth).json()
    other = httpx.post(url, json={**body, "suffix": "x"}, headers=auth)
    fresh = httpx.post(url, json=body, headers={**auth, "Idempotency-Key": "k-2"}).json()
    assert again["id"] == first["id"] and fresh["id"] != first["id"]
    assert other.status_code == 400
    assert len(fake_openai.jobs) == 2


# --------------------------------------------------------------------------- crash half-way


def test_killed_after_openai_created_the_job_is_found_and_announced_once(
    fake_openai: FakeOpenAI, fake_slack: FakeSlack, tmp_path: Path
) -> None:
    bot = start_bot(
        fake_openai, fake_slack, tmp_path, POLL_INTERVAL_SECONDS="1", FINETUNE_CRASH_AT="after_openai_create"
    )
    h = Harness(bot, fake_openai, fake_slack)
    h.command("create file-abc123", channel_id=CHANNEL)
    wait_killed(bot)
    [job_id] = fake_openai.jobs
    assert fake_slack.messages == []  # died before writing it down or announcing it

    h.bot = start_bot(fake_openai, fake_slack, tmp_path, POLL_INTERVAL_SECONDS="1")
    try:
        fake_slack.wait_for(lambda s: announcements(s, job_id), timeout=15)
        [request] = fake_openai.requests_to(r"/fine_tuning/jobs", "GET")[:1]
        assert request.query.get("metadata[slack_trigger]")  # found by its metadata
        # Killed before its audit row: the reconciler's row records the create, once.
        assert create_audits(h.db_url, job_id) == [("ok", "reconciler")]
        # It is watched: its outcome is threaded under that one announcement.
        fake_openai.set_status(job_id, "succeeded")
        fake_slack.wait_for(lambda s: outcomes(h, job_id), timeout=15)
        [announcement] = announcements(fake_slack, job_id)
        [outcome] = outcomes(h, job_id)
        assert outcome.thread_ts == announcement.ts
    finally:
        assert h.bot.stop() == 0, h.bot.logs


# ------------------------------------------------------------------------- database failures


class SqliteOnTmpfs:
    """A SQLite database on its own small tmpfs, which can be made read-only or full."""

    def __init__(self, root: Path) -> None:
        self.dir = root / "dbfs"
        self.dir.mkdir(mode=0o755)
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(self.dir)], capture_output=True, text=True
        )
        if mounted.returncode != 0:
            reason = f"cannot mount a tmpfs here ({mounted.stderr.strip()}); needs root"
            print(f"\nskipping: {reason}")
            pytest.skip(reason)
        self.url = f"sqlite:///{self.dir}/bot.db"
        self.filler = self.dir / "filler"

    def break_(self, how: str) -> None:
        assert how == "full"
        # Unbuffered: a buffered writer keeps the part of its last write that did not fit and
        # fails again on close (ENOSPC from `with`), depending on how the free space happens to
        # align with the writes.
        with self.filler.open("wb", buffering=0) as out:
            try:
                while True:
                    out.write(b"\0" * 65536)
            except OSError as error:
                assert error.errno == errno.ENOSPC

    def repair(self, how: str) -> None:
        self.filler.unlink()

    def close(self) -> None:
        subprocess.run(["umount", "-l", str(self.dir)], check=False)


class SqliteOnExt4:
    """A SQLite database on a small ext4 filesystem (a loop device) mounted `errors=remount-ro`,
    whose filesystem turns read-only under the running bot the way ext4 does after an error:
    writes through already-open files fail too, which a remount or a chmod could not do (the bot
    holds the file open; root ignores modes). There is no way back short of a new mount, so the
    test's "database comes back" step does not apply."""

    repairable = False

    def __init__(self, root: Path) -> None:
        self.dir = root / "dbext4"
        self.dir.mkdir(mode=0o755)
        image = root / "dbext4.img"
        with image.open("wb") as out:
            out.truncate(16 * 1024 * 1024)
        made = subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], capture_output=True, text=True)
        mounted = made.returncode == 0 and (
            subprocess.run(
                ["mount", "-o", "loop,errors=remount-ro", str(image), str(self.dir)],
                capture_output=True,
                text=True,
            ).returncode
            == 0
        )
        device = subprocess.run(
            ["findmnt", "-n", "-o", "SOURCE", str(self.dir)], capture_output=True, text=True
        ).stdout.strip()
        self.trigger = Path("/sys/fs/ext4") / Path(device).name / "trigger_fs_error"
        if not mounted or not self.trigger.exists():
            self.close()
            reason = "cannot mount an ext4 loop device with an error trigger here; needs root"
            print(f"\nskipping: {reason}")
            pytest.skip(reason)
        self.url = f"sqlite:///{self.dir}/bot.db"

    def break_(self, how: str) -> None:
        assert how == "read-only"
        self.trigger.write_text("1")
        with pytest.raises(OSError) as refused:  # the filesystem really is read-only now
            (self.dir / "probe").touch()
        assert refused.value.errno == errno.EROFS

    def repair(self, how: str) -> None:  # pragma: no cover - not repairable in place
        raise AssertionError("an emergency read-only ext4 cannot be made writable in place")

    def close(self) -> None:
        subprocess.run(["umount", "-l", str(self.dir)], check=False, capture_output=True)


class PostgresDatabase:
    """A fresh PostgreSQL database whose transactions can be made read-only, or whose own
    tablespace (on a small tmpfs) can be filled."""

    def __init__(self, root: Path, how: str) -> None:
        require_postgres()
        self.admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        self.name = f"finetune_test_{uuid.uuid4().hex[:10]}"
        self.space: str | None = None
        self.fs: SqliteOnTmpfs | None = None
        location = ""
        try:
            if how == "full":
                # The server must reach the directory: not under pytest's private (0700) tmp dirs.
                self.fs = SqliteOnTmpfs(Path(tempfile.mkdtemp(prefix="finetune-pgts-", dir="/tmp")))
                self.fs.dir.parent.chmod(0o755)
                subprocess.run(["mount", "-o", "remount,size=48m", str(self.fs.dir)], check=True)
                shutil.chown(self.fs.dir, "postgres", "postgres")
                self.space = f"ts_{self.name}"
                self._sql(f"CREATE TABLESPACE {self.space} LOCATION '{self.fs.dir}'")
                location = f" TABLESPACE {self.space}"
            self._sql(f'CREATE DATABASE "{self.name}"{location}')
        except BaseException:
            self.close()
            raise
        self.url = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql+psycopg://", "postgresql://")
        self.url += f"/{self.name}"

    def _sql(self, statement: str) -> None:
        with self.admin.connect() as conn:
            conn.execute(sa.text(statement))

    def _drop_connections(self) -> None:
        self._sql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            f"WHERE datname = '{self.name}' AND pid <> pg_backend_pid()"
        )

    def break_(self, how: str) -> None:
        if how == "read-only":
            # New sessions only write in read-only transactions; cut the existing ones.
            self._sql(f'ALTER DATABASE "{self.name}" SET default_transaction_read_only = on')
            self._drop_connections()
            return
        assert self.fs is not None
        filler = self.fs.dir / "filler"
        with filler.open("wb") as out, contextlib.suppress(OSError):
            while True:
                out.write(b"\0" * 65536)
                out.flush()

    def repair(self, how: str) -> None:
        if how == "read-only":
            self._sql(f'ALTER DATABASE "{self.name}" RESET default_transaction_read_only')
            self._drop_connections()
        else:
            assert self.fs is not None
            (self.fs.dir / "filler").unlink()

    def close(self) -> None:
        self._sql(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        if self.space:
            self._sql(f"DROP TABLESPACE IF EXISTS {self.space}")
        if self.fs is not None:
            self.fs.close()
            shutil.rmtree(self.fs.dir.parent, ignore_errors=True)
        self.admin.dispose()


@contextlib.contextmanager
def failing_database(
    kind: str, how: str, root: Path
) -> Iterator[SqliteOnTmpfs | SqliteOnExt4 | PostgresDatabase]:
    db: SqliteOnTmpfs | SqliteOnExt4 | PostgresDatabase
    if kind == "sqlite":
        db = SqliteOnExt4(root) if how == "read-only" else SqliteOnTmpfs(root)
    else:
        db = PostgresDatabase(root, how)
    try:
        yield db
    finally:
        db.close()


# SQLite's read-only case is its filesystem turning read-only under the bot (SqliteOnExt4): a remount
# fails (EBUSY) while the bot holds the file open, and root ignores file permissions.
CASES = [("sqlite", "full"), ("sqlite", "read-only"), ("postgresql", "read-only"), ("postgresql", "full")]


def test_database_turning_read_only_while_openai_creates_still_gives_the_job_id_and_a_clean_exit(
    fake_openai: FakeOpenAI, fake_slack: FakeSlack, tmp_path: Path
) -> None:
    # A real process, because what comes after the reply needs one: the scheduler's cycles and the
    # shutdown (which releases this replica's leases and notifications) meet a database that never
    # comes back, and the process must still exit 0. The other failures, and the way back once the
    # database is repaired, are in tests/test_inprocess_create.py.
    with failing_database("sqlite", "read-only", tmp_path) as db:
        bot = start_bot(fake_openai, fake_slack, tmp_path, DATABASE_URL=db.url, POLL_INTERVAL_SECONDS="1")
        h = Harness(bot, fake_openai, fake_slack)
        try:
            fake_openai.latency = 1.5  # the database fails while OpenAI is creating the job
            _, key = h.command("create file-abc123", channel_id=CHANNEL)
            fake_openai.wait_for(lambda f: f.requests_to(r"/fine_tuning/jobs", "POST"), timeout=10)
            db.break_("read-only")
            text = all_text(h.reply(key, timeout=20))
            fake_openai.latency = 0.0
            [job_id] = fake_openai.jobs
            assert job_id in text and "don't run `create` again" in text, text
            assert f"/finetune get {job_id}" in text
            assert fake_slack.messages_in(CHANNEL) == []
        finally:
            assert bot.stop() == 0, bot.logs


# --------------------------------------------------------------------------------- migration


def _version_1_database(url: str) -> None:
    """The schema as version 1 of the bot left it: everything but the pending creates."""
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.begin() as conn:
        tables = [t for t in metadata.sorted_tables if t is not pending_creates]
        metadata.create_all(conn, tables=tables)
        conn.execute(schema_info.insert().values(id=1, version=1))
    engine.dispose()


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_a_version_1_database_is_upgraded_in_place(tmp_path: Path, kind: str) -> None:
    with contextlib.ExitStack() as stack:
        if kind == "sqlite":
            url = f"sqlite:///{tmp_path}/v1.db"
        else:
            url = stack.enter_context(fresh_postgres_database())
        _version_1_database(url)
        store = Store.from_url(url)
        stack.callback(store.close)
        with store.engine.connect() as conn:
            assert conn.execute(sa.select(schema_info.c.version)).scalar() == SCHEMA_VERSION
            assert sa.inspect(conn).has_table("finetune_pending_creates")
        row, fresh = store.begin_create(
            trigger_id="t.1",
            team_id="T1",
            channel_id="C1",
            user_id="U1",
            response_url=None,
            params={"model": "m"},
            owner="me",
        )
        assert fresh and row.state == "pending"
        again = store.begin_create(
            trigger_id="t.1", team_id="T", channel_id="C", user_id="U", response_url=None, params={}, owner=""
        )
        assert again == (row, False)
