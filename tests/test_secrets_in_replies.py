"""Secrets are masked in what reaches Slack, not only in the logs: an OpenAI error that quotes the
API key (as "Incorrect API key provided: sk-…" does) shows `[redacted]` in the reply and in the
outcome posted to the channel."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.logs import REDACTED, Redactor
from tests.bot_process import OPENAI_KEY
from tests.fakes import FakeOpenAI, FakeSlack
from tests.harness import Harness, all_text, start_bot
from tests.test_e2e_notifications import start_job, text_of, wait_outcome


@pytest.fixture
def h(fake_openai: FakeOpenAI, fake_slack: FakeSlack, tmp_path: Path) -> Iterator[Harness]:
    bot = start_bot(fake_openai, fake_slack, tmp_path, POLL_INTERVAL_SECONDS="1")
    harness = Harness(bot, fake_openai, fake_slack)
    try:
        yield harness
    finally:
        assert bot.stop() == 0, bot.logs
    harness.assert_no_secrets()


def test_an_openai_error_quoting_the_key_is_masked_in_the_reply(h: Harness) -> None:
    job = h.openai.add_job()
    h.openai.fail_next(
        400,
        path=rf"/fine_tuning/jobs/{job['id']}",
        body={
            "error": {
                "message": f"Incorrect value for key {OPENAI_KEY}; check it.",
                "type": "invalid_request_error",
                "param": None,
                "code": None,
            }
        },
    )
    _, key = h.command(f"get {job['id']}")
    text = all_text(h.reply(key))
    assert "OpenAI rejected this: Incorrect value for key" in text
    assert OPENAI_KEY not in text and REDACTED in text


def test_a_failed_job_quoting_the_key_is_masked_in_the_outcome(h: Harness) -> None:
    job_id, _ = start_job(h)
    h.openai.set_status(
        job_id,
        "failed",
        error={"code": "invalid_api_key", "message": f"Key {OPENAI_KEY} was revoked.", "param": None},
    )
    text = text_of(wait_outcome(h, job_id))
    assert "invalid_api_key" in text and OPENAI_KEY not in text and f"Key {REDACTED} was revoked" in text


def test_redactor_masks_every_string_in_a_message() -> None:
    redactor = Redactor(["sk-secret-123456", "short"])
    message = {"text": "a sk-secret-123456 b", "blocks": [{"t": ("x sk-secret-123456",)}, 3, None]}
    assert redactor.value(message) == {
        "text": f"a {REDACTED} b",
        "blocks": [{"t": (f"x {REDACTED}",)}, 3, None],
    }
    # Values too short to be a real secret are left alone: they would mask ordinary words.
    assert redactor.text("short answer") == "short answer"
