"""Exactly once across SIGKILL and across replicas.

The bot is killed with a real SIGKILL at the moments that matter — before a job's status changes,
between writing the outbox row and posting, between recording the attempt and posting, right after
Slack accepted the post — then restarted on the same database: every finished job is announced
exactly once. `FINETUNE_CRASH_AT` (see bot/notifier.py) makes the process SIGKILL itself at the
named point, so each case is hit exactly rather than by luck.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from tests.bot_process import BotProcess
from tests.db import fresh_postgres_database
from tests.fakes import FakeOpenAI, FakeSlack
from tests.harness import Harness, bot_env, query_db, start_bot, wait_until
from tests.test_e2e_notifications import outcomes, start_job


def wait_killed(bot: BotProcess, timeout: float = 20.0) -> None:
    assert bot.process is not None
    deadline = time.monotonic() + timeout
    while bot.process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert bot.process.returncode == -signal.SIGKILL, (bot.process.returncode, bot.logs)


def lease_owners(h: Harness) -> int:
    """How many replicas hold leases on unfinished watches (they have heartbeated and divided them)."""
    [(owners,)] = query_db(
        h.db_url,
        "SELECT COUNT(DISTINCT lease_owner) FROM finetune_watches WHERE ended_at IS NULL",
    )
    return int(owners)


def test_killed_before_the_status_changes(
    fake_openai: FakeOpenAI, fake_slack: FakeSlack, tmp_path: Path
) -> None:
    bot = start_bot(fake_openai, fake_slack, tmp_path, POLL_INTERVAL_SECONDS="1")
    h = Harness(bot, fake_openai, fake_slack)
    job_id, announcement = start_job(h)
    fake_openai.set_status(job_id, "running")
    # At least one cycle saw it running (and wrote that down) before the process dies.
    wait_until(lambda: h.watch_status(job_id) == "running", 15, "the poller to record 'running'")
    bot.kill()
    fake_openai.set_status(job_id, "succeeded")
    restarted = start_bot(fake_openai, fake_slack, tmp_path, POLL_INTERVAL_SECONDS="1")
    try:
        fake_slack.wait_for(lambda s: outcomes(h, job_id), timeout=15)
        h.bot = restarted
        h.wait_poll_cycles(2)  # a complete cycle after the post: still one
        [message] = outcomes(h, job_id)
        assert message.thread_ts == announcement.ts
    finally:
        assert restarted.stop() == 0, restarted.logs


@pytest.mark.parametrize("crash_at", ["after_outbox_write", "before_post", "after_post"])
def test_killed_while_notifying(
    fake_openai: FakeOpenAI, fake_slack: FakeSlack, tmp_path: Path, crash_at: str
) -> None:
    bot = start_bot(fake_openai, fake_slack, tmp_path, POLL_INTERVAL_SECONDS="1", FINETUNE_CRASH_AT=crash_at)
    h = Harness(bot, fake_openai, fake_slack)
    job_id, announcement = start_job(h)
    fake_openai.set_status(job_id, "succeeded")
    wait_killed(bot)
    posted_before_restart = len(outcomes(h, job_id))
    assert posted_before_restart == (1 if crash_at == "after_post" else 0)

    restarted = start_bot(fake_openai, fake_slack, tmp_path, POLL_INTERVAL_SECONDS="1")
    try:
        fake_slack.wait_for(lambda s: outcomes(h, job_id), timeout=15)
        if crash_at in ("before_post", "after_post"):
            # The half-done attempt was checked against the thread before anything was re-posted.
            fake_slack.wait_for(lambda s: s.calls_to("conversations.replies"), timeout=15)
        if crash_at == "after_post":
            fake_slack.wait_for(lambda s: s.updates, timeout=15)  # the restart finished the job
        h.bot = restarted
        h.wait_poll_cycles(2)  # a complete cycle after the post: still one
        [message] = outcomes(h, job_id)
        assert message.thread_ts == announcement.ts
    finally:
        assert restarted.stop() == 0, restarted.logs


def test_killed_repeatedly_while_many_jobs_finish(
    fake_openai: FakeOpenAI, fake_slack: FakeSlack, tmp_path: Path
) -> None:
    bot = start_bot(fake_openai, fake_slack, tmp_path, POLL_INTERVAL_SECONDS="1")
    h = Harness(bot, fake_openai, fake_slack)
    jobs = [start_job(h)[0] for _ in range(12)]
    for round_ in range(3):
        for job_id in jobs[round_ * 4 : round_ * 4 + 4]:
            fake_openai.set_status(job_id, "succeeded")
        time.sleep(0.3 * round_)  # deliberately varied: the kill lands at a different moment each round
        h.bot.kill()
        h.bot = start_bot(fake_openai, fake_slack, tmp_path, POLL_INTERVAL_SECONDS="1")
    try:
        fake_slack.wait_for(lambda s: all(outcomes(h, j) for j in jobs), timeout=30)
        h.wait_poll_cycles(2)  # a complete cycle after the last post: still one each
        assert {j: len(outcomes(h, j)) for j in jobs} == {j: 1 for j in jobs}
    finally:
        assert h.bot.stop() == 0, h.bot.logs


def test_two_replicas_on_postgresql_announce_each_job_once(
    fake_openai: FakeOpenAI, fake_slack: FakeSlack, tmp_path: Path
) -> None:
    with fresh_postgres_database() as url:
        env = bot_env(fake_openai, fake_slack, POLL_INTERVAL_SECONDS="1", DATABASE_URL=url)
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        replicas = [BotProcess(env, tmp_path / "a").start(), BotProcess(env, tmp_path / "b").start()]
        try:
            jobs = []
            for i in range(40):
                h = Harness(replicas[i % 2], fake_openai, fake_slack)
                jobs.append(start_job(h, channel_id=f"C{i % 4}00")[0])
            wait_until(lambda: lease_owners(h) == 2, 20, "both replicas to hold a share of the watches")
            for job_id in jobs:
                fake_openai.set_status(job_id, "succeeded")
            fake_slack.wait_for(lambda s: all(outcomes(h, j) for j in jobs), timeout=40)
            h.wait_poll_cycles(2, replicas=2)  # a complete cycle on each after the last post
            assert {j: len(outcomes(h, j)) for j in jobs} == {j: 1 for j in jobs}
            # Both replicas did part of the work.
            for replica in replicas:
                assert "outcome succeeded" in replica.logs, replica.logs[-2000:]
        finally:
            for replica in replicas:
                assert replica.stop() == 0, replica.logs
