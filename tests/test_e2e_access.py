"""Who may do what, where: cancel rights, allowed channels, and a graceful stop."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakes import FakeOpenAI, FakeSlack
from tests.harness import Harness, all_text, start_bot
from tests.test_e2e_notifications import start_job

ADMIN = "UADMIN1"


@pytest.fixture(scope="module")
def h(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    with FakeOpenAI() as openai, FakeSlack() as slack:
        bot = start_bot(
            openai,
            slack,
            tmp_path_factory.mktemp("bot"),
            FINETUNE_ADMINS=f"{ADMIN}, UADMIN2",
            FINETUNE_ALLOWED_CHANNELS="C123,C456",
        )
        harness = Harness(bot, openai, slack)
        try:
            yield harness
        finally:
            assert bot.stop() == 0, bot.logs
        harness.assert_no_secrets()


def cancels(h: Harness, job_id: str) -> int:
    return len(h.openai.requests_to(rf"^/fine_tuning/jobs/{job_id}/cancel$", "POST"))


def test_starter_may_cancel_their_job(h: Harness) -> None:
    job_id, _ = start_job(h, user_id="U42")
    _, key = h.command(f"cancel {job_id}", user_id="U42")
    assert "Cancellation requested" in all_text(h.reply(key))
    assert cancels(h, job_id) == 1


def test_others_are_refused_politely_and_openai_hears_nothing(h: Harness) -> None:
    job_id, _ = start_job(h, user_id="U42")
    _, key = h.command(f"cancel {job_id}", user_id="U99")
    text = all_text(h.reply(key))
    assert "Sorry" in text and "<@U42>" in text and "FINETUNE_ADMINS" in text
    assert cancels(h, job_id) == 0
    assert h.openai.job(job_id)["status"] != "cancelled"


def test_admins_may_cancel_any_job(h: Harness) -> None:
    job_id, _ = start_job(h, user_id="U42")
    _, key = h.command(f"cancel {job_id}", user_id=ADMIN)
    assert "Cancellation requested" in all_text(h.reply(key))
    outside = h.openai.add_job()
    _, key = h.command(f"cancel {outside['id']}", user_id="UADMIN2")
    assert "Cancellation requested" in all_text(h.reply(key))


def test_jobs_not_started_from_slack_are_for_admins_only(h: Harness) -> None:
    outside = h.openai.add_job()
    _, key = h.command(f"cancel {outside['id']}", user_id="U42")
    assert "wasn't started from Slack" in all_text(h.reply(key))
    assert cancels(h, outside["id"]) == 0


def test_the_command_works_only_in_allowed_channels(h: Harness) -> None:
    before = len(h.openai.requests)
    for text in ("list", "help", "create file-abc123", "cancel ftjob-abc"):
        response, _ = h.command(text, channel_id="C999")
        body = response.json()
        assert body["response_type"] == "ephemeral"
        assert "isn't enabled in this channel" in all_text(body) and "<#C123>" in all_text(body)
    # The control: the same bot, in an allowed channel, does reach OpenAI and answer.
    control = h.control(channel_id="C456")
    assert [r for r in h.openai.requests[before:] if not control.owns(r)] == []
    assert h.slack.messages_in("C999") == [] and h.slack.responses_for(control.key)
    _, key = h.command("list", channel_id="C456")
    assert "isn't enabled" not in all_text(h.reply(key))


def test_sigterm_finishes_the_reply_in_flight(
    fake_openai: FakeOpenAI, fake_slack: FakeSlack, tmp_path: Path
) -> None:
    bot = start_bot(fake_openai, fake_slack, tmp_path)
    h = Harness(bot, fake_openai, fake_slack)
    fake_openai.latency = 2.0
    response, key = h.command("list")
    assert response.status_code == 200 and h.slack.responses_for(key) == []
    assert bot.process is not None
    bot.process.send_signal(signal.SIGTERM)
    code = bot.process.wait(timeout=30)  # a safety net only; bot/server.py bounds the drain itself
    assert code == 0, bot.logs
    # The user who was promised an answer got it before the process exited.
    assert h.slack.responses_for(key), bot.logs
    assert "No fine-tuning jobs" in all_text(h.slack.responses_for(key)[0].json)
