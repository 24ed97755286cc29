"""A training file's Start whose create outlives the click (OpenAI's answer lost, the process gone
mid-way), in process on a fake clock (tests/inprocess.py): once the reconciler (bot/pending.py)
concludes the create, the upload row (bot/training_store.py) and the report message in Slack
follow it exactly once, across a restart and across replicas — "started ftjob-…" and `started`,
or Start offered again and `uploaded` when no job was made (and then Start makes one job)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from bot.runner import UNCONFIRMED_LOOKUPS
from bot.training_store import TrainingUpload, TrainingUploads
from tests.db import fresh_postgres_database
from tests.fakes import FakeOpenAI, FakeSlack
from tests.fakes.slack import RecordedMessage
from tests.harness import all_text
from tests.inprocess import InProcessBot, SimulatedCrash, crashing_at
from tests.test_audit_reconciled import lookups_until, started_training_report
from tests.test_e2e_training import start_value
from tests.test_inprocess_training import click_start

NOT_KNOWN_YET = "may or may not have started"
NO_JOB = "never confirmed the last start"


@pytest.fixture
async def bot(fake_openai: FakeOpenAI, fake_slack: FakeSlack, tmp_path: Path) -> AsyncIterator[InProcessBot]:
    bot = InProcessBot(fake_openai, fake_slack, tmp_path)
    yield bot
    await bot.stop()


def report(bot: InProcessBot, ts: str) -> RecordedMessage:
    [message] = [m for m in bot.slack.messages_in("C123") if m.ts == ts]
    return message


def report_text(bot: InProcessBot, ts: str) -> str:
    message = report(bot, ts)
    return all_text({"t": message.text, "b": message.blocks})


def edits_saying(bot: InProcessBot, ts: str, words: str) -> int:
    """How many edits of the report made it say `words`."""
    return sum(1 for u in bot.slack.updates if u.ts == ts and words in all_text({"t": u.text, "b": u.blocks}))


def upload(bot: InProcessBot, upload_id: str) -> TrainingUpload:
    row = TrainingUploads(bot.store).get(upload_id)
    assert row is not None
    return row


def announcements(bot: InProcessBot, job_id: str) -> int:
    return sum(
        1
        for m in bot.slack.messages_in("C123")
        if (m.params.get("metadata") or {}).get("event_type") == "finetune_announcement"
        and job_id in all_text({"t": m.text, "b": m.blocks})
    )


async def lost_answer_start(bot: InProcessBot, *, job_made: bool) -> tuple[str, str, str]:
    """A checked file's Start whose create OpenAI answers with a 5xx (after making the job, or
    not): the Start value (the upload id), the report's ts, and the click's response_url key."""
    value, ts = await started_training_report(bot)
    bot.openai.fail_next(502, path="/fine_tuning/jobs", method="POST", times=3, processed=job_made)
    clicked = await click_start(bot, value, ts)
    assert len(bot.openai.jobs) == (1 if job_made else 0)
    # Not known yet: the report says so and offers no Start (a second job could be billed).
    assert NOT_KNOWN_YET in report_text(bot, ts) and start_value(report(bot, ts)) is None
    assert upload(bot, value).state == "creating"
    # The clicker is pointed at the report, in words about Start: they never ran `create`.
    told = all_text(await bot.reply(clicked))
    assert NOT_KNOWN_YET in told and "report" in told and "create" not in told, told
    return value, ts, clicked


def private_notes(bot: InProcessBot, clicked: str) -> list[str]:
    """What was said to the clicker through the click's response_url, in order."""
    return [all_text(r.json) for r in bot.slack.responses_for(clicked)]


async def test_a_lost_answer_the_reconciler_confirms_makes_the_report_say_started_once(
    bot: InProcessBot,
) -> None:
    value, ts, clicked = await lost_answer_start(bot, job_made=True)
    [job_id] = bot.openai.jobs

    await lookups_until(bot, UNCONFIRMED_LOOKUPS[0])  # the reconciler finds it; the same cycle settles
    row = upload(bot, value)
    assert (row.state, row.job_id, row.owner) == ("started", job_id, None)
    assert edits_saying(bot, ts, job_id) == 1 and "started" in report_text(bot, ts)
    assert announcements(bot, job_id) == 1
    # The report told it; no private note about a `create` ("don't run `create` again").
    assert len(private_notes(bot, clicked)) == 1

    # Later cycles, and a click on the old button, change nothing.
    edits = len(bot.slack.updates)
    await lookups_until(bot, UNCONFIRMED_LOOKUPS[-1])
    again = await click_start(bot, value, ts)
    told = all_text(await bot.reply(again))
    assert "already started" in told and job_id in told
    assert len(bot.slack.updates) == edits and len(bot.openai.jobs) == 1


async def test_a_lost_answer_that_made_no_job_offers_start_again_and_start_makes_one_job(
    bot: InProcessBot,
) -> None:
    value, ts, clicked = await lost_answer_start(bot, job_made=False)
    await lookups_until(bot, UNCONFIRMED_LOOKUPS[-2])
    assert upload(bot, value).state == "creating"  # still looking: nothing concluded
    assert NOT_KNOWN_YET in report_text(bot, ts)

    await lookups_until(bot, UNCONFIRMED_LOOKUPS[-1])  # given up: no job was made
    row = upload(bot, value)
    assert (row.state, row.job_id, row.owner) == ("uploaded", None, None)
    assert row.openai_file_id is not None  # the file stays in OpenAI: the next Start only creates
    assert start_value(report(bot, ts)) == value and NO_JOB in report_text(bot, ts)
    await bot.cycle(2)
    assert edits_saying(bot, ts, NO_JOB) == 1
    # Nor a private "run `create` again": the report's Start is the way.
    assert len(private_notes(bot, clicked)) == 1

    await click_start(bot, value, ts)
    [job_id] = bot.openai.jobs
    assert len(bot.openai.uploads) == 1
    assert edits_saying(bot, ts, "Starting fine-tuning") == 1  # no Start button while it runs
    row = upload(bot, value)
    assert (row.state, row.job_id) == ("started", job_id)
    assert edits_saying(bot, ts, job_id) == 1 and announcements(bot, job_id) == 1
    await bot.cycle(2)
    assert edits_saying(bot, ts, job_id) == 1 and len(bot.openai.jobs) == 1


@pytest.mark.parametrize(
    "point",
    [
        "after_reconciler_record",  # the job written down and watched, neither announced nor reported
        "before_training_report_edit",  # announced; the upload's settling claimed, the report not edited
    ],
)
async def test_a_restart_between_the_reconcilers_record_and_the_report_edit(
    bot: InProcessBot, point: str
) -> None:
    value, ts, _ = await lost_answer_start(bot, job_made=True)
    [job_id] = bot.openai.jobs
    bot.clock.advance(UNCONFIRMED_LOOKUPS[0] + 1)
    with crashing_at(point), pytest.raises(SimulatedCrash):
        await bot.cycle()
    assert upload(bot, value).state == "creating" and edits_saying(bot, ts, job_id) == 0

    bot = await bot.restart()
    await bot.cycle()
    row = upload(bot, value)
    assert (row.state, row.job_id) == ("started", job_id)
    assert edits_saying(bot, ts, job_id) == 1 and announcements(bot, job_id) == 1
    await bot.cycle(2)
    assert edits_saying(bot, ts, job_id) == 1 and announcements(bot, job_id) == 1
    await bot.stop()


async def test_a_click_after_the_reconciler_found_the_job_settles_the_report_itself(
    bot: InProcessBot,
) -> None:
    value, ts, _ = await lost_answer_start(bot, job_made=True)
    [job_id] = bot.openai.jobs
    bot.clock.advance(UNCONFIRMED_LOOKUPS[0] + 1)
    await bot.parts.reconciler.run()  # the reconciler alone, as another replica's would
    await bot.settle()
    assert upload(bot, value).state == "creating" and edits_saying(bot, ts, job_id) == 0

    key = await click_start(bot, value, ts)
    told = all_text(await bot.reply(key))
    assert "already started" in told and job_id in told
    assert upload(bot, value).state == "started" and edits_saying(bot, ts, job_id) == 1
    await bot.cycle(2)
    assert edits_saying(bot, ts, job_id) == 1 and len(bot.openai.jobs) == 1


@pytest.mark.parametrize(("error", "status"), [("internal_error", 500), ("service_unavailable", None)])
async def test_a_report_edit_slack_fails_for_now_is_made_at_the_next_cycle(
    bot: InProcessBot, error: str, status: int | None
) -> None:
    value, ts, _ = await lost_answer_start(bot, job_made=True)
    [job_id] = bot.openai.jobs
    bot.clock.advance(UNCONFIRMED_LOOKUPS[0] + 1)
    # The first edit of the cycle is the report's (the job's card is drawn after it).
    bot.slack.fail_next("chat.update", error=error, status=status)
    await bot.cycle()
    assert upload(bot, value).state == "creating" and edits_saying(bot, ts, job_id) == 0
    await bot.cycle()
    assert upload(bot, value).state == "started" and edits_saying(bot, ts, job_id) == 1


async def test_a_report_slack_no_longer_has_does_not_hold_the_upload_back(bot: InProcessBot) -> None:
    value, ts, _ = await lost_answer_start(bot, job_made=True)
    [job_id] = bot.openai.jobs
    bot.clock.advance(UNCONFIRMED_LOOKUPS[0] + 1)
    bot.slack.fail_next("chat.update", error="message_not_found", times=1)
    await bot.cycle()
    row = upload(bot, value)
    assert (row.state, row.job_id) == ("started", job_id)
    await bot.cycle()
    assert edits_saying(bot, ts, job_id) == 0  # never tried again


@pytest.fixture
def pg_url() -> Iterator[str]:
    with fresh_postgres_database() as url:
        yield url


async def test_two_replicas_settle_the_report_once(
    fake_openai: FakeOpenAI, fake_slack: FakeSlack, tmp_path: Path, pg_url: str
) -> None:
    a = InProcessBot(fake_openai, fake_slack, tmp_path, owner="replica-a", DATABASE_URL=pg_url)
    b = a.replica("replica-b")
    try:
        value, ts, _ = await lost_answer_start(a, job_made=True)
        [job_id] = fake_openai.jobs
        a.clock.advance(UNCONFIRMED_LOOKUPS[0] + 1)
        await b.cycle()  # b's reconciler finds the job
        await a.cycle()
        await b.cycle()
        assert upload(a, value).state == "started"
        assert edits_saying(a, ts, job_id) == 1 and announcements(a, job_id) == 1
    finally:
        await a.stop()
        await b.stop()
