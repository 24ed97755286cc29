"""The audit trail's pure parts and its store (SQLite and PostgreSQL): rows, newest first, the
card's "Cancelled by", bounded retention, and a database failure that never fails the action."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from bot.audit import PURGE_EVERY_SECONDS, Action, AuditEntry, Auditor, AuditRetention, Result, audit_line
from bot.card import changed_by_line, render_card
from bot.commands import HistoryCommand, ParseError, parse_command
from bot.models import FineTuningJob
from bot.render import HistoryEntry, render_history
from bot.store import SCHEMA_VERSION, Store, audit, schema_info
from tests.db import fresh_postgres_database
from tests.harness import all_text

DAY = 86400.0


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        store = Store.from_url(f"sqlite:///{tmp_path / 'bot.db'}")
        yield store
        store.close()
    else:
        with fresh_postgres_database() as url:
            store = Store.from_url(url)
            yield store
            store.close()


def row(store: Store, at: float, action: str = "cancel", job: str | None = "ftjob-a", **kw: Any) -> None:
    values: dict[str, Any] = {
        "team_id": "T1",
        "channel_id": "C1",
        "user_id": "U1",
        "result": "ok",
        **kw,
    }
    store.add_audit(at=at, action=action, job_id=job, **values)


# -- store ------------------------------------------------------------------------------------------


def test_a_jobs_trail_is_newest_first_and_bounded(store: Store) -> None:
    row(store, 100, "create", detail={"model": "gpt-4o-mini"})
    row(store, 200, "pause", user_id="U2", result="refused", reason="not allowed")
    row(store, 300, "cancel")
    row(store, 400, "cancel", job="ftjob-other")
    trail = store.job_audit("ftjob-a")
    assert [(r.action, r.user_id, r.result, r.reason) for r in trail] == [
        ("cancel", "U1", "ok", None),
        ("pause", "U2", "refused", "not allowed"),
        ("create", "U1", "ok", None),
    ]
    assert trail[-1].detail == {"model": "gpt-4o-mini"}
    assert [r.action for r in store.job_audit("ftjob-a", limit=2)] == ["cancel", "pause"]


def test_last_audited_is_the_newest_successful_one(store: Store) -> None:
    row(store, 100, "cancel", user_id="U1")
    row(store, 200, "cancel", user_id="U2")
    row(store, 300, "cancel", user_id="U3", result="refused", reason="not allowed")
    found = store.last_audited("ftjob-a", "cancel")
    assert found is not None and (found.user_id, found.at) == ("U2", 200)
    assert store.last_audited("ftjob-a", "pause") is None


def test_a_big_detail_is_kept_as_valid_json(store: Store) -> None:
    row(store, 100, detail={"x": "y" * 5000})
    [found] = store.job_audit("ftjob-a")
    assert found.detail == {"truncated": True}


def test_purge_deletes_only_old_rows_and_at_most_limit(store: Store) -> None:
    for at in range(10):
        row(store, float(at))
    row(store, 1000.0)
    assert store.purge_audit(5.0, limit=3) == 3  # bounded: the next purge takes the rest
    assert store.purge_audit(5.0, limit=3) == 2
    assert store.purge_audit(5.0, limit=3) == 0
    assert sorted(r.at for r in store.job_audit("ftjob-a", limit=100)) == [5, 6, 7, 8, 9, 1000]


def test_schema_5_gains_the_audit_table(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    store = Store.from_url(url)
    with store.engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE finetune_audit"))
        conn.execute(schema_info.update().values(version=5))
    store.close()
    store = Store.from_url(url)  # the upgrade: create_all adds the table, the version moves on
    row(store, 1.0)
    assert len(store.job_audit("ftjob-a")) == 1
    with store.engine.connect() as conn:
        assert conn.execute(sa.select(schema_info.c.version)).scalar() == SCHEMA_VERSION
    store.close()


# -- Auditor and retention ----------------------------------------------------------------------------


class BrokenStore:
    def add_audit(self, **_: Any) -> None:
        raise sa.exc.OperationalError("INSERT", {}, Exception("database is down"))

    def purge_audit(self, before: float, *, limit: int) -> int:
        raise sa.exc.OperationalError("DELETE", {}, Exception("database is down"))

    def last_audited(self, job_id: str, action: str) -> None:
        raise sa.exc.OperationalError("SELECT", {}, Exception("database is down"))


ENTRY = AuditEntry("T1", "C1", "U1", Action.CANCEL, "ftjob-abc", Result.REFUSED, "not allowed")


def test_the_audit_line() -> None:
    assert audit_line(ENTRY) == "audit: <@U1> cancel ftjob-abc in C1: refused (not allowed)"
    ok = AuditEntry("T1", "C1", "U1", Action.CREATE, None, Result.OK)
    assert audit_line(ok) == "audit: <@U1> create in C1: ok"


def test_a_database_failure_is_logged_and_never_raised(caplog: pytest.LogCaptureFixture) -> None:
    auditor = Auditor(BrokenStore())  # type: ignore[arg-type]
    with caplog.at_level(logging.INFO, logger="bot.audit"):
        asyncio.run(auditor.record(ENTRY))  # no exception: the action goes on
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0] == audit_line(ENTRY)
    assert "could not write the audit row" in messages[1] and "OperationalError" in messages[1]


def test_the_auditor_writes_the_row(store: Store) -> None:
    asyncio.run(Auditor(store, clock=lambda: 1234.5).record(ENTRY))
    [found] = store.job_audit("ftjob-abc")
    assert (found.at, found.action, found.result) == (1234.5, "cancel", "refused")
    assert found.reason == "not allowed"


def test_a_conclusion_is_recorded_unless_the_job_already_has_its_ok_row(store: Store) -> None:
    auditor = Auditor(store, clock=lambda: 1234.5)
    found = AuditEntry("T1", "C1", "U1", Action.CREATE, "ftjob-abc", Result.OK, "confirmed later")
    asyncio.run(auditor.record_unless_done(found))
    asyncio.run(auditor.record_unless_done(found))  # the reconciler again, or after the runner's row
    assert [(r.action, r.result, r.reason) for r in store.job_audit("ftjob-abc")] == [
        ("create", "ok", "confirmed later")
    ]
    # A failure names no job: nothing to look up, always recorded.
    none = AuditEntry("T1", "C1", "U1", Action.CREATE, None, Result.FAILED, "no job was started")
    asyncio.run(auditor.record_unless_done(none))
    asyncio.run(auditor.record_unless_done(none))
    with store.engine.connect() as conn:
        failed = conn.execute(sa.select(sa.func.count()).select_from(audit).where(audit.c.job_id.is_(None)))
        assert failed.scalar() == 2


def test_a_conclusion_whose_trail_cannot_be_read_is_recorded_anyway(caplog: pytest.LogCaptureFixture) -> None:
    found = AuditEntry("T1", "C1", "U1", Action.CREATE, "ftjob-abc", Result.OK, "confirmed later")
    with caplog.at_level(logging.INFO, logger="bot.audit"):
        asyncio.run(Auditor(BrokenStore()).record_unless_done(found))  # type: ignore[arg-type]
    messages = [r.getMessage() for r in caplog.records]
    assert "could not read the audit trail of ftjob-abc: OperationalError" in messages[0]
    assert messages[1] == audit_line(found)  # then it tried to write it


def test_retention_purges_at_most_hourly(store: Store) -> None:
    now = [100 * DAY]
    retention = AuditRetention(store, days=90, clock=lambda: now[0], batch=2)
    for at in (1.0, 2.0, 3.0, 99 * DAY):
        row(store, at)
    assert asyncio.run(retention.maybe_purge()) == 2
    now[0] += PURGE_EVERY_SECONDS - 1
    assert asyncio.run(retention.maybe_purge()) == 0  # not due yet, though one old row is left
    now[0] += 1
    assert asyncio.run(retention.maybe_purge()) == 1
    assert [r.at for r in store.job_audit("ftjob-a")] == [99 * DAY]


def test_retention_survives_a_database_failure() -> None:
    retention = AuditRetention(BrokenStore(), days=90)  # type: ignore[arg-type]
    assert asyncio.run(retention.maybe_purge()) == 0


# -- rendering ----------------------------------------------------------------------------------------


def job(status: str) -> FineTuningJob:
    return FineTuningJob.from_api(
        {"id": "ftjob-abc", "status": status, "model": "m", "training_file": "file-1", "created_at": 1}
    )


def test_the_card_says_who_cancelled_and_when() -> None:
    card = render_card(job("cancelled"), "U1", 2000, changed_by=("U0B0B", 1_765_000_000, "cancel"))
    text = all_text({"blocks": card.blocks})
    assert "Cancelled by <@U0B0B> <!date^1765000000^{time}|" in text


def test_the_card_says_who_paused_only_while_paused() -> None:
    paused_by = ("U0B0B", 1_765_000_000, "pause")
    assert changed_by_line("paused", paused_by) is not None
    assert changed_by_line("running", paused_by) is None  # resumed since
    assert changed_by_line("cancelled", paused_by) is None
    running = render_card(job("running"), "U1", 2000, changed_by=paused_by)
    assert "Paused by" not in all_text({"b": running.blocks})


def test_a_forged_user_id_is_escaped_on_the_card() -> None:
    line = changed_by_line("cancelled", ("<!channel>", 1, "cancel"))
    assert line is not None and "<!channel>" not in line and "&lt;!channel&gt;" in line


def test_history_parses() -> None:
    assert parse_command("history ftjob-abc123", default_model="m") == HistoryCommand("ftjob-abc123")
    assert parse_command("audit ftjob-abc123", default_model="m") == HistoryCommand("ftjob-abc123")
    assert isinstance(parse_command("history", default_model="m"), ParseError)
    assert isinstance(parse_command("history nope", default_model="m"), ParseError)


def test_history_renders_escaped_newest_first() -> None:
    entries = [
        HistoryEntry(300, "U0B0B", "C0DEV", "cancel", "ok"),
        HistoryEntry(200, "<!here>", "not-a-channel", "pause", "refused", "bad state: <b>"),
    ]
    reply = render_history("ftjob-abc", entries, limit=20)
    text = all_text({"b": reply.blocks})
    assert text.index("<@U0B0B>") < text.index("pause")
    assert "<!here>" not in text and "&lt;!here&gt;" in text
    assert "bad state: &lt;b&gt;" in text
    assert "<#C0DEV>" in text and "not-a-channel" not in text


def test_an_empty_history() -> None:
    assert "No recorded actions" in render_history("ftjob-abc", [], limit=20).text
