"""Creates left half-done, finished later by the reconciler (bot/pending.py), in process on a fake
clock (tests/inprocess.py): OpenAI's answer lost after it made the job (a proxy's 502, a dropped
connection, a read timeout) or when it made none, a restart before the first lookup, the work
stopped between OpenAI making the job and the bot writing it down (taken over by the next process,
on SQLite at once, on PostgreSQL once stale), the same signed command delivered three times, and
the database failing before or during a create.

The lookups of an unconfirmed create follow the production schedule (runner.UNCONFIRMED_LOOKUPS,
up to ten minutes), not a shortened one: the clock is moved to each point, and a cycle run there.
The failing databases are the real ones of tests/test_create_pending.py (SQLite on a full tmpfs or
on an ext4 that turns read-only, PostgreSQL read-only or with a full tablespace), used by the
in-process bot as a process would use them.

End to end (a real `python -m bot`) stay: the lost answer found and announced (with the shortened
schedule and the real scheduler), the SIGKILL between OpenAI making the job and the bot writing it
down, and the database turning read-only for good (the process must still exit cleanly).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import urllib.parse
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bot.runner import UNCONFIRMED_LOOKUPS
from tests.bot_process import SIGNING_SECRET
from tests.db import fresh_postgres_database
from tests.fakes import FakeOpenAI, FakeSlack, sign_slack_request
from tests.fakes.openai import RecordedRequest
from tests.harness import all_text
from tests.inprocess import InProcessBot, crashing_at
from tests.test_create_pending import CASES, announcements, create_audits, creates, failing_database
from tests.test_inprocess_lifecycle import outcomes

CHANNEL = "C123"
MAY_HAVE = "may or may not have started"
STARTED_AFTER_ALL = "did start"
RETRY_SAFE = "safe to run it again"


@pytest.fixture
async def bot(fake_openai: FakeOpenAI, fake_slack: FakeSlack, tmp_path: Path) -> AsyncIterator[InProcessBot]:
    # A hung create gives up after a second (the read timeout is httpx's, on the real clock).
    bot = InProcessBot(fake_openai, fake_slack, tmp_path, OPENAI_TIMEOUT_SECONDS="1")
    yield bot
    await bot.stop()


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO)
    return caplog


def lookups(openai: FakeOpenAI, key: str) -> list[RecordedRequest]:
    """The bot's lookups of the create whose key (trigger_id) is `key`."""
    return [
        r
        for r in openai.requests_to(r"/fine_tuning/jobs", "GET")
        if r.query.get("metadata[slack_trigger]") == key
    ]


def create_key(openai: FakeOpenAI) -> str:
    """The Idempotency-Key (= trigger_id) of the one create."""
    keys = {r.headers.get("idempotency-key") for r in creates(openai)}
    assert len(keys) == 1 and None not in keys, keys
    return str(keys.pop())


def started_from_slack(openai: FakeOpenAI) -> list[str]:
    return [i for i, j in openai.jobs.items() if (j.get("metadata") or {}).get("slack_trigger")]


def texts(slack: FakeSlack, key: str) -> list[str]:
    return [all_text(r.json) for r in slack.responses_for(key)]


def row_state(bot: InProcessBot, key: str) -> str:
    row = bot.store.get_pending_create(key)
    assert row is not None, key
    return row.state


async def at_lookup(bot: InProcessBot, key: str, point: float, *, before: bool = False) -> None:
    """A poll cycle just after (or, `before`, just before) `point` seconds from the create's command,
    on its lookup schedule."""
    row = bot.store.get_pending_create(key)
    assert row is not None, key
    at = row.created_at + point + (-0.5 if before else 0.5)
    bot.clock.advance(max(0.0, at - bot.clock.time()))
    await bot.cycle()


async def later_outcome_posted(bot: InProcessBot) -> None:
    """Positive control for "still only one": a job watched from elsewhere now ends and its outcome
    is posted, which takes complete poll cycles after everything checked before it."""
    job = bot.openai.add_job(status="running")
    await bot.command(f"watch {job['id']}", channel_id="CCTRL")
    await bot.settle()
    assert bot.slack.messages_in("CCTRL")
    bot.openai.set_status(job["id"], "succeeded")
    await bot.cycle()
    assert outcomes(bot.slack, job["id"])


# ------------------------------------------------------------------------------- lost answers


LOST_ANSWERS: list[dict[str, Any]] = [
    {"kind": "status", "status": 502},  # a proxy's 502 after OpenAI made the job
    {"kind": "close"},  # the connection dropped after the work was done
    {"kind": "hang"},  # the answer never came: the client's read timeout
]


@pytest.mark.parametrize("lost", LOST_ANSWERS, ids=["502", "dropped", "read-timeout"])
async def test_job_created_but_answer_lost_is_found_announced_once_and_user_told(
    bot: InProcessBot, lost: dict[str, Any]
) -> None:
    bot.openai.fail_next(**lost, path="/fine_tuning/jobs", method="POST", times=3, processed=True)
    _, reply_key = await bot.command("create file-abc123", channel_id=CHANNEL)
    first = all_text(await bot.reply(reply_key))
    assert MAY_HAVE in first and "don't run `create`" in first, first
    [job_id] = bot.openai.jobs  # OpenAI made it; the bot never heard
    key = create_key(bot.openai)
    assert bot.openai.jobs[job_id]["metadata"]["slack_trigger"] == key
    assert announcements(bot.slack, job_id) == [] and row_state(bot, key) == "unconfirmed"

    # Not looked up before the first point of the schedule…
    await at_lookup(bot, key, UNCONFIRMED_LOOKUPS[0], before=True)
    assert lookups(bot.openai, key) == [] and announcements(bot.slack, job_id) == []
    assert len(texts(bot.slack, reply_key)) == 1
    # …then found by its metadata, announced, and the user told.
    await at_lookup(bot, key, UNCONFIRMED_LOOKUPS[0])
    assert len(lookups(bot.openai, key)) == 1 and len(announcements(bot.slack, job_id)) == 1
    [_, news] = texts(bot.slack, reply_key)
    assert STARTED_AFTER_ALL in news and job_id in news and f"<#{CHANNEL}>" in news, news
    assert row_state(bot, key) == "announced"

    # It is watched: the outcome is threaded under that one announcement, once.
    bot.openai.set_status(job_id, "succeeded")
    await bot.cycle()
    await later_outcome_posted(bot)
    [announcement] = announcements(bot.slack, job_id)
    [outcome] = outcomes(bot.slack, job_id)
    assert outcome.thread_ts == announcement.ts
    assert started_from_slack(bot.openai) == [job_id] and len(texts(bot.slack, reply_key)) == 2
    # The rest of the schedule finds nothing more to do: no lookup, no second word to the user.
    await at_lookup(bot, key, UNCONFIRMED_LOOKUPS[-1])
    assert len(lookups(bot.openai, key)) == 1 and len(texts(bot.slack, reply_key)) == 2
    assert len(announcements(bot.slack, job_id)) == 1 and len(outcomes(bot.slack, job_id)) == 1
    assert bot.openai.schema_errors == []


async def test_5xx_that_created_nothing_is_given_up_and_user_told_retry_is_safe(
    bot: InProcessBot, logs: pytest.LogCaptureFixture
) -> None:
    bot.openai.fail_next(503, path="/fine_tuning/jobs", method="POST", times=3)
    _, unconfirmed = await bot.command("create file-abc123", channel_id=CHANNEL)
    assert MAY_HAVE in all_text(await bot.reply(unconfirmed))
    key = create_key(bot.openai)
    # A 4xx in the same window: refused, so nothing to look up (the control runs alongside).
    bot.openai.fail_next(400, path="/fine_tuning/jobs", method="POST")
    _, refused = await bot.command("create file-abc123", channel_id=CHANNEL)
    refused_text = all_text(await bot.reply(refused))
    assert "OpenAI rejected this" in refused_text and MAY_HAVE not in refused_text
    [refused_key] = {r.headers.get("idempotency-key") for r in creates(bot.openai)} - {key}
    assert row_state(bot, str(refused_key)) == "failed"

    # Looked for at every point of the schedule; until the last, still open and nothing said.
    for point in UNCONFIRMED_LOOKUPS[:-1]:
        await at_lookup(bot, key, point)
        assert row_state(bot, key) == "unconfirmed" and len(texts(bot.slack, unconfirmed)) == 1
    assert "giving it up" not in logs.text
    await at_lookup(bot, key, UNCONFIRMED_LOOKUPS[-1])
    [_, note] = texts(bot.slack, unconfirmed)
    assert RETRY_SAFE in note and "file-abc123" in note, note
    assert row_state(bot, key) == "abandoned"
    assert len(lookups(bot.openai, key)) == len(UNCONFIRMED_LOOKUPS)
    assert "giving it up (nothing was started)" in logs.text
    # Nothing was announced, no job exists, and the refused create was never looked up.
    assert bot.slack.messages == [] and bot.openai.jobs == {}
    assert lookups(bot.openai, str(refused_key)) == []
    assert len(texts(bot.slack, refused)) == 1
    # Given up means given up: later cycles neither look again nor say more.
    bot.clock.advance(3600)
    await bot.cycle(2)
    assert len(lookups(bot.openai, key)) == len(UNCONFIRMED_LOOKUPS)
    assert len(texts(bot.slack, unconfirmed)) == 2


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
async def test_restarted_before_the_lookup_still_finds_the_job(
    fake_openai: FakeOpenAI, fake_slack: FakeSlack, tmp_path: Path, kind: str
) -> None:
    with contextlib.ExitStack() as stack:
        extra = {}
        if kind == "postgresql":
            extra["DATABASE_URL"] = stack.enter_context(fresh_postgres_database())
        bot = InProcessBot(fake_openai, fake_slack, tmp_path, owner="before", **extra)
        try:
            fake_openai.fail_next(502, path="/fine_tuning/jobs", method="POST", times=3, processed=True)
            _, reply_key = await bot.command("create file-abc123", channel_id=CHANNEL)
            assert MAY_HAVE in all_text(await bot.reply(reply_key))
            [job_id] = fake_openai.jobs
            key = create_key(fake_openai)
            # Gone before the first lookup was due; the next process has a name of its own.
            bot = await bot.restart(owner="after")
            assert lookups(fake_openai, key) == [] and announcements(fake_slack, job_id) == []

            await at_lookup(bot, key, UNCONFIRMED_LOOKUPS[0])
            assert lookups(fake_openai, key) and len(announcements(fake_slack, job_id)) == 1
            # The runner's row was "unconfirmed", with no job; the reconciler's names it.
            assert create_audits(bot.settings.database_url, job_id) == [("ok", "reconciler")]
            assert STARTED_AFTER_ALL in texts(fake_slack, reply_key)[1]
            fake_openai.set_status(job_id, "cancelled")
            await bot.cycle()
            await later_outcome_posted(bot)
            assert len(announcements(fake_slack, job_id)) == 1 and len(outcomes(fake_slack, job_id)) == 1
            assert started_from_slack(fake_openai) == [job_id]
        finally:
            await bot.stop()


# ---------------------------------------------------------------------------- crash half-way


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
async def test_work_stopped_after_openai_made_the_job_is_taken_over_and_announced_once(
    fake_openai: FakeOpenAI, fake_slack: FakeSlack, tmp_path: Path, kind: str
) -> None:
    # The SIGKILL itself is shown end to end (tests/test_create_pending.py, SQLite). Here the
    # takeover by the next process: on SQLite at its first cycle (a row of another owner is a dead
    # predecessor's), on PostgreSQL only once the row is stale (another owner may be a live replica).
    with contextlib.ExitStack() as stack:
        extra = {}
        if kind == "postgresql":
            extra["DATABASE_URL"] = stack.enter_context(fresh_postgres_database())
        bot = InProcessBot(fake_openai, fake_slack, tmp_path, owner="before", **extra)
        try:
            with crashing_at("after_openai_create"):
                await bot.command("create file-abc123", channel_id=CHANNEL)
                await bot.settle()
            [job_id] = fake_openai.jobs
            key = create_key(fake_openai)
            assert fake_slack.messages == []  # stopped before writing it down or announcing it
            assert row_state(bot, key) == "pending"

            bot = await bot.restart(owner="after")
            await bot.cycle()
            if kind == "postgresql":
                assert lookups(fake_openai, key) == [] and announcements(fake_slack, job_id) == []
                bot.clock.advance(bot.parts.lease_ttl + 1)
                await bot.cycle()
            assert len(lookups(fake_openai, key)) == 1  # found by its metadata
            assert len(announcements(fake_slack, job_id)) == 1
            # Stopped before its audit row: the reconciler's row records the create, once.
            assert create_audits(bot.settings.database_url, job_id) == [("ok", "reconciler")]
            # It is watched: its outcome is threaded under that one announcement.
            fake_openai.set_status(job_id, "succeeded")
            await bot.cycle(2)
            [announcement] = announcements(fake_slack, job_id)
            [outcome] = outcomes(fake_slack, job_id)
            assert outcome.thread_ts == announcement.ts
            assert len(lookups(fake_openai, key)) == 1 and len(fake_openai.jobs) == 1
        finally:
            await bot.stop()


# ------------------------------------------------------------------------------------ replays


def signed_create(slack: FakeSlack, trigger_id: str, key: str) -> tuple[str, dict[str, str]]:
    fields = slack.slash_command_payload(
        "create file-abc123", channel_id=CHANNEL, response_url=slack.response_url(key), trigger_id=trigger_id
    )
    body = urllib.parse.urlencode(fields)
    return body, sign_slack_request(body, SIGNING_SECRET)


async def deliver(bot: InProcessBot, body: str, headers: dict[str, str]) -> None:
    response = await bot.http.post("/slack/events", content=body, headers=headers)
    assert response.status_code == 200


@pytest.mark.parametrize("timing", ["after-the-first-finished", "all-at-once"])
async def test_same_signed_command_three_times_starts_one_job(bot: InProcessBot, timing: str) -> None:
    trigger = f"1234567.890.{uuid.uuid4().hex}"
    key = uuid.uuid4().hex
    body, headers = signed_create(bot.slack, trigger, key)
    if timing == "all-at-once":
        bot.openai.latency = 0.5  # the deliveries overlap at OpenAI
        await asyncio.gather(*(deliver(bot, body, headers) for _ in range(3)))
    else:
        await deliver(bot, body, headers)
        await bot.settle()
        assert bot.slack.messages_in(CHANNEL)
        await deliver(bot, body, headers)
        await deliver(bot, body, headers)
    await bot.settle()
    # The two extra deliveries were handled: each got "nothing new was started".
    [job_id] = bot.openai.jobs
    replies = texts(bot.slack, key)
    assert len(replies) == 2 and all("more than once" in r and job_id in r for r in replies), replies
    assert len(announcements(bot.slack, job_id)) == 1
    assert bot.openai.jobs[job_id]["metadata"]["slack_trigger"] == trigger
    assert {r.headers.get("idempotency-key") for r in creates(bot.openai)} == {trigger}
    if timing == "after-the-first-finished":
        # The replays were recognised from the database: OpenAI was asked once.
        assert len(creates(bot.openai)) == 1
    else:
        # They really overlapped: each asked OpenAI before any answer was written down.
        assert len(creates(bot.openai)) == 3


# ------------------------------------------------------------------------- database failures


@pytest.mark.parametrize(("kind", "how"), CASES, ids=[f"{k}-{h}" for k, h in CASES])
async def test_database_failing_before_create_starts_nothing(
    fake_openai: FakeOpenAI, fake_slack: FakeSlack, tmp_path: Path, kind: str, how: str
) -> None:
    with failing_database(kind, how, tmp_path) as db:
        bot = InProcessBot(fake_openai, fake_slack, tmp_path, DATABASE_URL=db.url)
        try:
            db.break_(how)
            _, key = await bot.command("create file-abc123", channel_id=CHANNEL)
            text = all_text(await bot.reply(key))
            assert "Nothing was started" in text and "database" in text, text
            assert creates(fake_openai) == [] and fake_openai.jobs == {}
            await bot.cycle()  # the poll cycle meets the broken database too, and goes on
            assert fake_slack.messages == []
            if not getattr(db, "repairable", True):
                return
            # Once the database is back, the same command works.
            db.repair(how)
            await bot.command("create file-abc123", channel_id=CHANNEL)
            await bot.settle()
            assert len(fake_openai.jobs) == 1 and fake_slack.messages_in(CHANNEL)
        finally:
            await bot.stop()


@pytest.mark.parametrize(("kind", "how"), CASES, ids=[f"{k}-{h}" for k, h in CASES])
async def test_database_failing_while_openai_creates_still_gives_the_job_id(
    fake_openai: FakeOpenAI, fake_slack: FakeSlack, tmp_path: Path, kind: str, how: str
) -> None:
    with failing_database(kind, how, tmp_path) as db:
        bot = InProcessBot(fake_openai, fake_slack, tmp_path, DATABASE_URL=db.url)
        try:
            fake_openai.latency = 0.5  # OpenAI's answer is on its way while the database fails
            _, key = await bot.command("create file-abc123", channel_id=CHANNEL)
            await fake_openai.wait_for_async(lambda f: creates(f), timeout=10)
            # Synchronously, in the bot's own loop: it cannot take OpenAI's answer before the
            # database has failed.
            db.break_(how)
            text = all_text(await bot.reply(key))
            fake_openai.latency = 0.0
            [job_id] = fake_openai.jobs
            assert job_id in text and "don't run `create` again" in text, text
            assert f"/finetune get {job_id}" in text
            await bot.cycle()  # reconciliation cannot write it down yet, and announces nothing
            assert fake_slack.messages_in(CHANNEL) == []
            if not getattr(db, "repairable", True):
                return
            # The database comes back: the job is written down, watched and announced, once.
            db.repair(how)
            await bot.cycle()
            assert len(announcements(fake_slack, job_id)) == 1
            fake_openai.set_status(job_id, "succeeded")
            await bot.cycle()
            assert len(outcomes(fake_slack, job_id)) == 1
            await bot.cycle(2)
            assert len(announcements(fake_slack, job_id)) == 1 and len(fake_openai.jobs) == 1
            assert len(outcomes(fake_slack, job_id)) == 1
            # Its create is in the trail once: the runner's row if the database took it, else the
            # reconciler's.
            [(result, _)] = create_audits(bot.settings.database_url, job_id)
            assert result == "ok"
        finally:
            await bot.stop()
