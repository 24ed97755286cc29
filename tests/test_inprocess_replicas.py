"""Two replicas in one event loop on one PostgreSQL database, on one fake clock: fair shares, a
replica that dies mid-way, and leases that lapse, in milliseconds instead of lease periods."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.db import fresh_postgres_database
from tests.fakes import FakeOpenAI, FakeSlack
from tests.inprocess import InProcessBot
from tests.test_inprocess_lifecycle import outcomes, start_job


@pytest.fixture
def pg_url() -> Iterator[str]:
    with fresh_postgres_database() as url:
        yield url


def lease_holders(bot: InProcessBot) -> dict[str, int]:
    with bot.store.engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT lease_owner, count(*) FROM finetune_watches "
                "WHERE ended_at IS NULL AND lease_owner IS NOT NULL GROUP BY lease_owner"
            )
        )
        return {owner: n for owner, n in rows}


async def test_two_replicas_share_the_watches_and_announce_each_job_once(
    fake_openai: FakeOpenAI, fake_slack: FakeSlack, tmp_path: Path, pg_url: str
) -> None:
    a = InProcessBot(fake_openai, fake_slack, tmp_path, owner="replica-a", DATABASE_URL=pg_url)
    b = a.replica("replica-b")
    try:
        jobs = [(await start_job(a if i % 2 else b, channel_id=f"C{i % 4}00"))[0] for i in range(20)]
        for _ in range(2):  # heartbeats first, then each takes its fair share
            await a.cycle()
            await b.cycle()
        assert sorted(lease_holders(a).values()) == [10, 10]
        for job_id in jobs:
            fake_openai.set_status(job_id, "succeeded")
        # One cycle each: a replica whose share shrinks as its watches end still looks at the
        # ones it releases, so none waits for a later cycle.
        await a.cycle()
        await b.cycle()
        assert {j: len(outcomes(fake_slack, j)) for j in jobs} == {j: 1 for j in jobs}
    finally:
        await a.stop()
        await b.stop()


async def test_a_dead_replicas_watches_are_taken_over_once_its_leases_lapse(
    fake_openai: FakeOpenAI, fake_slack: FakeSlack, tmp_path: Path, pg_url: str
) -> None:
    a = InProcessBot(fake_openai, fake_slack, tmp_path, owner="replica-a", DATABASE_URL=pg_url)
    b = a.replica("replica-b")
    try:
        jobs = [(await start_job(a))[0] for _ in range(6)]
        await a.cycle()  # a alone is alive: it leases all six
        assert lease_holders(a) == {"replica-a": 6}
        # a dies here (no shutdown, so no hand-over); its jobs end meanwhile.
        for job_id in jobs:
            fake_openai.set_status(job_id, "succeeded")
        await b.cycle()
        assert all(outcomes(fake_slack, j) == [] for j in jobs)  # a's leases still hold
        b.clock.advance(a.parts.lease_ttl + 1)
        await b.cycle(2)
        assert {j: len(outcomes(fake_slack, j)) for j in jobs} == {j: 1 for j in jobs}
        assert lease_holders(b) == {}  # every watch ended
    finally:
        await b.stop()
        await a.http.aclose()
        await a.parts.close()
        a.store.close()
