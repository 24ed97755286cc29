"""End to end: jobs started or watched from Slack are announced when they end, once, in the thread.

The real process, its scheduler's poll cycles and its card edits, on the happy path. Everything
else about outcomes (failures, cancel, watch and unwatch, a refusing channel, a deleted job,
OpenAI and Slack faults, the poll's request budget) is shown by the same production parts in
process, on a fake clock, in tests/test_inprocess_notifications.py. The helpers here are shared by
other end-to-end files.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

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
