"""The training uploads' conditional steps (bot/training_store.py) on the Store's clock: a fake
clock decides when an upload is stale, and who may settle a create that outlived its click."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from bot.store import SCHEMA_VERSION, Store, schema_info
from bot.training_store import STALE_AFTER_SECONDS, TrainingUpload, TrainingUploads
from tests.fakes.clock import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(start=1_800_000_000.0)


@pytest.fixture
def uploads(tmp_path: Path, clock: FakeClock) -> Iterator[TrainingUploads]:
    store = Store.from_url(f"sqlite:///{tmp_path / 'uploads.db'}", clock=clock)
    yield TrainingUploads(store)
    store.close()


def checked(uploads: TrainingUploads) -> TrainingUpload:
    row = uploads.begin(
        team_id="T1",
        channel_id="C1",
        user_id="U1",
        slack_file_id="F1",
        filename="train.jsonl",
        validation_slack_file_id=None,
        params={"model": "gpt-4o-mini"},
    )
    uploads.checked(row.id, ok=True, sha256="0" * 64, validation_sha256=None, summary={"examples": 20})
    return row


def state(uploads: TrainingUploads, upload_id: str) -> tuple[str, str | None, str | None]:
    row = uploads.get(upload_id)
    assert row is not None
    return row.state, row.owner, row.job_id


def test_rows_are_stamped_and_taken_over_on_the_stores_clock(
    uploads: TrainingUploads, clock: FakeClock
) -> None:
    row = checked(uploads)
    assert row.created_at == row.updated_at == clock.time()
    assert uploads.claim_upload(row.id, "a")
    assert not uploads.claim_upload(row.id, "b")  # a is uploading it
    clock.advance(STALE_AFTER_SECONDS - 1)
    assert not uploads.claim_upload(row.id, "b")
    clock.advance(2)  # a has not moved it for STALE_AFTER_SECONDS: it died
    assert uploads.claim_upload(row.id, "b")
    assert state(uploads, row.id) == ("uploading", "b", None)


def creating(uploads: TrainingUploads, trigger: str = "t1", owner: str = "a") -> str:
    row = checked(uploads)
    uploads.uploaded(row.id, "file-1", None)
    assert uploads.creating(row.id, trigger, owner)
    return row.id


def test_one_click_creates_at_a_time(uploads: TrainingUploads) -> None:
    upload_id = creating(uploads, "t1", "a")
    assert not uploads.creating(upload_id, "t2", "b")  # only from `uploaded`
    assert state(uploads, upload_id) == ("creating", "a", None)


def test_settling_is_claimed_by_one_until_its_claimer_is_stale(
    uploads: TrainingUploads, clock: FakeClock
) -> None:
    upload_id = creating(uploads, "t1", "a")
    now = clock.time()
    claim = uploads.claim_settling
    assert not claim(upload_id, "other-create", "a", stale_before=now - 60, others_orphaned=False)
    assert not claim(upload_id, "t1", "b", stale_before=now - 60, others_orphaned=False)  # a is alive
    assert claim(upload_id, "t1", "b", stale_before=now - 60, others_orphaned=True)  # SQLite: a is gone
    assert claim(upload_id, "t1", "b", stale_before=now - 60, others_orphaned=False)  # its own
    assert not claim(upload_id, "t1", "a", stale_before=now - 60, others_orphaned=False)
    clock.advance(61)
    assert claim(upload_id, "t1", "a", stale_before=clock.time() - 60, others_orphaned=False)  # b died


def test_the_last_step_is_taken_once_and_only_for_its_own_create(uploads: TrainingUploads) -> None:
    started = creating(uploads, "t1")
    assert not uploads.started(started, "t0", "ftjob-old")
    assert uploads.started(started, "t1", "ftjob-1")
    assert not uploads.started(started, "t1", "ftjob-1")
    assert not uploads.no_job_started(started, "t1", "nothing")
    assert state(uploads, started) == ("started", None, "ftjob-1")

    released = creating(uploads, "t2")
    assert uploads.no_job_started(released, "t2", "OpenAI refused")
    assert not uploads.no_job_started(released, "t2", "OpenAI refused")
    assert state(uploads, released) == ("uploaded", None, None)
    assert uploads.creating(released, "t3", "b")  # Start again: a new create
    assert not uploads.started(released, "t2", "ftjob-2")  # the old create's news is stale


def test_only_recent_creates_are_listed_for_settling(uploads: TrainingUploads, clock: FakeClock) -> None:
    old = creating(uploads, "t1")
    clock.advance(100)
    recent = creating(uploads, "t2")
    checked(uploads)  # not creating
    assert [r.id for r in uploads.creating_since(clock.time() - 1_000)] == [old, recent]
    assert [r.id for r in uploads.creating_since(clock.time() - 50)] == [recent]


def test_the_settling_look_uses_the_state_index(uploads: TrainingUploads, clock: FakeClock) -> None:
    """`creating_since` runs every poll cycle over a table that keeps every upload: SQLite's plan
    must find the rows under way by the index, not by reading the whole table."""
    for trigger in ("t1", "t2"):
        creating(uploads, trigger)
    for _ in range(20):
        checked(uploads)
    engine = uploads.store.engine
    executed: list[tuple[str, Any]] = []

    def record(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        executed.append((statement, parameters))

    # The plan of the very statement `creating_since` sends, not of a copy of its query.
    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        assert len(uploads.creating_since(0)) == 2
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)
    [(statement, parameters)] = [(s, p) for s, p in executed if "finetune_training_uploads" in s]
    with engine.connect() as conn:
        rows = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters)
        plan = " ".join(str(r[-1]) for r in rows)
    assert "ix_finetune_training_uploads_state" in plan, plan


def test_a_version_6_database_gains_the_index_in_place(database_url: str) -> None:
    store = Store.from_url(database_url)
    uploads = TrainingUploads(store)
    row = checked(uploads)
    with store.engine.begin() as conn:  # as version 6 left it: the table, not the index
        conn.execute(sa.text("DROP INDEX ix_finetune_training_uploads_state"))
        conn.execute(schema_info.update().values(version=6))
    store.close()

    store = Store.from_url(database_url)  # the upgrade
    try:
        with store.engine.connect() as conn:
            assert conn.execute(sa.select(schema_info.c.version)).scalar() == SCHEMA_VERSION == 7
            indexes = {i["name"] for i in sa.inspect(conn).get_indexes("finetune_training_uploads")}
        assert "ix_finetune_training_uploads_state" in indexes
        kept = TrainingUploads(store).get(row.id)  # the rows are kept
        assert kept is not None and kept.state == "ready"
        Store.from_url(database_url).close()  # and a second start finds it done
    finally:
        store.close()
