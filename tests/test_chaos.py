"""Chaos: jobs finish at random moments while the bot is SIGKILLed, and while its database is away.

Randomness is seeded, so a failure replays the same way. What is counted is what matters to a
team: one announcement per finished job — none lost, none twice.
"""

from __future__ import annotations

import random
import sqlite3
import threading
import time
from pathlib import Path

import sqlalchemy as sa

from tests.bot_process import BotProcess
from tests.db import PG_ADMIN_URL, fresh_postgres_database
from tests.fakes import FakeOpenAI, FakeSlack
from tests.harness import Harness, bot_env, start_bot, wait_until
from tests.test_e2e_notifications import outcomes, start_job

JOBS = 50
# Log lines (bot/poller.py; APScheduler's own when the previous run has not finished).
FAILED = "poll cycle failed"
SKIPPED = "maximum number of running instances reached"


def seed_watches(h: Harness, count: int) -> list[str]:
    return [start_job(h, channel_id=f"C{i % 5}00", user_id=f"U{i % 7}00")[0] for i in range(count)]


def assert_exactly_once(h: Harness, jobs: list[str], timeout: float) -> None:
    h.slack.wait_for(lambda s: all(outcomes(h, j) for j in jobs), timeout=timeout)
    h.wait_poll_cycles(2)  # a complete cycle after the last post: nothing more may appear
    counts = {j: len(outcomes(h, j)) for j in jobs}
    assert counts == {j: 1 for j in jobs}, {j: c for j, c in counts.items() if c != 1}


def test_random_kills_while_50_jobs_finish(
    fake_openai: FakeOpenAI, fake_slack: FakeSlack, tmp_path: Path
) -> None:
    rng = random.Random(20261125)
    h = Harness(
        start_bot(fake_openai, fake_slack, tmp_path, POLL_INTERVAL_SECONDS="1"), fake_openai, fake_slack
    )
    jobs = seed_watches(h, JOBS)
    statuses = ["succeeded", "failed", "cancelled"]
    pending = list(jobs)
    rng.shuffle(pending)
    kills = 0
    try:
        while pending:
            # A handful of jobs end, then at a random moment the bot dies without warning.
            for _ in range(min(len(pending), rng.randint(3, 9))):
                fake_openai.set_status(pending.pop(), rng.choice(statuses))
            time.sleep(rng.uniform(0.0, 1.6))  # deliberately random: where the kill lands
            h.bot.kill()
            kills += 1
            h.bot = start_bot(fake_openai, fake_slack, tmp_path, POLL_INTERVAL_SECONDS="1")
        assert_exactly_once(h, jobs, timeout=40)
        assert kills >= 5
    finally:
        assert h.bot.stop() == 0, h.bot.logs


def test_sqlite_locked_for_a_while(fake_openai: FakeOpenAI, fake_slack: FakeSlack, tmp_path: Path) -> None:
    h = Harness(
        start_bot(fake_openai, fake_slack, tmp_path, POLL_INTERVAL_SECONDS="1"), fake_openai, fake_slack
    )
    jobs = seed_watches(h, 10)
    # Another process holds the write lock (a backup, a stray sqlite3 shell) while jobs finish.
    locker = sqlite3.connect(tmp_path / "finetune-bot.db", isolation_level=None, timeout=30)
    locker.execute("BEGIN EXCLUSIVE")
    try:
        for job_id in jobs:
            fake_openai.set_status(job_id, "succeeded")
        # The control: a cycle is stuck on the lock while the scheduler keeps trying to start more.
        skipped = h.bot.logs.count(SKIPPED)
        wait_until(lambda: h.bot.logs.count(SKIPPED) >= skipped + 2, 30, "poll cycles to be held up")
        assert all(not outcomes(h, j) for j in jobs)  # nothing can be recorded, so nothing is posted
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    try:
        assert_exactly_once(h, jobs, timeout=45)
        assert h.bot.process is not None and h.bot.process.poll() is None
    finally:
        assert h.bot.stop() == 0, h.bot.logs


def test_postgresql_unavailable_for_a_while(
    fake_openai: FakeOpenAI, fake_slack: FakeSlack, tmp_path: Path
) -> None:
    with fresh_postgres_database() as url:
        name = url.rsplit("/", 1)[1]
        bot = BotProcess(
            bot_env(fake_openai, fake_slack, POLL_INTERVAL_SECONDS="1", DATABASE_URL=url), tmp_path
        )
        h = Harness(bot.start(), fake_openai, fake_slack)
        admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        stop = threading.Event()

        def outage() -> None:
            # For this database only (other tests share the server): refuse new connections and
            # cut the existing ones, again and again, as a restarting server would.
            with admin.connect() as conn:
                conn.execute(sa.text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false'))
                while not stop.is_set():
                    conn.execute(
                        sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :d"),
                        {"d": name},
                    )
                    time.sleep(0.2)
                conn.execute(sa.text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))

        try:
            jobs = seed_watches(h, 10)
            thread = threading.Thread(target=outage)
            thread.start()
            try:
                for job_id in jobs:
                    fake_openai.set_status(job_id, "succeeded")
                # The outage lasts until cycles have failed on it (not just for some seconds).
                wait_until(lambda: bot.logs.count(FAILED) >= 2, 30, "poll cycles to fail on the outage")
            finally:
                stop.set()
                thread.join()
            assert_exactly_once(h, jobs, timeout=45)
            assert bot.process is not None and bot.process.poll() is None
            assert FAILED in bot.logs  # the outage was real, and survived
        finally:
            admin.dispose()
            assert bot.stop() == 0, bot.logs
