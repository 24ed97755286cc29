"""OpenAI's fine-tuning webhooks, signed exactly as OpenAI signs them (tests/test_e2e_webhooks.py
builds the deliveries), sent to the production ASGI app and webhook receiver in this test's event
loop (tests/inprocess.py). No poll cycle runs unless a test runs one: whatever is announced came
by webhook. The real process receiving one over its socket stays in tests/test_e2e_webhooks.py;
uvicorn's and h11's limits on a real socket in tests/test_forged_requests.py.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bot.webhooks import MAX_BODY
from tests.fakes import FakeOpenAI, FakeSlack
from tests.inprocess import InProcessBot
from tests.test_e2e_webhooks import OTHER_SECRET, SECRET, sign, signed_delivery
from tests.test_inprocess_notifications import assert_no_secrets, outcomes, start_job


@pytest.fixture
async def bot(
    fake_openai: FakeOpenAI, fake_slack: FakeSlack, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> AsyncIterator[InProcessBot]:
    caplog.set_level(logging.INFO)
    bot = InProcessBot(fake_openai, fake_slack, tmp_path, OPENAI_WEBHOOK_SECRET=SECRET)
    yield bot
    await bot.stop()
    assert_no_secrets(bot, caplog)
    assert SECRET not in caplog.text


async def deliver(bot: InProcessBot, event_type: str, job_id: str | None, **forgery: Any) -> httpx.Response:
    body, headers = signed_delivery(event_type, job_id, **forgery)
    return await bot.http.post("/openai/webhook", content=body, headers=headers)


async def announce_by_webhook(bot: InProcessBot, job_id: str) -> None:
    """Positive control: a genuine delivery sent after the ones under test is announced; their
    effects, if any, would have shown by then too."""
    assert (await deliver(bot, "fine_tuning.job.succeeded", job_id)).status_code == 200
    await bot.settle()
    assert outcomes(bot, job_id), f"the control {job_id} was not announced"


def retrieves(bot: InProcessBot, job_id: str) -> list[Any]:
    return bot.openai.requests_to(rf"^/fine_tuning/jobs/{job_id}$", "GET")


@pytest.mark.parametrize("status", ["succeeded", "failed", "cancelled"])
async def test_a_valid_event_announces_without_polling(bot: InProcessBot, status: str) -> None:
    job_id, announcement = await start_job(bot)
    bot.openai.set_status(job_id, status)
    response = await deliver(bot, f"fine_tuning.job.{status}", job_id)
    assert response.status_code == 200
    await bot.settle()
    [message] = outcomes(bot, job_id)
    assert message.thread_ts == announcement.ts and message.reply_broadcast
    assert status in message.text or status in str(message.blocks)
    # Only the webhook asked about this job: one retrieve, and no list page at all (no cycle ran).
    assert len(retrieves(bot, job_id)) == 1
    assert bot.openai.requests_to(r"^/fine_tuning/jobs$", "GET") == []


@pytest.mark.parametrize(
    "forgery",
    [
        {"secret": OTHER_SECRET},
        {"tamper": True},
        {"skew": -6 * 60},
        {"skew": 6 * 60},
        {"drop_header": "webhook-id"},
        {"drop_header": "webhook-timestamp"},
        {"drop_header": "webhook-signature"},
    ],
    ids=["wrong-secret", "tampered-body", "stale", "future", "no-id", "no-timestamp", "no-signature"],
)
async def test_bad_deliveries_are_refused_with_no_side_effect(
    bot: InProcessBot, forgery: dict[str, Any]
) -> None:
    job_id, _ = await start_job(bot)
    control, _ = await start_job(bot)
    bot.openai.set_status(job_id, "succeeded")
    bot.openai.set_status(control, "succeeded")
    webhook_id = f"wh_{uuid.uuid4().hex}"
    response = await deliver(bot, "fine_tuning.job.succeeded", job_id, webhook_id=webhook_id, **forgery)
    assert response.status_code in (400, 401)
    await announce_by_webhook(bot, control)
    assert outcomes(bot, job_id) == [] and retrieves(bot, job_id) == []
    # The refused delivery consumed nothing: OpenAI's genuine retry of that id still works.
    assert (await deliver(bot, "fine_tuning.job.succeeded", job_id, webhook_id=webhook_id)).status_code == 200
    await bot.settle()
    assert len(outcomes(bot, job_id)) == 1


@pytest.mark.parametrize(
    "body", ["{not json", '{"id": "evt_1", "type": "fine_tuning.job.succeeded"}', "[]", "\udcff"]
)
async def test_malformed_bodies_are_refused(bot: InProcessBot, body: str) -> None:
    timestamp = int(time.time())
    raw = body.encode("utf-8", "surrogateescape")
    headers = {
        "webhook-id": "wh_malformed",
        "webhook-timestamp": str(timestamp),
        # Correctly signed where the body is text at all: only the content is wrong.
        "webhook-signature": sign(SECRET, "wh_malformed", timestamp, body if body.isascii() else ""),
    }
    # The ASGI transport raises whatever the app raises: an answer is an answer, not a crash.
    response = await bot.http.post("/openai/webhook", content=raw, headers=headers)
    assert response.status_code in (400, 401)
    for bad_signature in ("v1", "v1,", "v1,***", "garbage", ""):
        headers["webhook-signature"] = bad_signature
        response = await bot.http.post("/openai/webhook", content=raw, headers=headers)
        assert response.status_code in (400, 401)
    # And the receiver still works.
    control, _ = await start_job(bot)
    bot.openai.set_status(control, "succeeded")
    await announce_by_webhook(bot, control)


async def test_bodies_over_the_cap_are_refused_unread_and_change_nothing(bot: InProcessBot) -> None:
    job_id, _ = await start_job(bot)
    bot.openai.set_status(job_id, "succeeded")
    body, headers = signed_delivery("fine_tuning.job.succeeded", job_id, webhook_id="wh_big")
    # Signed correctly over a body padded past the cap: the size alone refuses it.
    padded = body[:-1] + ', "padding": "' + "x" * MAX_BODY + '"}'
    signature = sign(SECRET, "wh_big", int(headers["webhook-timestamp"]), padded)
    signed = {**headers, "webhook-signature": signature}
    declared = await bot.http.post("/openai/webhook", content=padded, headers=signed)
    assert declared.status_code == 413

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it streams
        data = padded.encode()
        for start in range(0, len(data), 16 * 1024):
            yield data[start : start + 16 * 1024]

    streamed = await bot.http.post("/openai/webhook", content=chunks(), headers=signed)
    assert streamed.status_code == 413 and "content-length" not in streamed.request.headers
    await bot.settle()
    assert outcomes(bot, job_id) == [] and retrieves(bot, job_id) == []
    # Nothing was remembered of it: the genuine delivery of that id is handled.
    assert (await deliver(bot, "fine_tuning.job.succeeded", job_id, webhook_id="wh_big")).status_code == 200
    await bot.settle()
    assert len(outcomes(bot, job_id)) == 1


async def test_any_matching_signature_of_several_is_enough(bot: InProcessBot) -> None:
    job_id, _ = await start_job(bot)
    bot.openai.set_status(job_id, "succeeded")
    old = sign(OTHER_SECRET, "x", 1, "y")
    response = await deliver(bot, "fine_tuning.job.succeeded", job_id, extra_signatures=(old, "v2,abc"))
    assert response.status_code == 200
    await bot.settle()
    assert len(outcomes(bot, job_id)) == 1


async def test_the_same_event_three_times_is_one_message(bot: InProcessBot) -> None:
    job_id, _ = await start_job(bot)
    bot.openai.set_status(job_id, "succeeded")
    answers = []
    for _ in range(3):
        response = await deliver(bot, "fine_tuning.job.succeeded", job_id, webhook_id="wh_same")
        assert response.status_code == 200
        answers.append(response.json())
    assert answers[1:] == [{"ok": True, "duplicate": True}] * 2
    await bot.settle()
    control, _ = await start_job(bot)
    bot.openai.set_status(control, "succeeded")
    await announce_by_webhook(bot, control)
    assert len(outcomes(bot, job_id)) == 1
    assert len(retrieves(bot, job_id)) == 1


async def test_events_for_unwatched_jobs_are_acknowledged_and_ignored(bot: InProcessBot) -> None:
    job = bot.openai.add_job()
    bot.openai.set_status(job["id"], "succeeded")
    assert (await deliver(bot, "fine_tuning.job.succeeded", job["id"])).status_code == 200
    assert (await deliver(bot, "fine_tuning.job.failed", None)).status_code == 200  # the spec's example id
    control, _ = await start_job(bot, channel_id="C456")
    bot.openai.set_status(control, "succeeded")
    await announce_by_webhook(bot, control)
    assert {m.channel for m in bot.slack.messages} == {"C456"}, bot.slack.describe()
    assert retrieves(bot, job["id"]) == []


@pytest.mark.parametrize("order", ["webhooks-first", "cycle-first", "interleaved"])
async def test_webhook_and_poller_racing_announce_once(bot: InProcessBot, order: str) -> None:
    jobs = [(await start_job(bot))[0] for _ in range(6)]
    for job_id in jobs:
        bot.openai.set_status(job_id, "succeeded")

    def deliveries() -> list[Any]:  # two distinct deliveries each
        return [deliver(bot, "fine_tuning.job.succeeded", j) for j in jobs for _ in range(2)]

    cycle = bot.parts.poller.cycle
    match order:
        case "webhooks-first":
            racers = [*deliveries(), cycle()]
        case "cycle-first":
            racers = [cycle(), *deliveries()]
        case _:
            webhooks = deliveries()
            racers = [*webhooks[:6], cycle(), *webhooks[6:], cycle()]
    # All at once in one event loop: the poller's and the receiver's store calls run in threads,
    # their requests to OpenAI and Slack interleave at every await.
    answers = await asyncio.gather(*racers)
    assert all(a.status_code == 200 for a in answers if isinstance(a, httpx.Response))
    await bot.settle()
    await bot.cycle(2)  # complete cycles after the last post
    assert {j: len(outcomes(bot, j)) for j in jobs} == {j: 1 for j in jobs}
