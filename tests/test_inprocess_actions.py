"""Buttons (signed `block_actions` through the real signature check and Bolt listeners) and the
pause/resume/checkpoints/list subcommands, in this test's event loop on a fake clock
(tests/inprocess.py): a poll cycle is `bot.cycle()`, OpenAI's retry waits pass on the bot's clock.

tests/test_e2e_actions.py keeps a click over HTTP on the served process (cancel, and the card it
edits) and the buttons over Socket Mode, which only a running process connects.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fakes import FakeOpenAI, FakeSlack
from tests.harness import all_text
from tests.inprocess import InProcessBot
from tests.test_e2e_actions import announcement, card_action_ids
from tests.test_inprocess_notifications import assert_no_secrets
from tests.test_inprocess_notifications import start_job as create_job


@pytest.fixture
async def bot(
    fake_openai: FakeOpenAI, fake_slack: FakeSlack, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> AsyncIterator[InProcessBot]:
    caplog.set_level(logging.INFO)
    bot = InProcessBot(fake_openai, fake_slack, tmp_path)
    yield bot
    await bot.stop()
    assert_no_secrets(bot, caplog)


async def click(
    bot: InProcessBot, action_id: str, value: str, **payload_args: Any
) -> tuple[httpx.Response, str]:
    """A click as Slack posts it (signed form field `payload=`); the ack and its reply's key."""
    key = uuid.uuid4().hex
    payload = bot.slack.block_actions_payload(
        action_id, value, response_url=bot.slack.response_url(key), **payload_args
    )
    response = await bot.interact(payload)
    assert response.status_code == 200, response.text
    return response, key


async def started_job(bot: InProcessBot, status: str = "running", user_id: str = "U123") -> tuple[str, str]:
    """A job started from Slack by `user_id` in C123, in `status`: its id and its card's ts."""
    job_id, _ = await create_job(bot, user_id=user_id)
    bot.openai.set_status(job_id, status)
    ts = announcement(bot.slack, job_id)
    assert ts is not None
    return job_id, ts


def card_shows(bot: InProcessBot, ts: str, text: str) -> bool:
    return any(text in all_text({"blocks": u.blocks}) for u in bot.slack.updates if u.ts == ts)


# -- cancel ---------------------------------------------------------------------------------------


async def test_cancel_by_someone_else_is_refused_and_nothing_reaches_openai(bot: InProcessBot) -> None:
    job_id, ts = await started_job(bot)
    bot.openai.clear()
    _, key = await click(bot, "job_cancel", job_id, message_ts=ts, user_id="U999")
    text = all_text(await bot.reply(key))
    assert "can't cancel" in text and "<@U123>" in text
    control = await bot.control()
    assert [r for r in bot.openai.requests if not control.owns(r)] == []
    assert bot.openai.jobs[job_id]["status"] == "running"
    assert bot.slack.updates == []


async def test_a_click_on_an_ended_job_answers_with_its_state(bot: InProcessBot) -> None:
    job_id, ts = await started_job(bot, status="succeeded")
    _, key = await click(bot, "job_cancel", job_id, message_ts=ts)
    text = all_text(await bot.reply(key))
    assert "Nothing to cancel" in text and "Succeeded" in text and "already ended" in text
    assert bot.openai.requests_to(rf"^/fine_tuning/jobs/{job_id}/cancel$") == []


async def test_a_forged_value_is_refused_without_openai(bot: InProcessBot) -> None:
    _, key = await click(bot, "job_cancel", "../../files")
    assert "no longer works" in all_text(await bot.reply(key))
    control = await bot.control()
    # A bot of its own: not a single request, besides the control's, reached OpenAI.
    assert [r for r in bot.openai.requests if not control.owns(r)] == []


# -- pause / resume -------------------------------------------------------------------------------


async def test_pause_then_resume_by_button(bot: InProcessBot) -> None:
    job_id, ts = await started_job(bot)
    _, key = await click(bot, "job_pause", job_id, message_ts=ts)
    assert "Pause requested" in all_text(await bot.reply(key))
    assert bot.openai.jobs[job_id]["status"] == "paused"
    assert "job_resume" in card_action_ids(bot.slack, ts)
    _, key = await click(bot, "job_resume", job_id, message_ts=ts)
    assert "Resume requested" in all_text(await bot.reply(key))
    assert bot.openai.jobs[job_id]["status"] == "running"
    assert "job_pause" in card_action_ids(bot.slack, ts)


async def test_pause_resume_and_checkpoints_commands(bot: InProcessBot) -> None:
    job_id, _ = await started_job(bot)
    bot.openai.add_checkpoint(job_id, 25, metrics={"step": 25.0, "train_loss": 0.125})
    _, key = await bot.command(f"pause {job_id}")
    assert "Pause requested" in all_text(await bot.reply(key))
    _, key = await bot.command(f"pause {job_id}")  # already paused: its state, not OpenAI's 400
    assert "Nothing to pause" in all_text(await bot.reply(key))
    _, key = await bot.command(f"resume {job_id}")
    assert "Resume requested" in all_text(await bot.reply(key))
    _, key = await bot.command(f"checkpoints {job_id} limit=5")
    text = all_text(await bot.reply(key))
    assert "Step 25" in text and "train loss 0.125" in text and ":ckpt-step-25`" in text
    [request] = bot.openai.requests_to(rf"^/fine_tuning/jobs/{job_id}/checkpoints$", "GET")
    assert request.query["limit"] == "5"


async def test_pause_by_someone_else_is_refused(bot: InProcessBot) -> None:
    job_id, _ = await started_job(bot)
    _, key = await bot.command(f"pause {job_id}", user_id="U999")
    assert "can't pause" in all_text(await bot.reply(key))
    assert bot.openai.requests_to(rf"^/fine_tuning/jobs/{job_id}/pause$") == []


# -- events / checkpoints / refresh ---------------------------------------------------------------


async def test_events_and_checkpoints_buttons_reply_privately(bot: InProcessBot) -> None:
    job_id, ts = await started_job(bot)
    bot.openai.add_event(job_id, "step-7-message")
    bot.openai.add_checkpoint(job_id, 7)
    _, key = await click(bot, "job_events", job_id, message_ts=ts)
    reply = await bot.reply(key)
    assert reply["response_type"] == "ephemeral" and "step-7-message" in all_text(reply)
    _, key = await click(bot, "job_checkpoints", job_id, message_ts=ts)
    assert ":ckpt-step-7`" in all_text(await bot.reply(key))


async def test_refresh_updates_the_card_and_says_when_nothing_changed(bot: InProcessBot) -> None:
    job_id, ts = await started_job(bot)
    _, key = await click(bot, "job_refresh", job_id, message_ts=ts)
    await bot.settle()
    assert card_shows(bot, ts, "Running")
    expected = ["job_refresh", "job_events", "job_pause", "job_cancel", "job_checkpoints"]
    assert card_action_ids(bot.slack, ts) == expected
    # Once the poller has seen `running` too, a refresh finds nothing new and says so.
    await bot.cycle()
    [watch] = bot.store.channel_watches("C123")
    assert watch.job_id == job_id and watch.last_status == "running"
    _, key = await click(bot, "job_refresh", job_id, message_ts=ts)
    assert "Nothing has changed" in all_text(await bot.reply(key))


async def test_refresh_on_the_get_reply_replaces_it(bot: InProcessBot) -> None:
    job = bot.openai.add_job()
    _, key = await bot.command(f"get {job['id']}")
    reply = await bot.reply(key)
    actions = [b for b in reply["blocks"] if b["type"] == "actions"]
    assert [e["action_id"] for e in actions[0]["elements"]][:2] == ["job_refresh", "job_events"]
    bot.openai.set_status(job["id"], "running")
    _, key = await click(bot, "job_refresh", job["id"], is_ephemeral=True)
    await bot.settle()
    [replaced] = bot.slack.responses_for(key)
    assert replaced.json["replace_original"] is True and "Running" in all_text(replaced.json)


# -- list: filters and the next page --------------------------------------------------------------


async def test_list_next_page_button_walks_older_jobs(bot: InProcessBot) -> None:
    now = int(time.time())
    jobs = [bot.openai.add_job(created_at=now - 100 * i) for i in range(3)]
    _, key = await bot.command("list limit=2")
    reply = await bot.reply(key)
    [button] = [e for b in reply["blocks"] if b["type"] == "actions" for e in b["elements"]]
    assert button["action_id"] == "list_next_page"
    assert jobs[2]["id"] not in all_text(reply)
    _, key = await click(bot, "list_next_page", button["value"], is_ephemeral=True, block_id="list_actions")
    text = all_text(await bot.reply(key))
    assert jobs[2]["id"] in text and jobs[0]["id"] not in text
    assert bot.openai.requests_to(r"^/fine_tuning/jobs$", "GET")[-1].query["after"] == jobs[1]["id"]


async def test_list_status_filters_on_our_side_and_says_so(bot: InProcessBot) -> None:
    now = int(time.time())
    running = bot.openai.add_job(created_at=now - 10)
    bot.openai.set_status(running["id"], "running")
    queued = bot.openai.add_job(created_at=now - 20)
    bot.openai.set_status(queued["id"], "queued")
    _, key = await bot.command("list status=running")
    text = all_text(await bot.reply(key))
    assert running["id"] in text and queued["id"] not in text
    assert "no status filter" in text


async def test_list_mine_asks_openai_for_my_jobs(bot: InProcessBot) -> None:
    mine, _ = await create_job(bot, user_id="U777")
    other = bot.openai.add_job()
    _, key = await bot.command("list mine", user_id="U777")
    text = all_text(await bot.reply(key))
    assert mine in text and other["id"] not in text
    request = bot.openai.requests_to(r"^/fine_tuning/jobs$", "GET")[-1]
    assert request.query["metadata[slack_user]"] == "U777"


# -- faults and timing ----------------------------------------------------------------------------


async def test_openai_5xx_on_a_click_is_a_friendly_message(bot: InProcessBot) -> None:
    job_id, ts = await started_job(bot, status="queued")
    bot.openai.fail_next(500, path=rf"/fine_tuning/jobs/{job_id}/events", times=3)
    _, key = await click(bot, "job_events", job_id, message_ts=ts)
    text = all_text(await bot.reply(key))
    assert "unavailable" in text.lower() and "Traceback" not in text
    assert len(bot.openai.requests_to(rf"^/fine_tuning/jobs/{job_id}/events$", "GET")) == 3


async def test_a_click_is_acked_before_openai_answers(bot: InProcessBot) -> None:
    job = bot.openai.add_job()
    # Real seconds on the fake's side: the ack is read in this event loop right after the
    # listener returns, long before an answer that slow could arrive.
    bot.openai.latency = 1.0
    response, key = await click(bot, "job_events", job["id"])
    assert response.status_code == 200
    # The ack is back; the click's request then reaches OpenAI and is still unanswered, so the
    # ack did not wait for it (without seeing the request in flight, "nothing answered yet"
    # would hold trivially).
    pattern = rf"^/fine_tuning/jobs/{job['id']}(/events)?$"
    await bot.openai.wait_for_async(lambda f: f.requests_to(pattern), timeout=5)
    assert all(r.status is None for r in bot.openai.requests_to(pattern)), bot.openai.describe()
    assert bot.slack.responses_for(key) == []
    assert "Created fine-tuning job" in all_text(await bot.reply(key))
    bot.openai.latency = 0.0
