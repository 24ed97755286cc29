"""`/finetune` subcommands, signature checks, bad input, OpenAI's errors and who may cancel what
where: the production listeners, runner and OpenAI client in this test's event loop, on a fake
clock (tests/inprocess.py). Slack's requests go through the real signature check and Bolt app;
the bot's calls go over real HTTP to the fake OpenAI and fake Slack. Retry waits pass on the
bot's clock, so OpenAI's faults cost no wall time.

What only a served process shows stays in tests/test_e2e_commands.py (a command answered by the
process, the create announcement, the ack leaving before OpenAI answers, the webhook route only when
configured) and tests/test_e2e_access.py (a reply still in flight at SIGTERM is finished).
"""

from __future__ import annotations

import logging
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.bot_process import OPENAI_KEY, SIGNING_SECRET
from tests.fakes import FakeOpenAI, FakeSlack, sign_slack_request
from tests.harness import all_text
from tests.inprocess import InProcessBot
from tests.test_inprocess_notifications import assert_no_secrets, start_job

ADMIN = "UADMIN1"

MakeBot = Callable[..., InProcessBot]


@pytest.fixture
async def make_bot(
    fake_openai: FakeOpenAI, fake_slack: FakeSlack, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> AsyncIterator[MakeBot]:
    """Bots on this test's fakes; afterwards none left work running, and no secret reached Slack or
    a log record (the fake_openai fixture checks every answer was spec-valid)."""
    caplog.set_level(logging.INFO)
    bots: list[InProcessBot] = []

    def make(**env: str) -> InProcessBot:
        workdir = tmp_path / f"bot{len(bots)}"
        workdir.mkdir()
        bots.append(InProcessBot(fake_openai, fake_slack, workdir, **env))
        return bots[-1]

    yield make
    for bot in bots:
        await bot.stop()
        assert_no_secrets(bot, caplog)


@pytest.fixture
def bot(make_bot: MakeBot) -> InProcessBot:
    """As the end-to-end module's bot: an OpenAI organization and project configured."""
    return make_bot(OPENAI_ORGANIZATION="org-fake", OPENAI_PROJECT="proj_fake")


# -- each subcommand ------------------------------------------------------------------------------


async def test_empty_text_shows_help(bot: InProcessBot) -> None:
    response, _ = await bot.command("")
    assert response.status_code == 200
    assert "create" in all_text(response.json())
    await bot.settle()
    assert bot.openai.requests == []


async def test_create_in_a_channel_that_refuses_the_bot_still_starts_the_job(bot: InProcessBot) -> None:
    bot.slack.fail_next("chat.postMessage", error="not_in_channel")
    _, key = await bot.command("create file-abc123")
    reply = await bot.reply(key)
    assert reply["response_type"] == "ephemeral"
    assert "/invite" in all_text(reply)
    assert len(bot.openai.jobs) == 1
    assert next(iter(bot.openai.jobs)) in all_text(reply)


async def test_list_shows_jobs_newest_first(bot: InProcessBot) -> None:
    now = int(time.time())
    old = bot.openai.add_job(created_at=now - 7200)
    new = bot.openai.add_job(created_at=now - 60)
    model = "ft:gpt-4o-mini:acme:x:abc"
    bot.openai.set_status(old["id"], "succeeded", fine_tuned_model=model, finished_at=now)
    _, key = await bot.command("list limit=5")
    reply = await bot.reply(key)
    assert reply["response_type"] == "ephemeral"
    text = all_text(reply)
    assert text.index(new["id"]) < text.index(old["id"])
    assert "ft:gpt-4o-mini:acme:x:abc" in text
    [request] = bot.openai.requests_to(r"^/fine_tuning/jobs$", "GET")
    assert request.query["limit"] == "5"
    assert request.headers["openai-organization"] == "org-fake"
    assert request.headers["openai-project"] == "proj_fake"


async def test_get_shows_the_job(bot: InProcessBot) -> None:
    job = bot.openai.add_job()
    bot.openai.set_status(job["id"], "paused")  # a status the spec's enum lacks
    _, key = await bot.command(f"status {job['id']}")
    text = all_text(await bot.reply(key))
    assert job["id"] in text and "Paused" in text


async def test_events_are_oldest_to_newest(bot: InProcessBot) -> None:
    base = int(time.time()) - 100
    job = bot.openai.add_job(created_at=base - 10)
    for i in range(3):
        bot.openai.add_event(job["id"], f"step-{i}-message", created_at=base + i)
    _, key = await bot.command(f"events {job['id']} limit=3")
    text = all_text(await bot.reply(key))
    assert text.index("step-0-message") < text.index("step-1-message") < text.index("step-2-message")


async def test_cancel_cancels(bot: InProcessBot) -> None:
    # A job this user started from Slack (who may cancel what: the access tests below).
    job_id, _ = await start_job(bot, user_id="U123")
    _, key = await bot.command(f"cancel {job_id}", user_id="U123")
    text = all_text(await bot.reply(key))
    assert job_id in text and "Cancellation requested" in text
    assert bot.openai.jobs[job_id]["status"] == "cancelled"
    assert len(bot.openai.requests_to(rf"^/fine_tuning/jobs/{job_id}/cancel$", "POST")) == 1


# -- requests that are not from Slack --------------------------------------------------------------


async def post_command(
    bot: InProcessBot, text: str, *, secret: str = SIGNING_SECRET, skew: int = 0, tamper: bool = False
) -> tuple[httpx.Response, str]:
    """`/finetune <text>` signed with `secret`, `skew` seconds off the real time (which Bolt checks
    the timestamp against), or with its body changed after signing."""
    key = uuid.uuid4().hex
    fields = bot.slack.slash_command_payload(text, response_url=bot.slack.response_url(key))
    body = urllib.parse.urlencode(fields)
    headers = sign_slack_request(body, secret, int(time.time()) + skew)
    if tamper:
        body = body.replace("U123", "U999")
    return await bot.http.post("/slack/events", content=body, headers=headers), key


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
async def test_unsigned_requests_are_refused(bot: InProcessBot, kwargs: dict[str, Any]) -> None:
    response, key = await post_command(bot, "cancel ftjob-abc123", **kwargs)
    assert response.status_code == 401
    control = await bot.control()
    assert [r for r in bot.openai.requests if not control.owns(r)] == []
    assert bot.slack.responses_for(key) == [] and bot.slack.messages == []


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
async def test_bad_input_gets_a_friendly_message_and_no_openai_call(
    bot: InProcessBot, text: str, fragment: str
) -> None:
    response, _ = await bot.command(text)
    assert response.status_code == 200
    body = response.json()
    assert body["response_type"] == "ephemeral"
    message = all_text(body)
    assert fragment in message
    assert "<!channel>" not in message and "Traceback" not in message
    control = await bot.control()
    assert [r for r in bot.openai.requests if not control.owns(r)] == []


# -- OpenAI errors ---------------------------------------------------------------------------------


async def test_unknown_job_is_a_clear_404(bot: InProcessBot) -> None:
    _, key = await bot.command("get ftjob-doesnotexist")
    assert "No fine-tuning job `ftjob-doesnotexist`" in all_text(await bot.reply(key))


@pytest.mark.parametrize("status", [401, 403])
async def test_refused_credentials_never_show_the_key(bot: InProcessBot, status: int) -> None:
    bot.openai.fail_next(
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
    _, key = await bot.command("list")
    text = all_text(await bot.reply(key))
    assert "credentials" in text and "admin" in text
    assert OPENAI_KEY not in text and OPENAI_KEY[:12] not in text


async def test_bad_request_shows_openais_message_escaped(bot: InProcessBot) -> None:
    bot.openai.fail_next(
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
    _, key = await bot.command("create file-abc123 model=gpt-nope")
    text = all_text(await bot.reply(key))
    assert "is not available for fine-tuning" in text
    assert "<!channel>" not in text and "&lt;!channel&gt;" in text
    assert bot.slack.messages == []


async def test_transient_failures_are_retried_honouring_retry_after(bot: InProcessBot) -> None:
    job = bot.openai.add_job()
    bot.openai.fail_next(429, headers={"Retry-After": "1"})
    bot.openai.fail_next(503)
    sleeps = len(bot.clock.sleeps)
    _, key = await bot.command(f"get {job['id']}")
    assert job["id"] in all_text(await bot.reply(key))
    attempts = bot.openai.requests_to(rf"^/fine_tuning/jobs/{job['id']}$", "GET")
    assert [r.status for r in attempts] == [429, 503, 200]
    # Retry-After: 1 was honoured, on the bot's clock: the wait after the 429 was that second.
    waits = bot.clock.sleeps[sleeps:]
    assert len(waits) == 2 and waits[0] == 1.0, waits


@pytest.mark.parametrize("kind", ["status", "close", "html"])
async def test_persistent_failure_says_openai_is_unavailable(bot: InProcessBot, kind: str) -> None:
    bot.openai.fail_next(500 if kind == "status" else 502, kind=kind, times=3)
    _, key = await bot.command("list")
    assert "unavailable" in all_text(await bot.reply(key)).lower()
    assert len(bot.openai.requests_to(r"^/fine_tuning/jobs$", "GET")) == 3


# -- who may cancel what, and where (FINETUNE_ADMINS, FINETUNE_ALLOWED_CHANNELS) --------------------


@pytest.fixture
def guarded(make_bot: MakeBot) -> InProcessBot:
    return make_bot(FINETUNE_ADMINS=f"{ADMIN}, UADMIN2", FINETUNE_ALLOWED_CHANNELS="C123,C456")


def cancels(bot: InProcessBot, job_id: str) -> int:
    return len(bot.openai.requests_to(rf"^/fine_tuning/jobs/{job_id}/cancel$", "POST"))


async def test_starter_may_cancel_their_job(guarded: InProcessBot) -> None:
    job_id, _ = await start_job(guarded, user_id="U42")
    _, key = await guarded.command(f"cancel {job_id}", user_id="U42")
    assert "Cancellation requested" in all_text(await guarded.reply(key))
    assert cancels(guarded, job_id) == 1


async def test_others_are_refused_politely_and_openai_hears_nothing(guarded: InProcessBot) -> None:
    job_id, _ = await start_job(guarded, user_id="U42")
    _, key = await guarded.command(f"cancel {job_id}", user_id="U99")
    text = all_text(await guarded.reply(key))
    assert "Sorry" in text and "<@U42>" in text and "FINETUNE_ADMINS" in text
    assert cancels(guarded, job_id) == 0
    assert guarded.openai.job(job_id)["status"] != "cancelled"


async def test_admins_may_cancel_any_job(guarded: InProcessBot) -> None:
    job_id, _ = await start_job(guarded, user_id="U42")
    _, key = await guarded.command(f"cancel {job_id}", user_id=ADMIN)
    assert "Cancellation requested" in all_text(await guarded.reply(key))
    assert cancels(guarded, job_id) == 1
    outside = guarded.openai.add_job()
    _, key = await guarded.command(f"cancel {outside['id']}", user_id="UADMIN2")
    assert "Cancellation requested" in all_text(await guarded.reply(key))
    assert cancels(guarded, outside["id"]) == 1


async def test_jobs_not_started_from_slack_are_for_admins_only(guarded: InProcessBot) -> None:
    outside = guarded.openai.add_job()
    _, key = await guarded.command(f"cancel {outside['id']}", user_id="U42")
    assert "wasn't started from Slack" in all_text(await guarded.reply(key))
    assert cancels(guarded, outside["id"]) == 0


async def test_the_command_works_only_in_allowed_channels(guarded: InProcessBot) -> None:
    for text in ("list", "help", "create file-abc123", "cancel ftjob-abc"):
        response, _ = await guarded.command(text, channel_id="C999")
        body = response.json()
        assert body["response_type"] == "ephemeral"
        assert "isn't enabled in this channel" in all_text(body) and "<#C123>" in all_text(body)
    # The control: the same bot, in an allowed channel, does reach OpenAI and answer.
    control = await guarded.control(channel_id="C456")
    assert [r for r in guarded.openai.requests if not control.owns(r)] == []
    assert guarded.slack.messages_in("C999") == [] and guarded.slack.responses_for(control.key)
    _, key = await guarded.command("list", channel_id="C456")
    assert "isn't enabled" not in all_text(await guarded.reply(key))
