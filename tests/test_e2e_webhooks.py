"""End to end: OpenAI's fine-tuning webhooks, signed exactly as OpenAI signs them.

Signing is implemented here from the Standard Webhooks description (not with the library the bot
uses), over the spec's own example payloads with the job id swapped in.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fakes import FakeOpenAI, FakeSlack
from tests.fakes.openapi_spec import default_specs_dir
from tests.harness import Harness, start_bot
from tests.test_e2e_notifications import outcomes, start_job

SECRET = "whsec_" + base64.b64encode(b"finetune-bot-test-webhook-key-32b").decode()
OTHER_SECRET = "whsec_" + base64.b64encode(b"some-other-endpoint-key-32-bytes").decode()


def spec_example(event_type: str) -> dict[str, Any]:
    spec = json.loads((default_specs_dir() / "openai-fine-tuning.openapi.json").read_text())
    name = "WebhookFineTuningJob" + event_type.rsplit(".", 1)[1].capitalize()
    example = json.loads(spec["components"]["schemas"][name]["x-oaiMeta"]["example"])
    assert example["type"] == event_type
    return example


def sign(secret: str, webhook_id: str, timestamp: int, body: str) -> str:
    key = base64.b64decode(secret.removeprefix("whsec_"))
    digest = hmac.new(key, f"{webhook_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def deliver(
    h: Harness,
    event_type: str,
    job_id: str | None,
    *,
    secret: str = SECRET,
    webhook_id: str | None = None,
    timestamp: int | None = None,
    skew: int = 0,
    tamper: bool = False,
    drop_header: str | None = None,
    extra_signatures: tuple[str, ...] = (),
) -> httpx.Response:
    event = spec_example(event_type)
    if job_id is not None:
        event["data"]["id"] = job_id
    event["created_at"] = int(time.time())
    body = json.dumps(event)
    webhook_id = webhook_id or f"wh_{uuid.uuid4().hex}"
    # The clock is read now, not at collection: a parametrized timestamp would age while tests run.
    timestamp = (int(time.time()) if timestamp is None else timestamp) + skew
    signatures = " ".join([*extra_signatures, sign(secret, webhook_id, timestamp, body)])
    headers = {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signatures,
        "content-type": "application/json",
    }
    if drop_header:
        del headers[drop_header]
    if tamper:
        body = body.replace(
            event_type, "fine_tuning.job.cancelled" if "succeeded" in event_type else event_type
        )
        body = body.replace('"created_at": ', '"created_at": 1')
    return httpx.post(f"{h.bot.url}/openai/webhook", content=body, headers=headers, timeout=5)


@pytest.fixture
def h(fake_openai: FakeOpenAI, fake_slack: FakeSlack, tmp_path: Path) -> Iterator[Harness]:
    # Polling is effectively off: anything announced within the test came by webhook.
    bot = start_bot(
        fake_openai,
        fake_slack,
        tmp_path,
        OPENAI_WEBHOOK_SECRET=SECRET,
        POLL_INTERVAL_SECONDS="1",
        RECONCILE_INTERVAL_SECONDS="3600",
    )
    harness = Harness(bot, fake_openai, fake_slack)
    try:
        yield harness
    finally:
        assert bot.stop() == 0, bot.logs
    harness.assert_no_secrets()
    assert SECRET not in bot.logs


def announce_by_webhook(h: Harness, job_id: str) -> None:
    """Positive control: a genuine delivery sent after the ones under test is announced; their
    effects, if any, would have shown by then too."""
    assert deliver(h, "fine_tuning.job.succeeded", job_id).status_code == 200
    h.slack.wait_for(lambda s: outcomes(h, job_id), timeout=10, message=f"the control {job_id} announced")


def test_spec_examples_are_what_we_sign() -> None:
    for event_type in ("fine_tuning.job.succeeded", "fine_tuning.job.failed", "fine_tuning.job.cancelled"):
        example = spec_example(event_type)
        assert example["object" if "object" in example else "type"]
        assert isinstance(example["data"]["id"], str)


@pytest.mark.parametrize("status", ["succeeded", "failed", "cancelled"])
def test_a_valid_event_announces_within_seconds_without_polling(h: Harness, status: str) -> None:
    job_id, announcement = start_job(h)
    h.openai.set_status(job_id, status)
    response = deliver(h, f"fine_tuning.job.{status}", job_id)
    assert response.status_code == 200
    h.slack.wait_for(lambda s: outcomes(h, job_id), timeout=3)
    [message] = outcomes(h, job_id)
    assert message.thread_ts == announcement.ts and message.reply_broadcast
    # Only the webhook asked about this job: one retrieve, no list pages since the start-up cycle.
    assert len(h.openai.requests_to(rf"^/fine_tuning/jobs/{job_id}$", "GET")) == 1


@pytest.mark.parametrize(
    "kwargs",
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
def test_bad_deliveries_are_refused_with_no_side_effect(h: Harness, kwargs: dict[str, Any]) -> None:
    job_id, _ = start_job(h)
    control, _ = start_job(h)
    h.openai.set_status(job_id, "succeeded")
    h.openai.set_status(control, "succeeded")
    webhook_id = f"wh_{uuid.uuid4().hex}"
    response = deliver(h, "fine_tuning.job.succeeded", job_id, webhook_id=webhook_id, **kwargs)
    assert response.status_code in (400, 401)
    announce_by_webhook(h, control)
    assert outcomes(h, job_id) == [] and h.openai.requests_to(rf"^/fine_tuning/jobs/{job_id}$") == []
    # The refused delivery consumed nothing: OpenAI's genuine retry of that id still works.
    assert deliver(h, "fine_tuning.job.succeeded", job_id, webhook_id=webhook_id).status_code == 200
    h.slack.wait_for(lambda s: outcomes(h, job_id), timeout=3)


@pytest.mark.parametrize(
    "body", ["{not json", '{"id": "evt_1", "type": "fine_tuning.job.succeeded"}', "[]", "\udcff"]
)
def test_malformed_bodies_are_refused(h: Harness, body: str) -> None:
    timestamp = int(time.time())
    raw = body.encode("utf-8", "surrogateescape")
    headers = {
        "webhook-id": "wh_malformed",
        "webhook-timestamp": str(timestamp),
        # Correctly signed where the body is text at all: only the content is wrong.
        "webhook-signature": sign(SECRET, "wh_malformed", timestamp, body if body.isascii() else ""),
    }
    response = httpx.post(f"{h.bot.url}/openai/webhook", content=raw, headers=headers, timeout=5)
    assert response.status_code in (400, 401)
    for bad_signature in ("v1", "v1,", "v1,***", "garbage", ""):
        headers["webhook-signature"] = bad_signature
        assert httpx.post(f"{h.bot.url}/openai/webhook", content=raw, headers=headers).status_code in (
            400,
            401,
        )
    assert h.bot.process is not None and h.bot.process.poll() is None


def test_any_matching_signature_of_several_is_enough(h: Harness) -> None:
    job_id, _ = start_job(h)
    h.openai.set_status(job_id, "succeeded")
    old = sign(OTHER_SECRET, "x", 1, "y")
    assert (
        deliver(h, "fine_tuning.job.succeeded", job_id, extra_signatures=(old, "v2,abc")).status_code == 200
    )
    h.slack.wait_for(lambda s: outcomes(h, job_id), timeout=3)


def test_the_same_event_three_times_is_one_message(h: Harness) -> None:
    job_id, _ = start_job(h)
    h.openai.set_status(job_id, "succeeded")
    for _ in range(3):
        response = deliver(h, "fine_tuning.job.succeeded", job_id, webhook_id="wh_same")
        assert response.status_code == 200
    h.slack.wait_for(lambda s: outcomes(h, job_id), timeout=3)
    control, _ = start_job(h)
    h.openai.set_status(control, "succeeded")
    announce_by_webhook(h, control)
    assert len(outcomes(h, job_id)) == 1
    assert len(h.openai.requests_to(rf"^/fine_tuning/jobs/{job_id}$", "GET")) == 1


def test_events_for_unwatched_jobs_are_acknowledged_and_ignored(h: Harness) -> None:
    job = h.openai.add_job()
    h.openai.set_status(job["id"], "succeeded")
    assert deliver(h, "fine_tuning.job.succeeded", job["id"]).status_code == 200
    assert deliver(h, "fine_tuning.job.failed", None).status_code == 200  # the spec's example id as is
    control, _ = start_job(h, channel_id="C456")
    h.openai.set_status(control, "succeeded")
    announce_by_webhook(h, control)
    assert {m.channel for m in h.slack.messages} == {"C456"}, h.slack.describe()
    assert h.openai.requests_to(rf"^/fine_tuning/jobs/{job['id']}$", "GET") == []


def test_webhook_and_poller_racing_announce_once(
    fake_openai: FakeOpenAI, fake_slack: FakeSlack, tmp_path: Path
) -> None:
    bot = start_bot(
        fake_openai, fake_slack, tmp_path, OPENAI_WEBHOOK_SECRET=SECRET, RECONCILE_INTERVAL_SECONDS="1"
    )
    h = Harness(bot, fake_openai, fake_slack)
    try:
        jobs = [start_job(h)[0] for _ in range(6)]
        for job_id in jobs:
            fake_openai.set_status(job_id, "succeeded")
            for _ in range(2):
                deliver(h, "fine_tuning.job.succeeded", job_id)  # two distinct deliveries each
        fake_slack.wait_for(lambda s: all(outcomes(h, j) for j in jobs), timeout=10)
        h.wait_poll_cycles(2)  # a complete poller cycle after the last post
        assert {j: len(outcomes(h, j)) for j in jobs} == {j: 1 for j in jobs}
    finally:
        assert bot.stop() == 0, bot.logs
