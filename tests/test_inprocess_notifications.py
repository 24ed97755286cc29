"""Jobs started or watched from Slack are announced when they end, once, in the thread: the
production poller, notifier and runner in this test's event loop, on a fake clock
(tests/inprocess.py). A poll cycle is `bot.cycle()`, not a wait of a poll interval; backoffs come
due with `bot.clock.advance`. tests/test_e2e_notifications.py keeps the happy path in a real process.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.bot_process import BOT_TOKEN, OPENAI_KEY, SIGNING_SECRET
from tests.fakes import FakeOpenAI, FakeSlack
from tests.fakes.slack import RecordedMessage
from tests.harness import all_text
from tests.inprocess import InProcessBot
from tests.test_e2e_notifications import text_of


def assert_no_secrets(bot: InProcessBot, caplog: pytest.LogCaptureFixture) -> None:
    """What the end-to-end harness checks in a process' log and its Slack traffic, here in the
    records the bot's loggers wrote during the test (unredacted: the redaction is the process'
    log handler, a net under this) and in every Slack call and reply."""
    everything = caplog.text + repr([c.params for c in bot.slack.calls])
    everything += repr([r.json for r in bot.slack.responses])
    for secret in (OPENAI_KEY, BOT_TOKEN, SIGNING_SECRET):
        assert secret not in everything


@pytest.fixture
async def bot(
    fake_openai: FakeOpenAI, fake_slack: FakeSlack, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> AsyncIterator[InProcessBot]:
    caplog.set_level(logging.INFO)
    bot = InProcessBot(fake_openai, fake_slack, tmp_path)
    yield bot
    await bot.stop()
    assert_no_secrets(bot, caplog)


async def start_job(
    bot: InProcessBot, text: str = "create file-abc123", *, channel_id: str = "C123", user_id: str = "U123"
) -> tuple[str, RecordedMessage]:
    """`/finetune create` through the real listener; the new job's id and its announcement."""
    before = set(bot.openai.jobs)
    count = len(bot.slack.messages_in(channel_id))
    response, _ = await bot.command(text, channel_id=channel_id, user_id=user_id)
    assert response.status_code == 200
    await bot.settle()
    assert len(bot.slack.messages_in(channel_id)) > count
    [job_id] = set(bot.openai.jobs) - before
    announcement = bot.slack.messages_in(channel_id)[-1]
    assert job_id in text_of(announcement)
    return job_id, announcement


def outcomes(bot: InProcessBot, job_id: str) -> list[RecordedMessage]:
    """Every message (anywhere) that reports how `job_id` ended."""
    return [
        m
        for m in bot.slack.messages
        if (m.params.get("metadata") or {}).get("event_type") == "finetune_outcome"
        and (m.params["metadata"].get("event_payload") or {}).get("key", "").startswith(job_id + ":")
    ]


async def the_outcome(bot: InProcessBot, job_id: str) -> RecordedMessage:
    """The one outcome of `job_id`, after a cycle; two more cycles still leave it the only one."""
    await bot.cycle()
    [message] = outcomes(bot, job_id)
    await assert_stays_single(bot, job_id)
    return message


async def assert_stays_single(bot: InProcessBot, job_id: str, count: int = 1) -> None:
    await bot.cycle(2)
    assert len(outcomes(bot, job_id)) == count, [m.text for m in outcomes(bot, job_id)]


async def test_success_is_threaded_broadcast_and_names_the_model(bot: InProcessBot) -> None:
    job_id, announcement = await start_job(bot, user_id="U42")
    bot.openai.set_status(job_id, "running")
    await bot.cycle()
    watch = bot.store.get_watch(job_id, "C123")
    assert watch is not None and watch.last_status == "running"
    assert outcomes(bot, job_id) == []  # the cycle saw the job running, and said nothing
    bot.openai.set_status(
        job_id,
        "succeeded",
        fine_tuned_model="ft:gpt-4o-mini-2024-07-18:acme:support:abc123",
        trained_tokens=123456,
    )
    message = await the_outcome(bot, job_id)
    assert message.channel == "C123"
    assert message.thread_ts == announcement.ts and message.reply_broadcast
    text = text_of(message)
    assert "ft:gpt-4o-mini-2024-07-18:acme:support:abc123" in text and "<@U42>" in text
    assert "123,456" in text
    # The announcement (the job's card) now shows the final status.
    assert "Succeeded" in text_of(bot.slack.messages_in("C123")[0])


async def test_failure_names_the_error(bot: InProcessBot) -> None:
    job_id, announcement = await start_job(bot)
    bot.openai.set_status(
        job_id,
        "failed",
        error={
            "code": "invalid_training_file",
            "message": "The training file has 3 examples; the minimum is 10. <!channel>",
            "param": "training_file",
        },
    )
    message = await the_outcome(bot, job_id)
    text = text_of(message)
    assert message.thread_ts == announcement.ts
    assert "invalid_training_file" in text and "minimum is 10" in text
    assert "<!channel>" not in text


async def test_cancel_from_slack_is_announced_once(bot: InProcessBot) -> None:
    job_id, announcement = await start_job(bot)
    _, key = await bot.command(f"cancel {job_id}")
    await bot.reply(key)
    message = await the_outcome(bot, job_id)
    assert message.thread_ts == announcement.ts and "cancelled" in text_of(message)


async def test_watch_from_another_channel_posts_there_too(bot: InProcessBot) -> None:
    job_id, _ = await start_job(bot)
    response, _ = await bot.command(f"watch {job_id}", channel_id="C777", user_id="U777")
    assert response.status_code == 200
    await bot.settle()
    [follow] = bot.slack.messages_in("C777")
    assert "following" in text_of(follow)
    _, key = await bot.command(f"watch {job_id}", channel_id="C777")
    assert "already follows" in all_text(await bot.reply(key))
    _, key = await bot.command("watch", channel_id="C777")
    assert job_id in all_text(await bot.reply(key))
    bot.openai.set_status(job_id, "succeeded")
    await bot.cycle()
    by_channel = {m.channel: m for m in outcomes(bot, job_id)}
    assert set(by_channel) == {"C123", "C777"}
    assert by_channel["C777"].thread_ts == follow.ts and "<@U777>" in text_of(by_channel["C777"])
    await assert_stays_single(bot, job_id, count=2)


async def test_unwatch_stops_the_notification(bot: InProcessBot) -> None:
    job_id, _ = await start_job(bot)
    _, key = await bot.command(f"unwatch {job_id}")
    assert "no longer follows" in all_text(await bot.reply(key))
    _, key = await bot.command("watch")
    assert "follows no fine-tuning jobs" in all_text(await bot.reply(key))
    # The control: a job another channel still follows ends at the same moment, and is announced.
    control, _ = await start_job(bot, channel_id="C456")
    bot.openai.set_status(job_id, "succeeded")
    bot.openai.set_status(control, "succeeded")
    await the_outcome(bot, control)  # three cycles, the control announced once in them
    assert outcomes(bot, job_id) == []


async def test_watching_a_finished_job_shows_it_instead(bot: InProcessBot) -> None:
    job = bot.openai.add_job()
    bot.openai.set_status(job["id"], "succeeded")
    _, key = await bot.command(f"watch {job['id']}")
    assert "Succeeded" in all_text(await bot.reply(key))
    await bot.cycle()
    assert bot.slack.messages == []


async def test_channel_refusing_the_outcome_means_a_dm_to_the_starter(bot: InProcessBot) -> None:
    job_id, _ = await start_job(bot, user_id="U42")
    bot.slack.fail_next("chat.postMessage", error="not_in_channel", channel="C123")
    bot.openai.set_status(job_id, "succeeded")
    message = await the_outcome(bot, job_id)
    assert message.channel == "DU42"
    text = text_of(message)
    assert "/invite" in text and "ft:" in text


async def test_deleted_job_ends_its_watch_with_a_note_and_does_not_block_others(bot: InProcessBot) -> None:
    gone, gone_announcement = await start_job(bot)
    other, _ = await start_job(bot)
    bot.openai.delete_job(gone)
    bot.openai.set_status(other, "succeeded")
    await bot.cycle()  # one cycle ends both: the missing job holds nothing up
    [note] = outcomes(bot, gone)
    assert note.thread_ts == gone_announcement.ts and "no longer" in text_of(note)
    assert len(outcomes(bot, other)) == 1
    await assert_stays_single(bot, gone)


async def test_openai_and_slack_faults_delay_but_never_lose_or_duplicate(bot: InProcessBot) -> None:
    job_id, _ = await start_job(bot)
    openai_faults = [
        bot.openai.fail_next(500, path=r"/fine_tuning/jobs.*", times=6),
        bot.openai.fail_next(429, path=r"/fine_tuning/jobs.*", retry_after=1),
    ]
    slack_faults = [
        bot.slack.fail_next("chat.postMessage", status=429, retry_after=1),
        bot.slack.fail_next("chat.postMessage", status=500, times=3),
    ]
    bot.openai.set_status(job_id, "succeeded")
    interval = bot.settings.poll_interval_seconds
    cycles = 0
    # Every cycle is a whole one (cycle() never raises: a failing one is logged and the next goes
    # on), and time moves a poll interval between them, so the deferred post comes due.
    while not outcomes(bot, job_id) and cycles < 20:
        await bot.cycle()
        cycles += 1
        bot.clock.advance(interval)
    assert len(outcomes(bot, job_id)) == 1, f"not announced after {cycles} cycles"
    await assert_stays_single(bot, job_id)
    assert [f.remaining for f in openai_faults + slack_faults] == [0, 0, 0, 0]  # every fault was met


async def test_slacks_retry_after_is_waited_out_on_the_bots_clock(bot: InProcessBot) -> None:
    # What lets the test above cost no wall time: the posting client's 429 retry sleeps on the
    # clock the parts were built with, as long as slack_sdk's own would (Retry-After + < 1 s).
    fault = bot.slack.fail_next("chat.postMessage", status=429, retry_after=3)
    sleeps = len(bot.clock.sleeps)
    response = await bot.parts.slack.chat_postMessage(channel="C123", text="after a 429")
    assert response["ok"] and fault.remaining == 0
    [waited] = bot.clock.sleeps[sleeps:]
    assert 3 <= waited < 4
    assert [m.text for m in bot.slack.messages_in("C123")] == ["after a 429"]


async def test_poll_cost_for_250_unchanged_jobs(bot: InProcessBot) -> None:
    now = int(bot.clock.time())
    for i in range(300):  # 50 more jobs exist that nobody watches
        job = bot.openai.add_job(created_at=now - 10_000 + i, status="running")
        if i >= 50:
            bot.store.add_watch(
                job_id=job["id"],
                team_id="T1",
                channel_id="C1",
                user_id="U1",
                announcement_ts=None,
                job_created_at=job["created_at"],
                status="running",
            )
    per_cycle: list[int] = []
    for _ in range(3):
        before = len(bot.openai.requests)
        await bot.cycle()
        per_cycle.append(len(bot.openai.requests) - before)
    assert max(per_cycle) <= math.ceil(250 / 100) + 1, per_cycle
    assert all(r.query.get("limit") == "100" for r in bot.openai.requests)
    assert bot.slack.messages == []
