"""A create whose OpenAI answer was lost is still found and announced, or declared safe to retry.

OpenAI may make the job and the bot never hear it: a read timeout after the work was done, a
proxy's 502, a dropped connection (the fake's `processed=True` faults). The bot must then say
honestly that the job may or may not have started, look it up later by its `slack_trigger`
metadata (the schedule shortened through the test-only FINETUNE_TEST_UNCONFIRMED_LOOKUPS hook),
and announce it once, or, if no job appears, tell the user a retry is safe. A 4xx still means
nothing was started, and is never looked up.

Here a real `python -m bot` finds a job whose answer a proxy's 502 lost, on its own scheduler. The
rest (a dropped connection, a read timeout, a 5xx that made nothing and is given up, a restart
before the first lookup, on SQLite and PostgreSQL) is shown in process on a fake clock, on the
production schedule, in tests/test_inprocess_create.py. The pure parts are tested below.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bot import render
from bot.openai_client import ServerError, UnavailableError
from bot.pending import lookup_due
from bot.store import PendingCreate
from tests.fakes import FakeOpenAI, FakeSlack
from tests.fakes.openai import RecordedRequest
from tests.harness import Harness, all_text, query_db, start_bot
from tests.test_create_pending import announcements
from tests.test_e2e_notifications import outcomes

CHANNEL = "C123"
SCHEDULE = (3.0, 6.0, 10.0)  # first lookup 3 s after the command, given up at 10 s
MAY_HAVE = "may or may not have started"
STARTED_AFTER_ALL = "did start"
RETRY_SAFE = "safe to run it again"


def bot_for(openai: FakeOpenAI, slack: FakeSlack, workdir: Path, **extra: str) -> Harness:
    bot = start_bot(
        openai,
        slack,
        workdir,
        POLL_INTERVAL_SECONDS="1",
        OPENAI_TIMEOUT_SECONDS="2",  # a hung create gives up within seconds
        FINETUNE_TEST_UNCONFIRMED_LOOKUPS=",".join(f"{p:g}" for p in SCHEDULE),
        **extra,
    )
    return Harness(bot, openai, slack)


def lookups(openai: FakeOpenAI, key: str) -> list[RecordedRequest]:
    """The bot's lookups of the create whose key (trigger_id) is `key`."""
    return [
        r
        for r in openai.requests_to(r"/fine_tuning/jobs", "GET")
        if r.query.get("metadata[slack_trigger]") == key
    ]


def create_key(openai: FakeOpenAI) -> tuple[str, float]:
    """The Idempotency-Key (= trigger_id) of the one create, and when it was first sent."""
    posts = openai.requests_to(r"/fine_tuning/jobs", "POST")
    keys = {r.headers.get("idempotency-key") for r in posts}
    assert len(keys) == 1 and None not in keys, keys
    return str(keys.pop()), posts[0].time


def started_from_slack(openai: FakeOpenAI) -> list[str]:
    return [i for i, j in openai.jobs.items() if (j.get("metadata") or {}).get("slack_trigger")]


def later_outcome_posted(h: Harness) -> None:
    """Positive control for "still only one": a job watched from elsewhere now ends and its outcome
    is posted, which takes complete poll cycles after everything checked before it."""
    job = h.openai.add_job(status="running")
    h.command(f"watch {job['id']}", channel_id="CCTRL")
    h.slack.wait_for(lambda s: s.messages_in("CCTRL"), timeout=20)
    h.openai.set_status(job["id"], "succeeded")
    h.slack.wait_for(lambda s: outcomes(h, job["id"]), timeout=20)


def texts(slack: FakeSlack, key: str) -> list[str]:
    return [all_text(r.json) for r in slack.responses_for(key)]


def row_state(h: Harness, key: str) -> str:
    [(state,)] = query_db(h.db_url, "SELECT state FROM finetune_pending_creates WHERE trigger_id = :k", k=key)
    return str(state)


def test_job_created_but_answer_lost_is_found_announced_once_and_user_told(
    fake_openai: FakeOpenAI, fake_slack: FakeSlack, tmp_path: Path
) -> None:
    h = bot_for(fake_openai, fake_slack, tmp_path)
    try:
        # A proxy's 502 after OpenAI made the job (a dropped connection and a read timeout: in process).
        fake_openai.fail_next(502, path="/fine_tuning/jobs", method="POST", times=3, processed=True)
        _, reply_key = h.command("create file-abc123", channel_id=CHANNEL)
        first = all_text(h.reply(reply_key, timeout=30))
        assert MAY_HAVE in first and "don't run `create`" in first, first
        [job_id] = fake_openai.jobs  # OpenAI made it; the bot never heard
        key, sent_at = create_key(fake_openai)
        assert fake_openai.jobs[job_id]["metadata"]["slack_trigger"] == key
        assert announcements(fake_slack, job_id) == [] and row_state(h, key) == "unconfirmed"

        # Found by its metadata, not before the first point of the schedule; announced; told.
        fake_slack.wait_for(lambda s: announcements(s, job_id), timeout=30)
        [lookup, *_] = lookups(fake_openai, key)
        assert lookup.time - sent_at >= SCHEDULE[0] - 0.5
        fake_slack.wait_for(lambda s: len(s.responses_for(reply_key)) >= 2, timeout=10)
        news = texts(fake_slack, reply_key)[1]
        assert STARTED_AFTER_ALL in news and job_id in news and f"<#{CHANNEL}>" in news, news
        assert row_state(h, key) == "announced"

        # It is watched: the outcome is threaded under that one announcement, once.
        fake_openai.set_status(job_id, "succeeded")
        fake_slack.wait_for(lambda s: outcomes(h, job_id), timeout=20)
        later_outcome_posted(h)
        [announcement] = announcements(fake_slack, job_id)
        [outcome] = outcomes(h, job_id)
        assert outcome.thread_ts == announcement.ts
        assert started_from_slack(fake_openai) == [job_id] and len(texts(fake_slack, reply_key)) == 2
        assert fake_openai.schema_errors == []
    finally:
        assert h.bot.stop() == 0, h.bot.logs


# ------------------------------------------------------------------------------------ pure parts


def pending_row(created_at: float, updated_at: float) -> PendingCreate:
    return PendingCreate(
        trigger_id="1.2.3",
        team_id="T1",
        channel_id="C1",
        user_id="U1",
        response_url=None,
        params={},
        state="unconfirmed",
        job_id=None,
        watch_id=None,
        owner="x",
        created_at=created_at,
        updated_at=updated_at,
    )


@pytest.mark.parametrize(
    ("age", "last_touched_at_age", "due"),
    [
        (30, 20, False),  # before the first point
        (95, 20, True),  # first point passed since it was closed as unconfirmed
        (100, 95, False),  # looked up at 95: the next point is 180
        (185, 95, True),
        (400, 190, True),  # 360 passed
        (605, 370, True),  # the last point: the lookup that gives it up
        (620, 605, False),  # that lookup failed: tried again only after the first interval
        (700, 605, True),
    ],
)
def test_lookup_schedule(age: float, last_touched_at_age: float, due: bool) -> None:
    created = 1_000_000.0
    row = pending_row(created, created + last_touched_at_age)
    assert lookup_due(row, created + age, (90.0, 180.0, 360.0, 600.0)) is due


def test_unconfirmed_reply_is_honest_and_escaped() -> None:
    for error in (
        ServerError("<!channel> boom", status=502, request_id="req_<x>"),
        UnavailableError("timed out"),
    ):
        text = all_text(render.render_create_unconfirmed(error, 600).as_kwargs())
        assert MAY_HAVE in text and "within 10 minutes" in text and "don't run `create`" in text
        assert "<!channel>" not in text and "<x>" not in text
    assert "HTTP 502" in all_text(
        render.render_create_unconfirmed(ServerError("x", status=502), 60).as_kwargs()
    )


def test_after_all_and_never_started_notes_escape_what_they_quote() -> None:
    found = all_text(render.render_create_started_after_all("ftjob-abc", "C0123").as_kwargs())
    assert STARTED_AFTER_ALL in found and "`ftjob-abc`" in found and "<#C0123>" in found
    odd = all_text(render.render_create_started_after_all("ftjob-abc", "<!here>").as_kwargs())
    assert "<!here>" not in odd
    never = all_text(render.render_create_never_started("file-<@U1>").as_kwargs())
    assert RETRY_SAFE in never and "<@U1>" not in never and "file-&lt;@U1&gt;" in never
    assert RETRY_SAFE in all_text(render.render_create_never_started(None).as_kwargs())
