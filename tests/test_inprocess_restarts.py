"""Restarts and deploys never neglect watches (issue 11, item 3), in process on a fake clock
(tests/inprocess.py).

A process restarted after a crash must not take its dead predecessor's heartbeat for a live replica
(it would claim only a "fair share" of the watches); a replica that shuts down hands its watches
over (store.retire), so the others take them at their next cycle instead of a lease period later.
Here "at the next cycle" is exact: the clock does not move, so a lease still held would hold.
What only real processes show (the cycle run at start-up, SIGKILL, a SIGTERM'd replica's shutdown
sequence) stays in tests/test_restart_watches.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from bot.store import watches
from tests.db import fresh_postgres_database
from tests.fakes import FakeOpenAI, FakeSlack
from tests.inprocess import WEBHOOK_SECRET, InProcessBot
from tests.test_inprocess_notifications import outcomes, start_job


@pytest.fixture
def pg_url() -> Iterator[str]:
    with fresh_postgres_database() as url:
        yield url


def leases(bot: InProcessBot) -> dict[str, str | None]:
    """Each active watch's job and the replica holding its lease now (None: free)."""
    now = bot.clock.time()
    with bot.store.engine.connect() as conn:
        rows = conn.execute(
            sa.select(watches.c.job_id, watches.c.lease_owner, watches.c.lease_expires_at).where(
                watches.c.ended_at.is_(None)
            )
        )
        return {
            r.job_id: r.lease_owner if r.lease_expires_at is not None and r.lease_expires_at >= now else None
            for r in rows
        }


@pytest.mark.parametrize(
    "env",
    [{}, {"OPENAI_WEBHOOK_SECRET": WEBHOOK_SECRET, "RECONCILE_INTERVAL_SECONDS": "300"}],
    ids=["polling", "webhooks"],
)
async def test_restart_after_a_crash_announces_every_job_that_finished_while_down(
    fake_openai: FakeOpenAI, fake_slack: FakeSlack, tmp_path: Path, env: dict[str, str]
) -> None:
    first = InProcessBot(fake_openai, fake_slack, tmp_path, owner="host:3000:101", **env)
    # One channel each, so Slack's per-channel pacing plays no part.
    jobs = [(await start_job(first, channel_id=f"C{i}00"))[0] for i in range(3)]
    await first.cycle()  # its heartbeat and leases are in the database
    assert set(leases(first).values()) == {"host:3000:101"}
    await first.kill()
    for job_id in jobs:
        fake_openai.set_status(job_id, "succeeded")
    # The new process (a new pid, so a new owner) on the same SQLite file, at once: its
    # predecessor's heartbeat is as fresh as can be, and still it takes every watch.
    second = first.replica("host:3000:202")
    try:
        await second.cycle()
        assert {j: len(outcomes(second, j)) for j in jobs} == {j: 1 for j in jobs}
        await second.cycle(2)  # more cycles: still one each
        assert {j: len(outcomes(second, j)) for j in jobs} == {j: 1 for j in jobs}
    finally:
        await second.stop()


async def test_rolling_deploy_of_two_replicas_leaves_no_gap(
    fake_openai: FakeOpenAI, fake_slack: FakeSlack, tmp_path: Path, pg_url: str
) -> None:
    a = InProcessBot(fake_openai, fake_slack, tmp_path, owner="a-1", DATABASE_URL=pg_url)
    live = [a, a.replica("b-1")]
    finished: list[str] = []
    try:
        jobs = [(await start_job(a, channel_id=f"C{i}00"))[0] for i in range(8)]
        for _ in range(2):  # heartbeats first, then each takes its share
            for replica in live:
                await replica.cycle()
        assert sorted(leases(a).values()) == ["a-1"] * 4 + ["b-1"] * 4
        for i, successor in ((0, "a-2"), (1, "b-2")):  # replace A, then B
            old = live[i]
            held = {j for j, owner in leases(old).items() if owner == old.owner}
            assert held, "the replica about to stop held no watches"
            await old.shut_down()
            # Jobs the stopped replica was watching finish while its successor is starting.
            ended_now = sorted(held)[:2]
            for job_id in ended_now:
                fake_openai.set_status(job_id, "succeeded")
            finished += ended_now
            live[i] = old.replica(successor)
            # One round of cycles, the clock unmoved (well within a lease): no job waits for the
            # stopped replica's leases, every finished one is announced, once.
            for replica in live:
                await replica.cycle()
            assert {j: len(outcomes(a, j)) for j in finished} == {j: 1 for j in finished}
            # Nothing is leased to the stopped one any more (a watch may be free for a cycle while
            # the fair shares settle: the next cycle of either takes it).
            assert old.owner not in leases(a).values(), leases(a)
        for job_id in jobs:
            if job_id not in finished:
                fake_openai.set_status(job_id, "succeeded")
        for _ in range(3):  # the rest at the first round; then more rounds: still one each
            for replica in live:
                await replica.cycle()
        assert {j: len(outcomes(a, j)) for j in jobs} == {j: 1 for j in jobs}
    finally:
        for replica in live:
            await replica.stop()
