"""The audit trail of creates that the reconciler finishes (bot/pending.py), in process on a fake
clock (tests/inprocess.py): OpenAI's answer lost after it made the job, lost when it made none,
and the work stopped between OpenAI making the job and the bot writing it down. The trail keeps
what was known when (the create first "unconfirmed", with no job) and gains the conclusion, by
the reconciler, naming the job, or the failure when no job was made; `/finetune history` shows
the create of a job started through a lost answer. The same for a training file's Start."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from bot import modal
from bot.runner import UNCONFIRMED_LOOKUPS
from bot.store import audit
from tests.fakes import FakeOpenAI, FakeSlack
from tests.harness import all_text
from tests.inprocess import InProcessBot, crashing_at
from tests.test_e2e_training import GOOD, start_value

MAY_HAVE = "may or may not have started"
STARTED_AFTER_ALL = "did start"
RETRY_SAFE = "safe to run it again"


@pytest.fixture
async def bot(fake_openai: FakeOpenAI, fake_slack: FakeSlack, tmp_path: Path) -> AsyncIterator[InProcessBot]:
    bot = InProcessBot(fake_openai, fake_slack, tmp_path)
    yield bot
    await bot.stop()


def trail(bot: InProcessBot, key: str) -> list[tuple[Any, ...]]:
    """Every audit row of the create (or Start) whose key is `key`, oldest first: action, job,
    result, reason, and who concluded it (None: the action itself)."""
    with bot.store.engine.connect() as conn:
        rows = conn.execute(sa.select(audit).order_by(audit.c.id)).all()
    found = []
    for row in rows:
        detail = json.loads(row.detail or "{}")
        if detail.get("key") == key:
            found.append((row.action, row.job_id, row.result, row.reason, detail.get("by")))
    return found


def only_key(openai: FakeOpenAI) -> str:
    keys = {r.headers.get("idempotency-key") for r in openai.requests_to(r"/fine_tuning/jobs", "POST")}
    assert len(keys) == 1 and None not in keys, keys
    return str(keys.pop())


async def announced(bot: InProcessBot, job_id: str, channel_id: str = "C123") -> bool:
    return any(job_id in all_text({"t": m.text, "b": m.blocks}) for m in bot.slack.messages_in(channel_id))


async def history(bot: InProcessBot, job_id: str) -> str:
    _, key = await bot.command(f"history {job_id}")
    return all_text(await bot.reply(key))


async def lookups_until(bot: InProcessBot, age: float) -> None:
    """Move the clock along the unconfirmed creates' lookup schedule, a cycle at each point, up to
    `age` seconds after the command."""
    elapsed = 0.0
    for point in UNCONFIRMED_LOOKUPS:
        if point > age:
            break
        bot.clock.advance(point + 1 - elapsed)
        elapsed = point + 1
        await bot.cycle()


async def test_a_lost_answer_is_unconfirmed_then_confirmed_by_the_reconciler(bot: InProcessBot) -> None:
    bot.openai.fail_next(502, path="/fine_tuning/jobs", method="POST", times=3, processed=True)
    _, reply_key = await bot.command("create file-abc123")
    assert MAY_HAVE in all_text(await bot.reply(reply_key))
    [job_id] = bot.openai.jobs  # made; the bot never heard
    key = only_key(bot.openai)
    # What was known then: the create was asked for, its outcome unknown, no job id.
    assert trail(bot, key) == [("create", None, "unconfirmed", "OpenAI 502", None)]
    # Not yet the bot's job (it does not know who started it): the same answer as for any other.
    assert "No fine-tuning job" in await history(bot, job_id)

    await lookups_until(bot, UNCONFIRMED_LOOKUPS[0])
    assert await announced(bot, job_id)
    assert STARTED_AFTER_ALL in all_text(bot.slack.responses_for(reply_key)[1].json)
    # The first row stays as it was; the conclusion is a row of its own, naming the job.
    [first, confirmed] = trail(bot, key)
    assert first == ("create", None, "unconfirmed", "OpenAI 502", None)
    assert confirmed[:3] == ("create", job_id, "ok") and confirmed[4] == "reconciler"
    assert "OpenAI's answer was lost" in confirmed[3]
    [row] = bot.store.job_audit(job_id)
    assert (row.user_id, row.channel_id, row.detail["training_file"]) == ("U123", "C123", "file-abc123")
    text = await history(bot, job_id)
    assert "*create*" in text and "<@U123>" in text and ": ok (confirmed later" in text, text

    # Later cycles (the rest of the schedule, and past it) add nothing.
    await lookups_until(bot, UNCONFIRMED_LOOKUPS[-1])
    await bot.cycle(2)
    assert len(trail(bot, key)) == 2 and len(bot.store.job_audit(job_id)) == 1


async def test_a_lost_answer_that_made_no_job_ends_as_failed_by_the_reconciler(bot: InProcessBot) -> None:
    bot.openai.fail_next(503, path="/fine_tuning/jobs", method="POST", times=3)
    _, reply_key = await bot.command("create file-abc123")
    assert MAY_HAVE in all_text(await bot.reply(reply_key))
    key = only_key(bot.openai)
    await lookups_until(bot, UNCONFIRMED_LOOKUPS[-2])
    # Still looking: nothing concluded yet.
    assert trail(bot, key) == [("create", None, "unconfirmed", "OpenAI 503", None)]

    await lookups_until(bot, UNCONFIRMED_LOOKUPS[-1])
    assert RETRY_SAFE in all_text(bot.slack.responses_for(reply_key)[-1].json)
    [first, given_up] = trail(bot, key)
    assert first == ("create", None, "unconfirmed", "OpenAI 503", None)
    assert given_up[:3] == ("create", None, "failed") and given_up[4] == "reconciler"
    assert "no job was started" in given_up[3]
    assert bot.openai.jobs == {} and bot.slack.messages == []
    bot.clock.advance(3600)
    await bot.cycle(2)
    assert len(trail(bot, key)) == 2


async def test_work_stopped_after_openai_made_the_job_is_audited_once_found(bot: InProcessBot) -> None:
    with crashing_at("after_openai_create"):
        await bot.command("create file-abc123")
        await bot.settle()
    [job_id] = bot.openai.jobs
    key = only_key(bot.openai)
    assert trail(bot, key) == [] and not await announced(bot, job_id)  # stopped before either

    bot = await bot.restart()
    await bot.cycle()  # the first cycle finishes it
    assert await announced(bot, job_id)
    [found] = trail(bot, key)
    assert found[:3] == ("create", job_id, "ok") and found[4] == "reconciler"
    assert "left half-done" in found[3]
    assert ": ok (confirmed later" in await history(bot, job_id)
    await bot.cycle(2)
    assert len(trail(bot, key)) == 1
    await bot.stop()


async def test_a_create_audited_before_the_database_failed_is_not_audited_twice(
    bot: InProcessBot, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The database fails as the job is written down, after the create's own "ok" row: the user
    # gets the job id, the reconciler writes it down and announces it, and the trail keeps one row.
    record_created = bot.store.record_created

    def failing_once(*args: Any, **kwargs: Any) -> Any:
        monkeypatch.setattr(bot.store, "record_created", record_created)
        raise sa.exc.OperationalError("UPDATE finetune_pending_creates", {}, Exception("disk I/O error"))

    monkeypatch.setattr(bot.store, "record_created", failing_once)
    _, reply_key = await bot.command("create file-abc123")
    told = all_text(await bot.reply(reply_key))
    [job_id] = bot.openai.jobs
    assert job_id in told and "don't run `create` again" in told, told
    key = only_key(bot.openai)
    assert trail(bot, key) == [("create", job_id, "ok", None, None)]
    await bot.cycle()
    assert await announced(bot, job_id)
    assert trail(bot, key) == [("create", job_id, "ok", None, None)]


async def started_training_report(bot: InProcessBot) -> tuple[str, str]:
    """A training file sent through the create form and checked: the Start button's value and the
    report's ts."""
    response, _ = await bot.command("create")
    assert response.status_code == 200
    await bot.settle()
    [opened] = [v for v in bot.slack.views if v.ok]
    view = bot.slack.view(opened.view_id)
    file = bot.slack.add_file("train.jsonl", GOOD, channel="C123")
    submitted = await bot.interact(bot.slack.view_submission_payload(view, {modal.TRAINING_UPLOAD: file}))
    assert submitted.status_code == 200, submitted.text
    await bot.settle()
    [report] = [m for m in bot.slack.messages_in("C123") if start_value(m) is not None]
    value = start_value(report)
    assert value is not None
    return value, report.ts


async def test_a_training_start_whose_create_answer_was_lost(bot: InProcessBot) -> None:
    value, ts = await started_training_report(bot)
    bot.openai.fail_next(502, path="/fine_tuning/jobs", method="POST", times=3, processed=True)
    click = bot.slack.block_actions_payload(
        "training_start",
        value,
        message_ts=ts,
        block_id="training_actions",
        response_url=bot.slack.response_url(),
    )
    assert (await bot.interact(click)).status_code == 200
    await bot.settle()
    [job_id] = bot.openai.jobs
    key = only_key(bot.openai)
    # Neither the click nor its create claims a failure: both are unconfirmed.
    assert trail(bot, key) == [
        ("create", None, "unconfirmed", "OpenAI 502", None),
        ("start_training", None, "unconfirmed", "OpenAI did not confirm the create", None),
    ]

    await lookups_until(bot, UNCONFIRMED_LOOKUPS[0])
    assert await announced(bot, job_id)
    confirmed = trail(bot, key)[-1]
    assert confirmed[:3] == ("create", job_id, "ok") and confirmed[4] == "reconciler"
    text = await history(bot, job_id)
    assert "*create*" in text and ": ok (confirmed later" in text, text
