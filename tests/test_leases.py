"""Leases on the database's clock, handed over on shutdown; InFlight's reservations and farewells."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from bot.inflight import InFlight
from bot.store import Store, Watch, watches
from tests.db import fresh_postgres_database


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        s = Store.from_url(f"sqlite:///{tmp_path / 'bot.db'}")
        yield s
        s.close()
    else:
        with fresh_postgres_database() as url:
            s = Store.from_url(url)
            yield s
            s.close()


def add_watches(store: Store, count: int) -> None:
    for i in range(count):
        store.add_watch(
            job_id=f"ftjob-{i}",
            team_id="T1",
            channel_id="C1",
            user_id="U1",
            announcement_ts="1.0",
            job_created_at=100,
            status="running",
        )


def lease_expiries(store: Store) -> list[float]:
    with store.engine.connect() as conn:
        return [r[0] for r in conn.execute(sa.select(watches.c.lease_expires_at)) if r[0] is not None]


def test_leases_are_measured_on_the_database_clock(store: Store) -> None:
    add_watches(store, 3)
    with store.engine.connect() as conn:
        before = store._db_now(conn)
    assert len(store.claim_watches("r1", ttl=60, live_replicas=1)) == 3
    with store.engine.connect() as conn:
        after = store._db_now(conn)
    assert all(before + 60 <= expiry <= after + 60 for expiry in lease_expiries(store))
    # A second replica reading the same clock sees them taken, whatever its host's clock says.
    assert store.claim_watches("r2", ttl=60, live_replicas=2) == []


def test_retiring_hands_the_watches_over_at_once(store: Store) -> None:
    add_watches(store, 10)
    store.heartbeat("r1", ttl=60)
    assert store.heartbeat("r2", ttl=60) == 2
    assert len(store.claim_watches("r1", ttl=60, live_replicas=2)) == 5
    assert len(store.claim_watches("r2", ttl=60, live_replicas=2)) == 5
    assert store.retire("r1") == 5
    # r1 is no longer counted, and its watches are free now, not when its leases would expire.
    assert store.heartbeat("r2", ttl=60) == 1
    assert len(store.claim_watches("r2", ttl=60, live_replicas=1)) == 10


def test_renewing_extends_only_this_replicas_live_leases(store: Store) -> None:
    add_watches(store, 4)
    store.claim_watches("r1", ttl=5, live_replicas=2)
    store.claim_watches("r2", ttl=5, live_replicas=2)
    assert store.renew_leases("r1", ttl=600) == 2
    with store.engine.connect() as conn:
        rows = conn.execute(sa.select(watches.c.lease_owner, watches.c.lease_expires_at)).all()
    long_lived = {owner for owner, expiry in rows if expiry > time.time() + 100}
    assert long_lived == {"r1"} and {owner for owner, _ in rows} == {"r1", "r2"}


def test_unsent_notifications_are_released_on_shutdown(store: Store) -> None:
    add_watches(store, 1)
    watch = store.get_watch("ftjob-0", "C1")
    assert watch is not None
    store.finish_watch(watch, "succeeded", {"id": "ftjob-0", "status": "succeeded"})
    assert len(store.claim_outbox("r1", ttl=60)) == 2  # the outcome and its report
    assert store.claim_outbox("r2", ttl=60) == []
    assert store.release_outbox("r1") == 2
    assert len(store.claim_outbox("r2", ttl=60)) == 2


async def test_a_reserved_reply_holds_the_drain_until_its_task_ends() -> None:
    inflight = InFlight()
    ticket = inflight.reserve()  # acknowledged; the task that replies has not started yet
    assert not await inflight.drain(timeout=0.05)
    release = asyncio.Event()

    async def reply() -> None:
        async with inflight.track(ticket):
            await release.wait()

    task = asyncio.create_task(reply())
    await asyncio.sleep(0)
    assert inflight.count == 1  # the ticket was consumed, not counted twice
    release.set()
    await task
    assert await inflight.drain(timeout=1)


async def test_abandon_cancels_and_says_farewell_only_to_unfinished_work() -> None:
    inflight = InFlight()
    inflight.close()
    assert inflight.closing and inflight.closed_at is not None
    farewells: list[str] = []

    async def work(name: str, seconds: float) -> None:
        async def farewell() -> None:
            farewells.append(name)

        async with inflight.track(farewell=farewell):
            await asyncio.sleep(seconds)

    quick = asyncio.create_task(work("quick", 0))
    stuck = asyncio.create_task(work("stuck", 3600))
    await quick
    assert not await inflight.drain(timeout=0.05)
    assert await inflight.abandon(timeout=2) == 1
    assert stuck.cancelled() and farewells == ["stuck"]
    assert await inflight.drain(timeout=0.1)


async def test_keep_alive_between_reconciliation_passes_keeps_the_replica_and_its_leases(
    store: Store,
) -> None:
    from bot.poller import Poller

    add_watches(store, 2)
    store.claim_watches("r1", ttl=5, live_replicas=1)
    # keep_alive touches neither OpenAI nor Slack: the poller needs no clients for it.
    poller = Poller(store, None, None, owner="r1", lease_ttl=600)  # type: ignore[arg-type]
    await poller.keep_alive()
    assert store.heartbeat("r2", ttl=60) == 2  # r1 counts as alive
    assert all(expiry > time.time() + 100 for expiry in lease_expiries(store))


def test_a_claim_reads_whole_watches_and_renews_kept_and_claimed_leases(store: Store) -> None:
    add_watches(store, 3)
    now = 1_000.0
    first = store.claim_watches("r1", now=now, ttl=60, live_replicas=1)
    for job_id in ("ftjob-3", "ftjob-4"):  # two more, free: the next claim keeps and claims
        store.add_watch(
            job_id=job_id,
            team_id="T1",
            channel_id="C1",
            user_id="U1",
            announcement_ts=None,
            job_created_at=200,
            status="queued",
        )
    store.end_watch(first[1].id, "gone")  # an ended watch is neither returned nor renewed
    later = store.claim_watches("r1", now=now + 30, ttl=60, live_replicas=1)
    # Built positionally from the selected columns: every field as the row has it, in id order.
    with store.engine.connect() as conn:
        rows = conn.execute(sa.select(watches).where(watches.c.ended_at.is_(None)).order_by(watches.c.id))
        expected = [Watch.from_row(r) for r in rows]
    assert later == expected
    assert [w.id for w in later] == sorted(w.id for w in later)
    assert [w.job_id for w in later] == ["ftjob-0", "ftjob-2", "ftjob-3", "ftjob-4"]
    with store.engine.connect() as conn:
        leases = {
            r.id: (r.lease_owner, r.lease_expires_at)
            for r in conn.execute(sa.select(watches).where(watches.c.ended_at.is_(None)))
        }
    assert all(leases[w.id] == ("r1", now + 90) for w in later)


def test_a_claim_over_the_fair_share_returns_and_renews_only_what_it_keeps(store: Store) -> None:
    add_watches(store, 6)
    now = 1_000.0
    assert len(store.claim_watches("r1", now=now, ttl=60, live_replicas=1)) == 6
    kept = store.claim_watches("r1", now=now + 10, ttl=60, live_replicas=2)
    assert [w.job_id for w in kept] == [f"ftjob-{i}" for i in range(3)]
    with store.engine.connect() as conn:
        leases = [
            tuple(r)
            for r in conn.execute(
                sa.select(watches.c.job_id, watches.c.lease_owner, watches.c.lease_expires_at).order_by(
                    watches.c.id
                )
            )
        ]
    assert leases[:3] == [(f"ftjob-{i}", "r1", now + 70) for i in range(3)]
    assert leases[3:] == [(f"ftjob-{i}", None, None) for i in range(3, 6)]


def test_the_poller_looks_once_more_at_what_it_releases(store: Store) -> None:
    """With include_released (the poller's claim), the excess is released and not renewed, but
    still returned: the cycle looks at those jobs once more, so a job that ended meanwhile is not
    left for a replica whose share has no room yet."""
    add_watches(store, 6)
    now = 1_000.0
    store.claim_watches("r1", now=now, ttl=60, live_replicas=1)
    looked_at = store.claim_watches("r1", now=now + 10, ttl=60, live_replicas=2, include_released=True)
    assert [w.job_id for w in looked_at] == [f"ftjob-{i}" for i in range(6)]
    with store.engine.connect() as conn:
        rows = conn.execute(sa.select(watches.c.lease_owner).order_by(watches.c.id))
        owners = [r.lease_owner for r in rows]
    assert owners == ["r1"] * 3 + [None] * 3
    # The released ones are free for the other replica at once.
    taken = store.claim_watches("r2", now=now + 10, ttl=60, live_replicas=2)
    assert [w.job_id for w in taken] == [f"ftjob-{i}" for i in range(3, 6)]
