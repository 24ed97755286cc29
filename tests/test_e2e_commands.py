"""End to end: `python -m bot` in HTTP mode, Slack-signed requests in, real HTTP to both fakes."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.bot_process import OPENAI_KEY
from tests.harness import Harness, all_text, fresh, module_bot


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    workdir = tmp_path_factory.mktemp("bot")
    with module_bot(workdir, OPENAI_ORGANIZATION="org-fake", OPENAI_PROJECT="proj_fake") as harness:
        yield harness


@pytest.fixture
def h(harness: Harness) -> Iterator[Harness]:
    yield from fresh(harness)


# -- each subcommand ------------------------------------------------------------------------------


def test_help_is_answered_in_the_ack(h: Harness) -> None:
    response, _ = h.command("help")
    assert response.status_code == 200
    body = response.json()
    assert body["response_type"] == "ephemeral"
    text = all_text(body)
    for sub in ("create", "list", "get", "events", "cancel"):
        assert sub in text
    assert h.openai.requests == []


def test_empty_text_shows_help(h: Harness) -> None:
    response, _ = h.command("")
    assert "create" in all_text(response.json())


def test_create_announces_in_the_channel(h: Harness) -> None:
    response, key = h.command("create file-abc123 suffix=support epochs=3 seed=7", user_id="U42")
    assert response.status_code == 200
    h.slack.wait_for(lambda s: s.messages)
    [request] = h.openai.requests_to(r"^/fine_tuning/jobs$", "POST")
    assert request.json["training_file"] == "file-abc123"
    assert request.json["model"] == "gpt-4o-mini-2024-07-18"
    assert request.json["suffix"] == "support"
    assert request.json["seed"] == 7
    assert request.json["method"] == {
        "type": "supervised",
        "supervised": {"hyperparameters": {"n_epochs": 3}},
    }
    assert request.json["metadata"]["slack_user"] == "U42"
    assert request.headers["openai-organization"] == "org-fake"
    assert request.headers["openai-project"] == "proj_fake"
    [message] = h.slack.messages
    job_id = next(iter(h.openai.jobs))
    assert message.channel == "C123"
    text = all_text({"text": message.text, "blocks": message.blocks})
    assert job_id in text and "<@U42>" in text and "file-abc123" in text
    # The announcement says it all: no ephemeral duplicate, even once a later command is answered.
    h.control()
    assert h.slack.responses_for(key) == []


def test_create_in_a_channel_that_refuses_the_bot_still_starts_the_job(h: Harness) -> None:
    h.slack.fail_next("chat.postMessage", error="not_in_channel")
    _, key = h.command("create file-abc123")
    reply = h.reply(key)
    assert reply["response_type"] == "ephemeral"
    assert "/invite" in all_text(reply)
    assert len(h.openai.jobs) == 1
    assert next(iter(h.openai.jobs)) in all_text(reply)


def test_list_shows_jobs_newest_first(h: Harness) -> None:
    now = int(time.time())
    old = h.openai.add_job(created_at=now - 7200)
    new = h.openai.add_job(created_at=now - 60)
    h.openai.set_status(old["id"], "succeeded", fine_tuned_model="ft:gpt-4o-mini:acme:x:abc", finished_at=now)
    _, key = h.command("list limit=5")
    reply = h.reply(key)
    assert reply["response_type"] == "ephemeral"
    text = all_text(reply)
    assert text.index(new["id"]) < text.index(old["id"])
    assert "ft:gpt-4o-mini:acme:x:abc" in text
    [request] = h.openai.requests_to(r"^/fine_tuning/jobs$", "GET")
    assert request.query["limit"] == "5"


def test_get_shows_the_job(h: Harness) -> None:
    job = h.openai.add_job()
    h.openai.set_status(job["id"], "paused")  # a status the spec's enum lacks
    _, key = h.command(f"status {job['id']}")
    text = all_text(h.reply(key))
    assert job["id"] in text and "Paused" in text


def test_events_are_oldest_to_newest(h: Harness) -> None:
    base = int(time.time()) - 100
    job = h.openai.add_job(created_at=base - 10)
    for i in range(3):
        h.openai.add_event(job["id"], f"step-{i}-message", created_at=base + i)
    _, key = h.command(f"events {job['id']} limit=3")
    text = all_text(h.reply(key))
    assert text.index("step-0-message") < text.index("step-1-message") < text.index("step-2-message")


def test_cancel_cancels(h: Harness) -> None:
    # A job this user started from Slack (who may cancel what: tests/test_e2e_access.py).
    h.command("create file-abc123", user_id="U123")
    h.openai.wait_for(lambda f: f.jobs)
    [job_id] = h.openai.jobs
    h.slack.wait_for(lambda s: s.messages)
    _, key = h.command(f"cancel {job_id}", user_id="U123")
    text = all_text(h.reply(key))
    assert job_id in text and "Cancellation requested" in text
    assert h.openai.jobs[job_id]["status"] == "cancelled"
    assert len(h.openai.requests_to(rf"^/fine_tuning/jobs/{job_id}/cancel$", "POST")) == 1


# -- requests that are not from Slack --------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"secret": "wrong-secret"},
        {"skew": -6 * 60},
        {"skew": 6 * 60},
        {"tamper": True},
    ],
    ids=["bad-signature", "stale", "future", "tampered-body"],
)
def test_unsigned_requests_are_refused(h: Harness, kwargs: dict[str, Any]) -> None:
    response, key = h.command("cancel ftjob-abc123", **kwargs)
    assert response.status_code == 401
    control = h.control()
    assert h.openai_requests_besides(control) == []
    assert h.slack.responses_for(key) == [] and h.slack.messages == []


# -- bad input: a friendly message in the ack, and no request to OpenAI ----------------------------


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("get ../../files", "not a job id"),
        ("get", "needs a job id"),
        ("cancel ftjob-abc/../../x", "not a job id"),
        ("events ftjob-abc limit=500", "from 1 to 100"),
        ("list limit=0", "from 1 to 100"),
        ("create file-abc123 colour=blue", "model"),
        ("create file-abc123 epochs=99", "from 1 to 50"),
        ("create file-abc123 suffix=<!channel>", "suffix"),
        ("deploy everything", "don't know"),
    ],
)
def test_bad_input_gets_a_friendly_message_and_no_openai_call(h: Harness, text: str, fragment: str) -> None:
    response, _ = h.command(text)
    assert response.status_code == 200
    body = response.json()
    assert body["response_type"] == "ephemeral"
    message = all_text(body)
    assert fragment in message
    assert "<!channel>" not in message and "Traceback" not in message
    control = h.control()
    assert h.openai_requests_besides(control) == []


# -- OpenAI errors ---------------------------------------------------------------------------------


def test_unknown_job_is_a_clear_404(h: Harness) -> None:
    _, key = h.command("get ftjob-doesnotexist")
    assert "No fine-tuning job `ftjob-doesnotexist`" in all_text(h.reply(key))


@pytest.mark.parametrize("status", [401, 403])
def test_refused_credentials_never_show_the_key(h: Harness, status: int) -> None:
    h.openai.fail_next(
        status,
        body={
            "error": {
                "message": f"Incorrect API key provided: {OPENAI_KEY}",
                "type": "invalid_request_error",
                "param": None,
                "code": "invalid_api_key",
            }
        },
    )
    _, key = h.command("list")
    text = all_text(h.reply(key))
    assert "credentials" in text and "admin" in text
    assert OPENAI_KEY not in text and OPENAI_KEY[:12] not in text


def test_bad_request_shows_openais_message_escaped(h: Harness) -> None:
    h.openai.fail_next(
        400,
        body={
            "error": {
                "message": "Model <!channel> is not available for fine-tuning",
                "type": "invalid_request_error",
                "param": "model",
                "code": "model_not_available",
            }
        },
    )
    _, key = h.command("create file-abc123 model=gpt-nope")
    text = all_text(h.reply(key))
    assert "is not available for fine-tuning" in text
    assert "<!channel>" not in text and "&lt;!channel&gt;" in text
    assert h.slack.messages == []


def test_transient_failures_are_retried_honouring_retry_after(h: Harness) -> None:
    job = h.openai.add_job()
    h.openai.fail_next(429, headers={"Retry-After": "1"})
    h.openai.fail_next(503)
    _, key = h.command(f"get {job['id']}")
    assert job["id"] in all_text(h.reply(key, timeout=15))
    attempts = h.openai.requests_to(rf"^/fine_tuning/jobs/{job['id']}$", "GET")
    assert [r.status for r in attempts] == [429, 503, 200]
    assert attempts[1].time - attempts[0].time >= 0.95  # Retry-After: 1 was honoured


@pytest.mark.parametrize("kind", ["status", "close", "html"])
def test_persistent_failure_says_openai_is_unavailable(h: Harness, kind: str) -> None:
    h.openai.fail_next(500 if kind == "status" else 502, kind=kind, times=3)
    _, key = h.command("list")
    assert "unavailable" in all_text(h.reply(key, timeout=25)).lower()
    assert len(h.openai.requests_to(r"^/fine_tuning/jobs$", "GET")) == 3


def test_slow_openai_still_acked_in_time(h: Harness) -> None:
    h.openai.latency = 4.0
    try:
        response, key = h.command("list")
        assert response.status_code == 200
        # The ack left before OpenAI answered (no request to it has been answered yet), so nothing
        # had been replied yet. How fast acks are is measured by `python -m bench`, not here.
        assert all(r.status is None for r in h.openai.requests), h.openai.describe()
        assert h.slack.responses_for(key) == []
        assert "No fine-tuning jobs" in all_text(h.reply(key, timeout=15))
    finally:
        h.openai.latency = 0.0


def test_webhook_endpoint_exists_only_when_configured(h: Harness) -> None:
    response = httpx.post(f"{h.bot.url}/openai/webhook", content="{}")
    assert response.status_code == 404
