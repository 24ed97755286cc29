"""End to end: buttons (signed `block_actions` over HTTP and over Socket Mode) and the new
subcommands, against `python -m bot` with the fake OpenAI and fake Slack."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.bot_process import APP_TOKEN, SIGNING_SECRET
from tests.fakes import FakeOpenAI, FakeSlack, sign_slack_request
from tests.harness import Harness, all_text, fresh, module_bot, start_bot, wait_until


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


def card_action_ids(h: Harness, ts: str) -> list[str]:
    [message] = [m for m in h.slack.messages if m.ts == ts]
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
    assert card_action_ids(h, ts) == ["job_refresh", "job_events", "job_checkpoints"]


def test_cancel_by_someone_else_is_refused_and_nothing_reaches_openai(h: Harness) -> None:
    job_id, ts = started_job(h)
    h.openai.clear()
    _, key = click(h, "job_cancel", job_id, message_ts=ts, user_id="U999")
    text = all_text(h.reply(key))
    assert "can't cancel" in text and "<@U123>" in text
    control = h.control()
    assert h.openai_requests_besides(control) == []
    assert h.openai.jobs[job_id]["status"] == "running"
    assert h.slack.updates == []


def test_a_click_on_an_ended_job_answers_with_its_state(h: Harness) -> None:
    job_id, ts = started_job(h, status="succeeded")
    _, key = click(h, "job_cancel", job_id, message_ts=ts)
    text = all_text(h.reply(key))
    assert "Nothing to cancel" in text and "Succeeded" in text and "already ended" in text
    assert h.openai.requests_to(rf"^/fine_tuning/jobs/{job_id}/cancel$") == []


def test_a_forged_value_is_refused_without_openai(h: Harness) -> None:
    _, key = click(h, "job_cancel", "../../files")
    assert "no longer works" in all_text(h.reply(key))
    control = h.control()
    # The module's bot may still be finishing an earlier test's job (its report): only requests
    # about real job ids can be that; the forged value must have caused none at all.
    assert [
        r for r in h.openai_requests_besides(control) if not r.path.startswith("/fine_tuning/jobs/ftjob-")
    ] == []


# -- pause / resume -------------------------------------------------------------------------------


def test_pause_then_resume_by_button(h: Harness) -> None:
    job_id, ts = started_job(h)
    _, key = click(h, "job_pause", job_id, message_ts=ts)
    assert "Pause requested" in all_text(h.reply(key))
    assert h.openai.jobs[job_id]["status"] == "paused"
    h.slack.wait_for(lambda s: "job_resume" in card_action_ids(h, ts))
    _, key = click(h, "job_resume", job_id, message_ts=ts)
    assert "Resume requested" in all_text(h.reply(key))
    assert h.openai.jobs[job_id]["status"] == "running"
    h.slack.wait_for(lambda s: "job_pause" in card_action_ids(h, ts))


def test_pause_resume_and_checkpoints_commands(h: Harness) -> None:
    job_id, _ = started_job(h)
    h.openai.add_checkpoint(job_id, 25, metrics={"step": 25.0, "train_loss": 0.125})
    _, key = h.command(f"pause {job_id}")
    assert "Pause requested" in all_text(h.reply(key))
    _, key = h.command(f"pause {job_id}")  # already paused: its state, not OpenAI's 400
    assert "Nothing to pause" in all_text(h.reply(key))
    _, key = h.command(f"resume {job_id}")
    assert "Resume requested" in all_text(h.reply(key))
    _, key = h.command(f"checkpoints {job_id} limit=5")
    text = all_text(h.reply(key))
    assert "Step 25" in text and "train loss 0.125" in text and ":ckpt-step-25`" in text
    [request] = h.openai.requests_to(rf"^/fine_tuning/jobs/{job_id}/checkpoints$", "GET")
    assert request.query["limit"] == "5"


def test_pause_by_someone_else_is_refused(h: Harness) -> None:
    job_id, _ = started_job(h)
    _, key = h.command(f"pause {job_id}", user_id="U999")
    assert "can't pause" in all_text(h.reply(key))
    assert h.openai.requests_to(rf"^/fine_tuning/jobs/{job_id}/pause$") == []


# -- events / checkpoints / refresh ---------------------------------------------------------------


def test_events_and_checkpoints_buttons_reply_privately(h: Harness) -> None:
    job_id, ts = started_job(h)
    h.openai.add_event(job_id, "step-7-message")
    h.openai.add_checkpoint(job_id, 7)
    _, key = click(h, "job_events", job_id, message_ts=ts)
    reply = h.reply(key)
    assert reply["response_type"] == "ephemeral" and "step-7-message" in all_text(reply)
    _, key = click(h, "job_checkpoints", job_id, message_ts=ts)
    assert ":ckpt-step-7`" in all_text(h.reply(key))


def test_refresh_updates_the_card_and_says_when_nothing_changed(h: Harness) -> None:
    job_id, ts = started_job(h)
    _, key = click(h, "job_refresh", job_id, message_ts=ts)
    h.slack.wait_for(lambda s: any("Running" in all_text({"blocks": u.blocks}) for u in s.updates))
    expected = ["job_refresh", "job_events", "job_pause", "job_cancel", "job_checkpoints"]
    assert card_action_ids(h, ts) == expected
    # Once the poller has seen `running` too, a refresh finds nothing new and says so.
    wait_until(lambda: h.watch_status(job_id) == "running", 20, "the poller to record running")
    _, key = click(h, "job_refresh", job_id, message_ts=ts)
    assert "Nothing has changed" in all_text(h.reply(key))


def test_refresh_on_the_get_reply_replaces_it(h: Harness) -> None:
    job = h.openai.add_job()
    _, key = h.command(f"get {job['id']}")
    reply = h.reply(key)
    actions = [b for b in reply["blocks"] if b["type"] == "actions"]
    assert [e["action_id"] for e in actions[0]["elements"]][:2] == ["job_refresh", "job_events"]
    h.openai.set_status(job["id"], "running")
    _, key = click(h, "job_refresh", job["id"], is_ephemeral=True)
    h.slack.wait_for(lambda s: s.responses_for(key))
    [replaced] = h.slack.responses_for(key)
    assert replaced.json["replace_original"] is True and "Running" in all_text(replaced.json)


# -- list: filters and the next page --------------------------------------------------------------


def test_list_next_page_button_walks_older_jobs(h: Harness) -> None:
    now = int(time.time())
    jobs = [h.openai.add_job(created_at=now - 100 * i) for i in range(3)]
    _, key = h.command("list limit=2")
    reply = h.reply(key)
    [button] = [e for b in reply["blocks"] if b["type"] == "actions" for e in b["elements"]]
    assert button["action_id"] == "list_next_page"
    assert jobs[2]["id"] not in all_text(reply)
    _, key = click(h, "list_next_page", button["value"], is_ephemeral=True, block_id="list_actions")
    text = all_text(h.reply(key))
    assert jobs[2]["id"] in text and jobs[0]["id"] not in text
    assert h.openai.requests_to(r"^/fine_tuning/jobs$", "GET")[-1].query["after"] == jobs[1]["id"]


def test_list_status_filters_on_our_side_and_says_so(h: Harness) -> None:
    now = int(time.time())
    running = h.openai.add_job(created_at=now - 10)
    h.openai.set_status(running["id"], "running")
    queued = h.openai.add_job(created_at=now - 20)
    h.openai.set_status(queued["id"], "queued")
    _, key = h.command("list status=running")
    text = all_text(h.reply(key))
    assert running["id"] in text and queued["id"] not in text
    assert "no status filter" in text


def test_list_mine_asks_openai_for_my_jobs(h: Harness) -> None:
    h.command("create file-abc123", user_id="U777")
    h.openai.wait_for(lambda f: f.jobs)
    [mine] = h.openai.jobs
    other = h.openai.add_job()
    _, key = h.command("list mine", user_id="U777")
    text = all_text(h.reply(key))
    assert mine in text and other["id"] not in text
    request = h.openai.requests_to(r"^/fine_tuning/jobs$", "GET")[-1]
    assert request.query["metadata[slack_user]"] == "U777"


# -- faults and timing ----------------------------------------------------------------------------


def test_openai_5xx_on_a_click_is_a_friendly_message(h: Harness) -> None:
    # Queued: the card reads the events of running jobs each cycle, which would take these faults.
    job_id, ts = started_job(h, status="queued")
    h.openai.fail_next(500, path=rf"/fine_tuning/jobs/{job_id}/events", times=3)
    _, key = click(h, "job_events", job_id, message_ts=ts)
    text = all_text(h.reply(key, timeout=25))
    assert "unavailable" in text.lower() and "Traceback" not in text


def test_a_click_is_acked_before_openai_answers(h: Harness) -> None:
    job = h.openai.add_job()
    h.openai.latency = 4.0
    try:
        response, key = click(h, "job_events", job["id"])
        assert response.status_code == 200
        # The ack left before OpenAI answered the click's request (the poller's own requests, to
        # other paths, are not this click's), so nothing had been replied yet either.
        mine = h.openai.requests_to(rf"^/fine_tuning/jobs/{job['id']}(/events)?$")
        assert all(r.status is None for r in mine), h.openai.describe()
        assert h.slack.responses_for(key) == []
        assert "Created fine-tuning job" in all_text(h.reply(key, timeout=15))
    finally:
        h.openai.latency = 0.0


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
            slack.wait_for(lambda s: "job_pause" in card_action_ids(h, ts), timeout=10)
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
