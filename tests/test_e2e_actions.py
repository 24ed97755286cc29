"""End to end: buttons (signed `block_actions` over HTTP and over Socket Mode), against
`python -m bot` with the fake OpenAI and fake Slack.

The served process shows a click over HTTP (cancel, and the card it edits) and every button over
Socket Mode, which only a running process connects. Refusals, pause/resume, events, checkpoints,
refresh, list paging and filters, and OpenAI's faults on a click: tests/test_inprocess_actions.py.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.bot_process import APP_TOKEN, SIGNING_SECRET
from tests.fakes import FakeOpenAI, FakeSlack, sign_slack_request
from tests.harness import Harness, all_text, fresh, module_bot, start_bot


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    with module_bot(tmp_path_factory.mktemp("bot"), POLL_INTERVAL_SECONDS="1") as harness:
        yield harness


@pytest.fixture
def h(harness: Harness) -> Iterator[Harness]:
    yield from fresh(harness)


def click(h: Harness, action_id: str, value: str, **payload_args: Any) -> tuple[httpx.Response, str]:
    """A click as Slack posts it: form field `payload=`, signed like a command."""
    key = uuid.uuid4().hex
    payload = h.slack.block_actions_payload(
        action_id, value, response_url=h.slack.response_url(key), **payload_args
    )
    body = FakeSlack.block_actions_form(payload)
    headers = sign_slack_request(body, SIGNING_SECRET)
    response = httpx.post(f"{h.bot.url}/slack/events", content=body, headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    return response, key


def started_job(h: Harness, status: str = "running", user_id: str = "U123") -> tuple[str, str]:
    """A job started from Slack by `user_id` in C123, in `status`: its id and its card's ts."""
    h.command("create file-abc123", user_id=user_id)
    h.openai.wait_for(lambda f: f.jobs)
    [job_id] = h.openai.jobs
    # By the announcement's content: a previous test's outcome may still land after the reset.
    h.slack.wait_for(lambda s: announcement(s, job_id))
    h.openai.set_status(job_id, status)
    ts = announcement(h.slack, job_id)
    assert ts is not None
    return job_id, ts


def announcement(slack: FakeSlack, job_id: str) -> str | None:
    for message in slack.messages:
        if message.thread_ts is None and job_id in all_text({"t": message.text, "b": message.blocks}):
            return message.ts
    return None


def card_action_ids(slack: FakeSlack, ts: str) -> list[str]:
    [message] = [m for m in slack.messages if m.ts == ts]
    return [e["action_id"] for b in message.blocks or [] if b["type"] == "actions" for e in b["elements"]]


# -- cancel ---------------------------------------------------------------------------------------


def test_cancel_by_the_starter_reaches_openai_and_updates_the_card(h: Harness) -> None:
    job_id, ts = started_job(h)
    _, key = click(h, "job_cancel", job_id, message_ts=ts)
    assert "Cancellation requested" in all_text(h.reply(key))
    assert len(h.openai.requests_to(rf"^/fine_tuning/jobs/{job_id}/cancel$", "POST")) == 1
    assert h.openai.jobs[job_id]["status"] == "cancelled"
    # Wait for the edit that shows the end: an earlier edit (a poll cycle's) may come first.
    h.slack.wait_for(lambda s: any("Cancelled" in all_text({"blocks": u.blocks}) for u in s.updates))
    assert card_action_ids(h.slack, ts) == ["job_refresh", "job_events", "job_checkpoints"]


# -- Socket Mode, and FINETUNE_ALLOWED_CHANNELS ---------------------------------------------------


def test_buttons_over_socket_mode_and_allowed_channels(tmp_path: Path) -> None:
    with FakeOpenAI() as openai, FakeSlack() as slack:
        bot = start_bot(
            openai, slack, tmp_path, SLACK_APP_TOKEN=APP_TOKEN, FINETUNE_ALLOWED_CHANNELS="C123"
        )
        h = Harness(bot, openai, slack)
        try:
            slack.wait_connected(timeout=15)
            slack.send_slash_command("create file-abc123", user_id="U123", channel_id="C123")
            slack.wait_for(lambda s: s.messages, timeout=10)
            [job_id] = openai.jobs
            openai.set_status(job_id, "running")
            ts = slack.messages[0].ts

            def socket_click(action_id: str, *, answered: bool = True, **kwargs: Any) -> dict[str, Any]:
                key = uuid.uuid4().hex
                kwargs.setdefault("message_ts", ts)
                envelope = slack.send_block_actions(
                    action_id, job_id, response_url=slack.response_url(key), **kwargs
                )
                slack.wait_for_ack(envelope)
                if not answered:
                    return {}
                slack.wait_for(lambda s: s.responses_for(key), timeout=10)
                return slack.responses_for(key)[0].json

            # The card changed (queued → running): it is edited, and the clicker needs no answer.
            socket_click("job_refresh", answered=False)
            slack.wait_for(lambda s: "job_pause" in card_action_ids(h.slack, ts), timeout=10)
            assert "Pause requested" in all_text(socket_click("job_pause"))
            assert openai.jobs[job_id]["status"] == "paused"
            assert "Resume requested" in all_text(socket_click("job_resume"))
            assert openai.jobs[job_id]["status"] == "running"
            # Events and Checkpoints answer privately, over the socket as over HTTP.
            openai.add_event(job_id, "socket-step-9-message")
            openai.add_checkpoint(job_id, 9)
            events = socket_click("job_events")
            assert events["response_type"] == "ephemeral" and "socket-step-9-message" in all_text(events)
            assert ":ckpt-step-9`" in all_text(socket_click("job_checkpoints"))
            # A click from a channel the bot is not enabled in: refused, nothing sent to OpenAI.
            before = len(openai.requests)
            refused = socket_click("job_cancel", channel_id="CELSEWHERE")
            assert "isn't enabled in this channel" in all_text(refused)
            assert len(openai.requests) == before
            assert "Cancellation requested" in all_text(socket_click("job_cancel"))
            assert openai.jobs[job_id]["status"] == "cancelled"
            assert len(openai.requests_to(rf"^/fine_tuning/jobs/{job_id}/cancel$", "POST")) == 1
            # A click on the card of a job that has ended: its state, nothing sent to OpenAI.
            ended = all_text(socket_click("job_cancel"))
            assert "Nothing to cancel" in ended and "already ended" in ended
            assert len(openai.requests_to(rf"^/fine_tuning/jobs/{job_id}/cancel$", "POST")) == 1
        finally:
            assert bot.stop() == 0, bot.logs
