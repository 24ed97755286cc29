"""The store on both SQLite and PostgreSQL: watches, leases, and the outbox's exactly-once rules."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from bot.store import SCHEMA_VERSION, Store, outbox_key, report_key, schema_info
from tests.fakes.clock import FakeClock


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    store = Store.from_url(database_url)
    yield store
    store.close()


def add(store: Store, job: str, channel: str = "C1", **kwargs: object):
    defaults: dict[str, object] = {
        "team_id": "T1",
        "user_id": "U1",
        "announcement_ts": "1.0",
        "job_created_at": 100,
        "status": "queued",
    }
    return store.add_watch(job_id=job, channel_id=channel, **{**defaults, **kwargs})  # type: ignore[arg-type]


def test_schema_is_created_once_and_versioned(database_url: str) -> None:
    first = Store.from_url(database_url)
    add(first, "ftjob-a")
    first.close()
    second = Store.from_url(database_url)  # a restart: nothing lost, nothing recreated
    assert [w.job_id for w in second.channel_watches("C1")] == ["ftjob-a"]
    with second.engine.connect() as conn:
        assert conn.execute(sa.select(schema_info.c.version)).scalar() == SCHEMA_VERSION
    second.close()


def test_sqlite_uses_wal(tmp_path: Path) -> None:
    store = Store.from_url(f"sqlite:///{tmp_path / 'x.db'}")
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    store.close()


def test_watching_twice_keeps_one_watch_and_unwatched_can_be_revived(store: Store) -> None:
    watch, new = add(store, "ftjob-a")
    again, new_again = add(store, "ftjob-a", announcement_ts="2.0")
    assert new and not new_again and again.id == watch.id and again.announcement_ts == "1.0"
    other, other_new = add(store, "ftjob-a", channel="C2")
    assert other_new and other.id != watch.id
    assert store.end_watch(watch.id, "unwatched by U1")
    assert store.channel_watches("C1") == []
    revived, _ = add(store, "ftjob-a")
    assert revived.ended_at is None


def test_finishing_writes_one_outbox_row_and_ends_the_watch(store: Store) -> None:
    watch, _ = add(store, "ftjob-a")
    assert store.finish_watch(watch, "succeeded", {"id": "ftjob-a", "status": "succeeded"})
    assert not store.finish_watch(watch, "succeeded", {"id": "ftjob-a", "status": "succeeded"})
    # The outcome, and (its own row, in the same transaction) the completion report that follows it.
    [item, report] = store.outbox_items()
    assert item.key == outbox_key("ftjob-a", "C1", "succeeded") and item.payload["status"] == "succeeded"
    assert report.key == report_key("ftjob-a", "C1") and report.is_report and not item.is_report
    assert store.channel_watches("C1") == []


def test_a_report_follows_its_outcome_and_remembers_its_upload(store: Store) -> None:
    watch, _ = add(store, "ftjob-a")
    store.finish_watch(watch, "succeeded", {"id": "ftjob-a", "status": "succeeded"})
    # A process that makes no reports leaves them alone.
    [outcome] = store.claim_outbox("r1", ttl=60, include_reports=False)
    assert not outcome.is_report
    [report] = store.claim_outbox("r1", ttl=60)[1:]
    assert store.outcome_of(report.watch_id) == store.claim_outbox("r1", ttl=60)[0]
    assert not store.record_upload(report.id, "r2", "F1")  # not r2's lease
    assert store.record_upload(report.id, "r1", "F123")
    [_, taken] = store.claim_outbox("r1", ttl=60)
    assert taken.upload_file_id == "F123"


def test_recording_the_upload_renews_the_lease_for_the_share(database_url: str) -> None:
    """An upload slowed past its lease (429s) keeps the row once its file id is recorded: another
    replica cannot take the report over while it is being shared (it would upload a second file)."""
    clock = FakeClock(start=1_000_000.0)
    store = Store.from_url(database_url, clock=clock)
    try:
        watch, _ = add(store, "ftjob-a")
        store.finish_watch(watch, "succeeded", {"id": "ftjob-a", "status": "succeeded"})
        report = next(i for i in store.claim_outbox("r1", ttl=60) if i.is_report)
        assert store.record_attempt(report.id, "r1", "C1", "1.0", lease_ttl=60)
        clock.advance(90)  # the upload outlived the lease; r2 has not claimed the row yet
        assert store.record_upload(report.id, "r1", "F123", lease_ttl=60)
        assert [i for i in store.claim_outbox("r2", ttl=60) if i.is_report] == []
        clock.advance(61)  # a share that never finishes: the row moves on after all
        [taken] = [i for i in store.claim_outbox("r2", ttl=60) if i.is_report]
        assert taken.upload_file_id == "F123"  # and r2 looks for that file before uploading
    finally:
        store.close()


def test_outbox_rows_carry_when_they_were_owed(store: Store) -> None:
    # The Reporter ages a failing report by this (its give-up deadline and its backoff).
    watch, _ = add(store, "ftjob-a")
    store.finish_watch(watch, "succeeded", {"id": "ftjob-a", "status": "succeeded"}, now=1234.5)
    assert [i.created_at for i in store.outbox_items()] == [1234.5, 1234.5]
    assert [i.created_at for i in store.claim_outbox("r1", ttl=60)] == [1234.5, 1234.5]


def test_unwatched_and_vanished_jobs_owe_no_report(store: Store) -> None:
    watch, _ = add(store, "ftjob-a")
    store.finish_watch(watch, "missing", {"id": "ftjob-a"})
    assert [i.outcome for i in store.outbox_items()] == ["missing"]


def test_outbox_claims_are_exclusive_and_attempts_need_the_lease(store: Store) -> None:
    watch, _ = add(store, "ftjob-a")
    store.finish_watch(watch, "failed", {"id": "ftjob-a", "status": "failed"})
    now = time.time()
    [item] = store.claim_outbox("r1", now=now, ttl=60, include_reports=False)
    assert store.claim_outbox("r2", now=now, ttl=60, include_reports=False) == []  # leased by r1
    assert not store.record_attempt(item.id, "r2", "C1", "1.0")
    assert store.record_attempt(item.id, "r1", "C1", "1.0")
    # r1 dies; once its lease expires r2 gets the row, with the attempt recorded for checking.
    [taken] = store.claim_outbox("r2", now=now + 61, ttl=60, include_reports=False)
    assert taken.attempt_channel == "C1" and taken.attempt_started_at is not None and taken.attempts == 1
    store.mark_sent(taken.id, channel="C1", ts="9.9")
    assert store.claim_outbox("r1", now=now + 200, ttl=60, include_reports=False) == []


def test_deferred_rows_wait_their_turn(store: Store) -> None:
    watch, _ = add(store, "ftjob-a")
    store.finish_watch(watch, "failed", {"id": "ftjob-a"})
    [item] = store.claim_outbox("r1", now=time.time(), ttl=60, include_reports=False)
    store.defer(item.id, error="ratelimited", retry_in=30)
    assert store.claim_outbox("r1", now=time.time(), ttl=60, include_reports=False) == []
    assert len(store.claim_outbox("r1", now=time.time() + 31, ttl=60, include_reports=False)) == 1


def test_replicas_divide_the_watches(store: Store) -> None:
    for i in range(10):
        add(store, f"ftjob-{i}")
    now = time.time()
    store.heartbeat("r1", now, 60)
    first = store.claim_watches("r1", now=now, ttl=60, live_replicas=1)
    assert len(first) == 10
    live = store.heartbeat("r2", now, 60)
    assert live == 2
    assert store.claim_watches("r2", now=now, ttl=60, live_replicas=live) == []  # all leased
    kept = store.claim_watches("r1", now=now, ttl=60, live_replicas=live)  # r1 releases its excess
    taken = store.claim_watches("r2", now=now, ttl=60, live_replicas=live)
    assert len(kept) == 5 and len(taken) == 5
    assert {w.id for w in kept}.isdisjoint({w.id for w in taken})


def test_concurrent_claims_never_overlap(store: Store) -> None:
    for i in range(40):
        add(store, f"ftjob-{i}")
        store.finish_watch(store.get_watch(f"ftjob-{i}", "C1"), "succeeded", {"id": f"ftjob-{i}"})  # type: ignore[arg-type]
    claimed: dict[str, list[int]] = {}

    def claim(owner: str) -> None:
        got: list[int] = []
        for _ in range(10):
            for item in store.claim_outbox(owner, now=time.time(), ttl=60, limit=3):
                got.append(item.id)
                store.mark_sent(item.id, channel="C1", ts="1.0")
        claimed[owner] = got

    threads = [threading.Thread(target=claim, args=(f"r{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = [i for ids in claimed.values() for i in ids]
    assert len(every) == len(set(every)) == 80  # 40 outcomes and their 40 reports


def test_webhook_ids_are_remembered(store: Store) -> None:
    assert store.remember_webhook("wh_1")
    assert not store.remember_webhook("wh_1")
    assert store.remember_webhook("wh_2")
