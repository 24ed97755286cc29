"""The poller, notifier and webhook receiver in this test's event loop, on a fake clock
(tests/inprocess.py): the follow-a-job lifecycle in milliseconds, where the end-to-end tests wait
for real poll intervals and leases."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.fakes import FakeOpenAI, FakeSlack
from tests.fakes.slack import RecordedMessage
from tests.inprocess import WEBHOOK_SECRET, InProcessBot


@pytest.fixture
async def bot(fake_openai: FakeOpenAI, fake_slack: FakeSlack, tmp_path: Path) -> AsyncIterator[InProcessBot]:
    bot = InProcessBot(fake_openai, fake_slack, tmp_path, OPENAI_WEBHOOK_SECRET=WEBHOOK_SECRET)
    yield bot
    await bot.stop()


def outcomes(slack: FakeSlack, job_id: str) -> list[RecordedMessage]:
    """Every message (anywhere) that reports how `job_id` ended."""
    return [
        m
        for m in slack.messages
        if (m.params.get("metadata") or {}).get("event_type") == "finetune_outcome"
        and (m.params["metadata"].get("event_payload") or {}).get("key", "").startswith(job_id + ":")
    ]


async def start_job(bot: InProcessBot, channel_id: str = "C123") -> tuple[str, RecordedMessage]:
    """`/finetune create` through the real listener; the new job's id and its announcement."""
    before = set(bot.openai.jobs)
    response, _ = await bot.command("create file-abc123", channel_id=channel_id)
    assert response.status_code == 200
    await bot.settle()
    [job_id] = set(bot.openai.jobs) - before
    announcement = bot.slack.messages_in(channel_id)[-1]
    assert job_id in str(announcement.params)
    return job_id, announcement


async def test_a_job_started_from_slack_is_announced_once_in_its_thread(bot: InProcessBot) -> None:
    job_id, announcement = await start_job(bot)
    await bot.cycle()
    assert outcomes(bot.slack, job_id) == []  # still queued: nothing owed
    bot.openai.set_status(job_id, "succeeded", fine_tuned_model="ft:gpt-4o-mini:acme::abc")
    await bot.cycle()
    [outcome] = outcomes(bot.slack, job_id)
    assert outcome.params["thread_ts"] == announcement.ts
    assert outcome.params["reply_broadcast"] in (True, "true", "1")
    await bot.cycle(3)
    assert len(outcomes(bot.slack, job_id)) == 1


async def test_several_watched_jobs_survive_a_restart_and_each_is_announced_once(
    bot: InProcessBot,
) -> None:
    jobs = [(await start_job(bot, channel_id=f"C{i % 2}00"))[0] for i in range(6)]
    await bot.cycle()
    bot = await bot.restart()
    # While it was down: some ended, in each way; one is still running.
    ended = ["succeeded", "failed", "cancelled", "succeeded", "failed"]
    for job_id, status in zip(jobs, ended, strict=False):
        bot.openai.set_status(job_id, status)
    bot.openai.set_status(jobs[5], "running")
    await bot.cycle()
    assert [len(outcomes(bot.slack, j)) for j in jobs] == [1, 1, 1, 1, 1, 0]
    bot = await bot.restart()
    bot.openai.set_status(jobs[5], "succeeded")
    await bot.cycle(2)
    assert [len(outcomes(bot.slack, j)) for j in jobs] == [1] * 6
    await bot.stop()


async def test_posts_in_one_channel_are_paced_a_second_apart_on_the_clock(bot: InProcessBot) -> None:
    jobs = [(await start_job(bot))[0] for _ in range(4)]
    for job_id in jobs:
        bot.openai.set_status(job_id, "succeeded")
    before = len(bot.clock.sleeps)
    await bot.cycle()
    assert all(len(outcomes(bot.slack, j)) == 1 for j in jobs)
    # Three waits between four posts, none of them spent in wall time.
    pacing = [s for s in bot.clock.sleeps[before:] if s > 0.5]
    assert len(pacing) == 3 and all(s <= 1.0 for s in pacing)


async def test_a_webhook_announces_without_a_cycle_and_a_redelivery_changes_nothing(
    bot: InProcessBot,
) -> None:
    job_id, _ = await start_job(bot)
    error = {"code": "invalid_file", "message": "bad line 3", "param": None}
    bot.openai.set_status(job_id, "failed", error=error)
    first = await bot.webhook(job_id, webhook_id="msg_1")
    assert first.status_code == 200
    await bot.settle()
    assert len(outcomes(bot.slack, job_id)) == 1
    again = await bot.webhook(job_id, webhook_id="msg_1")
    assert again.json() == {"ok": True, "duplicate": True}
    await bot.cycle(2)  # the reconciliation pass finds nothing more to say
    assert len(outcomes(bot.slack, job_id)) == 1


async def test_a_slack_outage_defers_the_outcome_until_its_retry_comes_due(bot: InProcessBot) -> None:
    job_id, _ = await start_job(bot)
    bot.openai.set_status(job_id, "succeeded")
    bot.slack.fail_next("chat.postMessage", error="internal_error", status=500, times=1)
    await bot.cycle()
    assert outcomes(bot.slack, job_id) == []
    await bot.cycle()  # the retry is not due yet: nothing is tried
    assert outcomes(bot.slack, job_id) == []
    bot.clock.advance(10 * 60)  # past any backoff
    await bot.cycle()
    assert len(outcomes(bot.slack, job_id)) == 1


