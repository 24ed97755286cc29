"""Hostile strings from OpenAI reach Slack inert: the production listeners, runner, poller and
notifier in this test's event loop (tests/inprocess.py), every check made on what reached the fake
Slack (replies to response_url, posts, card edits) over real HTTP.

OpenAI controls model names, fine-tuned model names, error codes and messages, event messages and
metadata; each is set (through the fake, which accepts only what the spec allows) to markup Slack
would act on. The checks and the hostile values are tests/test_escaping_e2e.py's, which keeps a
`get` answered by a served process.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakes import FakeOpenAI, FakeSlack
from tests.fakes.slack import RecordedMessage
from tests.inprocess import InProcessBot
from tests.test_escaping_e2e import (
    CHANNEL,
    HOSTILE,
    HOSTILE_ERROR,
    HOSTILE_FT_MODEL,
    HOSTILE_METADATA,
    HOSTILE_MODEL,
    LINK,
    PING,
    USER,
    as_message,
    assert_inert,
    code_span,
)
from tests.test_inprocess_notifications import assert_no_secrets


@pytest.fixture
async def bot(
    fake_openai: FakeOpenAI, fake_slack: FakeSlack, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> AsyncIterator[InProcessBot]:
    caplog.set_level(logging.INFO)
    bot = InProcessBot(fake_openai, fake_slack, tmp_path, FINETUNE_ADMINS=USER)
    yield bot
    await bot.stop()
    assert_no_secrets(bot, caplog)


async def reply_to(bot: InProcessBot, text: str) -> dict[str, Any]:
    _, key = await bot.command(text, user_id=USER, channel_id=CHANNEL)
    reply = await bot.reply(key)
    assert "Something went wrong" not in str(reply)
    return reply


def outcome_of(bot: InProcessBot, job_id: str) -> list[RecordedMessage]:
    return [
        m
        for m in bot.slack.messages
        if str(((m.params.get("metadata") or {}).get("event_payload") or {}).get("key", "")).startswith(
            job_id + ":"
        )
    ]


# -- read commands ---------------------------------------------------------------------------------


async def test_get_shows_an_unknown_hostile_status_inert(bot: InProcessBot) -> None:
    job = bot.openai.add_job(status="<!channel>_<@U123>")
    text = assert_inert(await reply_to(bot, f"get {job['id']}"))
    assert "&lt;!channel&gt;" in text


async def test_list_shows_hostile_jobs_inert(bot: InProcessBot) -> None:
    now = int(time.time())
    bot.openai.add_job(model=HOSTILE_MODEL, created_at=now - 30)
    bot.openai.add_job(model="m", fine_tuned_model=HOSTILE_FT_MODEL, status="succeeded", created_at=now - 20)
    bot.openai.add_job(id="ftjob-<!here>`x`", status="<@U123>", created_at=now - 10)
    text = assert_inert(await reply_to(bot, "list"))
    assert code_span(HOSTILE_MODEL) in text and code_span(HOSTILE_FT_MODEL) in text
    assert code_span("ftjob-<!here>`x`") in text


async def test_events_show_hostile_messages_inert(bot: InProcessBot) -> None:
    job = bot.openai.add_job(created_at=int(time.time()) - 100)
    for i, level in enumerate(["info", "warn", "error"]):
        bot.openai.add_event(
            job["id"], f"{level}: {HOSTILE}", level=level, created_at=int(time.time()) - 50 + i
        )
    # A metrics event whose data is not numbers falls back to its (hostile) message.
    bot.openai.add_event(
        job["id"], f"metrics {PING}", type="metrics", data={"step": PING, "train_loss": LINK}
    )
    bot.openai.add_event(job["id"], "x" * 297 + "<!channel>")  # the cut lands inside an entity
    text = assert_inert(await reply_to(bot, f"events {job['id']} limit=10"))
    assert "warn: &lt;!channel&gt;" in text and "error: &lt;!channel&gt;" in text
    assert "metrics &lt;!channel&gt;" in text


async def test_long_hostile_error_is_cut_without_breaking_an_entity(bot: InProcessBot) -> None:
    for pad in range(1494, 1501):
        job = bot.openai.add_job(
            status="failed", error={"code": "x", "message": "y" * pad + "<!channel>", "param": None}
        )
        assert_inert(await reply_to(bot, f"get {job['id']}"))


# -- posts in the channel ------------------------------------------------------------------------


async def test_watch_announcement_of_a_hostile_job_is_inert(bot: InProcessBot) -> None:
    job = bot.openai.add_job(
        model=HOSTILE_MODEL, training_file="file-<https://x.example|y>", status="running"
    )
    response, _ = await bot.command(f"watch {job['id']}", user_id=USER, channel_id=CHANNEL)
    assert response.status_code == 200
    await bot.settle()
    [post] = bot.slack.messages_in(CHANNEL)
    text = assert_inert(as_message(post))
    assert code_span(HOSTILE_MODEL) in text and "<@U42>" in text
    bot.openai.set_status(job["id"], "cancelled")
    await bot.cycle()
    [outcome] = outcome_of(bot, job["id"])
    assert_inert(as_message(outcome))


@pytest.mark.parametrize(
    ("status", "fields", "shown"),
    [
        (
            "succeeded",
            {"fine_tuned_model": HOSTILE_FT_MODEL, "model": HOSTILE_MODEL, "metadata": HOSTILE_METADATA},
            [code_span(HOSTILE_FT_MODEL)],
        ),
        (
            "failed",
            {"error": HOSTILE_ERROR, "model": HOSTILE_MODEL},
            [code_span(HOSTILE_ERROR["code"]), "Training failed: &lt;!channel&gt;"],
        ),
        (
            "failed",
            {"error": {"code": "e", "message": "z" * 1495 + "<!channel>", "param": None}},
            [":x:"],
        ),
        ("cancelled", {"model": HOSTILE_MODEL, "metadata": HOSTILE_METADATA}, ["was cancelled"]),
    ],
    ids=["succeeded", "failed", "failed-long-message", "cancelled"],
)
async def test_outcome_notification_of_a_hostile_job_is_inert(
    bot: InProcessBot, status: str, fields: dict[str, Any], shown: list[str]
) -> None:
    response, _ = await bot.command("create file-abc123 suffix=esc", user_id=USER, channel_id=CHANNEL)
    assert response.status_code == 200
    await bot.settle()
    [announcement] = bot.slack.messages_in(CHANNEL)
    [job_id] = bot.openai.jobs
    bot.openai.set_status(job_id, status, **fields)
    await bot.cycle()
    [outcome] = outcome_of(bot, job_id)
    assert outcome.thread_ts == announcement.ts
    text = assert_inert(as_message(outcome))
    for fragment in shown:
        assert fragment in text
    # The announcement is edited to show the final state (with the hostile model, if any): inert
    # too. The edit that shows the end (the card's status line names it), not merely an edit.
    [edited] = [m for m in bot.slack.messages_in(CHANNEL) if m.ts == announcement.ts]
    assert status.capitalize() in (edited.text or "") + repr(edited.blocks), "the card does not show the end"
    edited_text = assert_inert(as_message(edited))
    if "model" in fields:
        assert code_span(HOSTILE_MODEL) in edited_text


async def test_create_reply_echoes_openais_hostile_rejection_inert(bot: InProcessBot) -> None:
    bot.openai.fail_next(
        400,
        path="/fine_tuning/jobs",
        method="POST",
        body={
            "error": {
                "message": f"Model {HOSTILE_MODEL} is not available: {HOSTILE}",
                "type": "invalid_request_error",
                "param": "<!channel>",
                "code": "model_not_available",
            }
        },
    )
    text = assert_inert(await reply_to(bot, "create file-abc123"))
    assert "is not available" in text and code_span("<!channel>") in text
    assert bot.slack.messages == []
