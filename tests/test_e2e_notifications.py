"""End to end: jobs started or watched from Slack are announced when they end, once, in the thread."""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.store import Store
from tests.fakes import FakeOpenAI, FakeSlack
from tests.fakes.slack import RecordedMessage
from tests.harness import Harness, all_text, start_bot, wait_until


@pytest.fixture
def h(fake_openai: FakeOpenAI, fake_slack: FakeSlack, tmp_path: Path) -> Iterator[Harness]:
    bot = start_bot(fake_openai, fake_slack, tmp_path, POLL_INTERVAL_SECONDS="1")
    harness = Harness(bot, fake_openai, fake_slack)
    try:
        yield harness
    finally:
        assert bot.stop() == 0, bot.logs
    harness.assert_no_secrets()


def start_job(h: Harness, text: str = "create file-abc123", **kwargs: str) -> tuple[str, RecordedMessage]:
    """Run `/finetune create` and return the new job id and its announcement."""
    before = set(h.openai.jobs)
    channel = kwargs.get("channel_id", "C123")
    count = len(h.slack.messages_in(channel))
    response, _ = h.command(text, **kwargs)
    assert response.status_code == 200
    h.slack.wait_for(lambda s: len(s.messages_in(channel)) > count)
    [job_id] = set(h.openai.jobs) - before
    announcement = h.slack.messages_in(channel)[-1]
    assert job_id in all_text({"t": announcement.text, "b": announcement.blocks})
    return job_id, announcement


def outcomes(h: Harness, job_id: str) -> list[RecordedMessage]:
    """Every message (anywhere) that reports how `job_id` ended."""
    return [
        m
        for m in h.slack.messages
        if (m.params.get("metadata") or {}).get("event_type") == "finetune_outcome"
        and (m.params["metadata"].get("event_payload") or {}).get("key", "").startswith(job_id + ":")
    ]


def wait_outcome(h: Harness, job_id: str, timeout: float = 15.0) -> RecordedMessage:
    h.slack.wait_for(lambda s: outcomes(h, job_id), timeout=timeout)
    return outcomes(h, job_id)[0]


def assert_stays_single(h: Harness, job_id: str) -> None:
    """A complete poll cycle passes after the outcome, and still exactly one outcome exists."""
    h.wait_poll_cycles(2)
    assert len(outcomes(h, job_id)) == 1, [m.text for m in outcomes(h, job_id)]


def text_of(message: RecordedMessage) -> str:
    return all_text({"t": message.text, "b": message.blocks})


def test_success_is_threaded_broadcast_and_names_the_model(h: Harness) -> None:
    job_id, announcement = start_job(h, user_id="U42")
    h.openai.set_status(job_id, "running")
    wait_until(lambda: h.watch_status(job_id) == "running", 15, "the poller to record 'running'")
    assert outcomes(h, job_id) == []  # a cycle saw the job running, and said nothing
    h.openai.set_status(
        job_id,
        "succeeded",
        fine_tuned_model="ft:gpt-4o-mini-2024-07-18:acme:support:abc123",
        trained_tokens=123456,
    )
    message = wait_outcome(h, job_id)
    assert message.channel == "C123"
    assert message.thread_ts == announcement.ts and message.reply_broadcast
    text = text_of(message)
    assert "ft:gpt-4o-mini-2024-07-18:acme:support:abc123" in text and "<@U42>" in text
    assert "123,456" in text
    # The announcement now shows the final status. The card may have been edited before (it
    # showed "running"), so wait for the edit that shows the end, not merely for an edit.
    h.slack.wait_for(
        lambda s: "Succeeded" in text_of(s.messages_in("C123")[0]),
        timeout=15,
        message="the card to show Succeeded",
    )
    assert_stays_single(h, job_id)


def test_failure_names_the_error(h: Harness) -> None:
    job_id, announcement = start_job(h)
    h.openai.set_status(
        job_id,
        "failed",
        error={
            "code": "invalid_training_file",
            "message": "The training file has 3 examples; the minimum is 10. <!channel>",
            "param": "training_file",
        },
    )
    message = wait_outcome(h, job_id)
    text = text_of(message)
    assert message.thread_ts == announcement.ts
    assert "invalid_training_file" in text and "minimum is 10" in text
    assert "<!channel>" not in text
    assert_stays_single(h, job_id)


def test_cancel_from_slack_is_announced_once(h: Harness) -> None:
    job_id, announcement = start_job(h)
    _, key = h.command(f"cancel {job_id}")
    h.reply(key)
    message = wait_outcome(h, job_id)
    assert message.thread_ts == announcement.ts and "cancelled" in text_of(message)
    assert_stays_single(h, job_id)


def test_watch_from_another_channel_posts_there_too(h: Harness) -> None:
    job_id, _ = start_job(h)
    response, _ = h.command(f"watch {job_id}", channel_id="C777", user_id="U777")
    assert response.status_code == 200
    h.slack.wait_for(lambda s: s.messages_in("C777"))
    [follow] = h.slack.messages_in("C777")
    assert "following" in text_of(follow)
    _, key = h.command(f"watch {job_id}", channel_id="C777")
    assert "already follows" in all_text(h.reply(key))
    _, key = h.command("watch", channel_id="C777")
    assert job_id in all_text(h.reply(key))
    h.openai.set_status(job_id, "succeeded")
    h.slack.wait_for(lambda s: len(outcomes(h, job_id)) == 2, timeout=15)
    by_channel = {m.channel: m for m in outcomes(h, job_id)}
    assert set(by_channel) == {"C123", "C777"}
    assert by_channel["C777"].thread_ts == follow.ts and "<@U777>" in text_of(by_channel["C777"])
    h.wait_poll_cycles(2)
    assert len(outcomes(h, job_id)) == 2


def test_unwatch_stops_the_notification(h: Harness) -> None:
    job_id, _ = start_job(h)
    _, key = h.command(f"unwatch {job_id}")
    assert "no longer follows" in all_text(h.reply(key))
    _, key = h.command("watch")
    assert "follows no fine-tuning jobs" in all_text(h.reply(key))
    # The control: a job another channel still follows ends at the same moment, and is announced.
    control, _ = start_job(h, channel_id="C456")
    h.openai.set_status(job_id, "succeeded")
    h.openai.set_status(control, "succeeded")
    wait_outcome(h, control)
    h.wait_poll_cycles(2)
    assert outcomes(h, job_id) == []


def test_watching_a_finished_job_shows_it_instead(h: Harness) -> None:
    job = h.openai.add_job()
    h.openai.set_status(job["id"], "succeeded")
    _, key = h.command(f"watch {job['id']}")
    assert "Succeeded" in all_text(h.reply(key))
    assert h.slack.messages == []


def test_channel_refusing_the_outcome_means_a_dm_to_the_starter(h: Harness) -> None:
    job_id, _ = start_job(h, user_id="U42")
    h.slack.fail_next("chat.postMessage", error="not_in_channel", channel="C123")
    h.openai.set_status(job_id, "succeeded")
    message = wait_outcome(h, job_id)
    assert message.channel == "DU42"
    text = text_of(message)
    assert "/invite" in text and "ft:" in text
    assert_stays_single(h, job_id)


def test_deleted_job_ends_its_watch_with_a_note_and_does_not_block_others(h: Harness) -> None:
    gone, gone_announcement = start_job(h)
    other, _ = start_job(h)
    h.openai.delete_job(gone)
    h.openai.set_status(other, "succeeded")
    note = wait_outcome(h, gone)
    assert note.thread_ts == gone_announcement.ts and "no longer" in text_of(note)
    wait_outcome(h, other)
    assert_stays_single(h, gone)


def test_openai_and_slack_faults_delay_but_never_lose_or_duplicate(h: Harness) -> None:
    job_id, _ = start_job(h)
    h.openai.fail_next(500, path=r"/fine_tuning/jobs.*", times=6)
    h.openai.fail_next(429, path=r"/fine_tuning/jobs.*", retry_after=1)
    h.slack.fail_next("chat.postMessage", status=429, retry_after=1)
    h.slack.fail_next("chat.postMessage", status=500, times=3)
    h.openai.set_status(job_id, "succeeded")
    wait_outcome(h, job_id, timeout=40)
    assert_stays_single(h, job_id)
    assert h.bot.process is not None and h.bot.process.poll() is None


def test_poll_cost_for_250_unchanged_jobs(
    fake_openai: FakeOpenAI, fake_slack: FakeSlack, tmp_path: Path
) -> None:
    now = int(time.time())
    store = Store.from_url(f"sqlite:///{tmp_path / 'finetune-bot.db'}")
    for i in range(300):  # 50 more jobs exist that nobody watches
        job = fake_openai.add_job(created_at=now - 10_000 + i, status="running")
        if i >= 50:
            store.add_watch(
                job_id=job["id"],
                team_id="T1",
                channel_id="C1",
                user_id="U1",
                announcement_ts=None,
                job_created_at=job["created_at"],
                status="running",
            )
    store.close()
    bot = start_bot(fake_openai, fake_slack, tmp_path, POLL_INTERVAL_SECONDS="1")
    try:
        # A cycle starts with a first page (no `after`); count requests between cycle starts.
        fake_openai.wait_for(
            lambda f: len([r for r in f.requests if "after" not in r.query]) >= 4, timeout=20
        )
    finally:
        assert bot.stop() == 0, bot.logs
    requests = fake_openai.requests
    starts = [i for i, r in enumerate(requests) if r.path == "/fine_tuning/jobs" and "after" not in r.query]
    per_cycle = [b - a for a, b in itertools.pairwise(starts)]
    assert per_cycle and max(per_cycle) <= math.ceil(250 / 100) + 1, per_cycle
    assert all(r.query.get("limit") == "100" for r in requests)
    assert fake_slack.messages == []
