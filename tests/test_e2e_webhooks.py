"""End to end: OpenAI's fine-tuning webhooks, signed exactly as OpenAI signs them.

Signing is implemented here from the Standard Webhooks description (not with the library the bot
uses), over the spec's own example payloads with the job id swapped in. The real process is shown
receiving a valid event on its socket and announcing it within seconds, with polling all but off.
Forged, replayed, malformed and oversized deliveries, every event type, redeliveries, unwatched
jobs and the race with the poller go through the same receiver and ASGI app in process:
tests/test_inprocess_webhooks.py (which builds its deliveries with `signed_delivery` here).
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


def signed_delivery(
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
) -> tuple[str, dict[str, str]]:
    """The body and headers OpenAI would send for this event (or a forgery of them, as asked)."""
    event = spec_example(event_type)
    if job_id is not None:
        event["data"]["id"] = job_id
    event["created_at"] = int(time.time())
    body = json.dumps(event)
    webhook_id = webhook_id or f"wh_{uuid.uuid4().hex}"
    # The clock is read now, not at collection: a parametrized timestamp would age while tests run.
    # The bot checks timestamps against the system's clock (the standardwebhooks package), in
    # process too, so this is the system's time, never a fake clock's.
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
    return body, headers


def deliver(h: Harness, event_type: str, job_id: str | None, **forgery: Any) -> httpx.Response:
    body, headers = signed_delivery(event_type, job_id, **forgery)
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


def test_spec_examples_are_what_we_sign() -> None:
    for event_type in ("fine_tuning.job.succeeded", "fine_tuning.job.failed", "fine_tuning.job.cancelled"):
        example = spec_example(event_type)
        assert example["object" if "object" in example else "type"]
        assert isinstance(example["data"]["id"], str)


def test_a_valid_event_announces_within_seconds_without_polling(h: Harness) -> None:
    job_id, announcement = start_job(h)
    h.openai.set_status(job_id, "succeeded")
    response = deliver(h, "fine_tuning.job.succeeded", job_id)
    assert response.status_code == 200
    h.slack.wait_for(lambda s: outcomes(h, job_id), timeout=3)
    [message] = outcomes(h, job_id)
    assert message.thread_ts == announcement.ts and message.reply_broadcast
    # Only the webhook asked about this job: one retrieve, no list pages since the start-up cycle.
    assert len(h.openai.requests_to(rf"^/fine_tuning/jobs/{job_id}$", "GET")) == 1
