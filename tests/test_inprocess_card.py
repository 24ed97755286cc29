"""The live card in this test's event loop, on a fake clock (tests/inprocess.py): edited as metrics
arrive, held to CARD_UPDATE_SECONDS per card and CARD_EDITS_PER_MINUTE in all, paused by a 429,
given up on when Slack refuses it, and made final after a restart that lost the edit. Where the
end-to-end tests waited for real intervals, these move the clock, and read every interval on it.

What only a real process shows stays end to end: the card edited by the real scheduler
(tests/test_e2e_card.py) and a final edit lost to a SIGKILL (tests/test_card_restart.py).
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.fakes import FakeOpenAI, FakeSlack
from tests.fakes.slack import RecordedCall, RecordedMessage
from tests.harness import all_text
from tests.inprocess import InProcessBot
from tests.test_inprocess_lifecycle import outcomes

ENV = {"POLL_INTERVAL_SECONDS": "1", "CARD_UPDATE_SECONDS": "2"}


@pytest.fixture
async def bot(fake_openai: FakeOpenAI, fake_slack: FakeSlack, tmp_path: Path) -> AsyncIterator[InProcessBot]:
    bot = InProcessBot(fake_openai, fake_slack, tmp_path, **ENV)
    yield bot
    await bot.stop()


async def create(bot: InProcessBot, channel: str) -> tuple[str, RecordedMessage]:
    """`/finetune create` in `channel`; the new job's id and its card (the announcement)."""
    before = set(bot.openai.jobs)
    response, _ = await bot.command("create file-abc123", channel_id=channel, user_id="U42")
    assert response.status_code == 200
    await bot.settle()
    [job_id] = set(bot.openai.jobs) - before
    card = bot.slack.messages_in(channel)[-1]
    assert job_id in str(card.params)
    return job_id, card


def metrics(bot: InProcessBot, job_id: str, step: int, loss: float, total: int = 100) -> None:
    data = {"step": step, "total_steps": total, "train_loss": loss}
    bot.openai.add_event(job_id, f"Step {step}/{total}", type="metrics", data=data)


def card_updates(slack: FakeSlack, ts: str) -> list[str]:
    """What each accepted edit of the card `ts` showed, oldest first."""
    return [all_text({"t": u.text, "b": u.blocks}) for u in slack.updates if u.ts == ts]


def update_calls(slack: FakeSlack, channel: str | None = None) -> list[RecordedCall]:
    """Every chat.update the bot made (accepted or not), in `channel` if given."""
    return [c for c in slack.calls_to("chat.update") if channel is None or c.params.get("channel") == channel]


def card_stopped(bot: InProcessBot, channel: str) -> str | None:
    with bot.store.engine.connect() as conn:
        query = sa.text("SELECT card_stopped FROM finetune_watches WHERE channel_id = :c")
        return conn.execute(query, {"c": channel}).scalar_one()


def card_digest(bot: InProcessBot, job_id: str) -> str | None:
    with bot.store.engine.connect() as conn:
        query = sa.text("SELECT card_digest FROM finetune_watches WHERE job_id = :j")
        return conn.execute(query, {"j": job_id}).scalar_one()


def most_in_a_minute(times: list[float]) -> int:
    """The most of `times` that fall in any one minute (a sliding window)."""
    ordered = sorted(times)
    return max((sum(1 for t in ordered if start <= t < start + 60) for start in ordered), default=0)


async def test_card_follows_metrics_no_faster_than_its_interval_then_shows_the_final_state(
    bot: InProcessBot,
) -> None:
    job_id, card = await create(bot, "C123")
    bot.openai.set_status(job_id, "running")
    metrics(bot, job_id, 10, 0.9)
    await bot.cycle()
    [first] = card_updates(bot.slack, card.ts)
    assert "step 10 of 100" in first and "10%" in first and "0.9" in first and "Running" in first

    metrics(bot, job_id, 55, 0.42)
    await bot.cycle()
    bot.clock.advance(1)
    await bot.cycle()
    # Changed, but edited less than CARD_UPDATE_SECONDS ago: the card waits.
    assert len(card_updates(bot.slack, card.ts)) == 1
    bot.clock.advance(1)
    await bot.cycle()
    latest = card_updates(bot.slack, card.ts)[-1]
    assert "step 55 of 100" in latest and "55%" in latest and "0.42" in latest
    times = [u.time for u in bot.slack.updates if u.ts == card.ts]  # on the fake clock
    assert len(times) == 2 and all(b - a >= 2 for a, b in itertools.pairwise(times)), times
    # One events request per cycle while it runs (four cycles), newest page only, a small limit.
    events = bot.openai.requests_to(rf"/fine_tuning/jobs/{job_id}/events")
    assert len(events) == 4 and all(r.query.get("limit") == "10" for r in events)
    assert all("after" not in r.query for r in events)

    bot.openai.set_status(
        job_id, "succeeded", fine_tuned_model="ft:gpt-4o-mini:acme::xyz", trained_tokens=4242
    )
    await bot.cycle()  # the final card is not held to the interval (edited 0 s ago)
    [outcome] = outcomes(bot.slack, job_id)
    final = card_updates(bot.slack, card.ts)[-1]
    assert "Succeeded" in final
    assert "ft:gpt-4o-mini:acme::xyz" in final and "4,242" in final and "%" not in final
    await bot.cycle(2)
    assert outcomes(bot.slack, job_id) == [outcome] and outcome.thread_ts == card.ts
    assert len(card_updates(bot.slack, card.ts)) == 3


async def test_card_faults_stop_or_pause_editing_and_the_outcome_still_posts(
    bot: InProcessBot, caplog: pytest.LogCaptureFixture
) -> None:
    jobs = {channel: await create(bot, channel) for channel in ("CGONE", "CLOCKED", "CSLOW")}
    bot.slack.fail_next("chat.update", error="message_not_found", channel="CGONE")
    bot.slack.fail_next("chat.update", error="cant_update_message", channel="CLOCKED")
    bot.slack.fail_next("chat.update", retry_after=3, channel="CSLOW")
    for job_id, _ in jobs.values():
        bot.openai.set_status(job_id, "running")
        metrics(bot, job_id, 10, 0.9)
    _, slow_card = jobs["CSLOW"]

    def statuses(channel: str) -> list[int | None]:
        return [c.status for c in update_calls(bot.slack, channel)]

    # Every card is due in this cycle's flush; the 429 pauses all edits for its Retry-After (3 s).
    await bot.cycle()
    assert statuses("CSLOW") == [429]
    assert "rate-limited" in caplog.text
    paused_at = update_calls(bot.slack, "CSLOW")[0].time
    tried = len(update_calls(bot.slack))
    bot.clock.advance(2)
    await bot.cycle()
    assert len(update_calls(bot.slack)) == tried  # paused: no card is tried
    bot.clock.advance(1)
    await bot.cycle()
    assert any("step 10 of 100" in t for t in card_updates(bot.slack, slow_card.ts))
    assert update_calls(bot.slack, "CSLOW")[-1].time - paused_at >= 3
    for channel, reason in (("CGONE", "message_not_found"), ("CLOCKED", "cant_update_message")):
        assert card_stopped(bot, channel) == reason
    assert card_stopped(bot, "CSLOW") is None

    # More progress: the working card is edited again (positive control); the others are not tried.
    for job_id, _ in jobs.values():
        metrics(bot, job_id, 60, 0.3)
    bot.clock.advance(2)
    await bot.cycle()
    assert "step 60 of 100" in card_updates(bot.slack, slow_card.ts)[-1]
    for job_id, _ in jobs.values():
        bot.openai.set_status(job_id, "succeeded", fine_tuned_model="ft:m::x", trained_tokens=1)
    await bot.cycle()
    assert "Succeeded" in card_updates(bot.slack, slow_card.ts)[-1]
    await bot.cycle(2)
    for job_id, card in jobs.values():
        [outcome] = outcomes(bot.slack, job_id)
        assert outcome.thread_ts == card.ts
    assert statuses("CGONE") == [200] and statuses("CLOCKED") == [200]  # ok: false, once each
    assert (
        card_updates(bot.slack, jobs["CGONE"][1].ts) == card_updates(bot.slack, jobs["CLOCKED"][1].ts) == []
    )


async def test_sixty_running_jobs_stay_within_the_update_budget_and_outcomes_are_not_delayed(
    fake_openai: FakeOpenAI, fake_slack: FakeSlack, tmp_path: Path
) -> None:
    budget = 20
    env = {**ENV, "CARD_UPDATE_SECONDS": "1", "CARD_EDITS_PER_MINUTE": str(budget)}
    bot = InProcessBot(fake_openai, fake_slack, tmp_path, **env)
    try:
        channels = [f"CLOAD{i}" for i in range(6)]
        jobs = [await create(bot, channels[i % 6]) for i in range(60)]
        for job_id, _ in jobs:
            bot.openai.set_status(job_id, "running")
        # Metrics change every cycle (a second apart): the whole minute's budget goes in the first.
        for step in range(1, 4):
            for job_id, _ in jobs:
                metrics(bot, job_id, step, 1.0 / step)
            await bot.cycle()
            bot.clock.advance(1)
        edited = [c.params.get("ts") for c in update_calls(bot.slack)]
        # Least recently edited first: twenty different cards, none twice.
        assert len(edited) == budget and len(set(edited)) == budget

        for job_id, _ in jobs:
            bot.openai.set_status(job_id, "succeeded", fine_tuned_model="ft:m::x", trained_tokens=1)
        await bot.cycle()
        # Every outcome is out in this one cycle, while the spent budget holds most final cards back.
        assert all(len(outcomes(bot.slack, job_id)) == 1 for job_id, _ in jobs)
        finals = [c for c in update_calls(bot.slack) if "Succeeded" in all_text(c.params)]
        assert len(finals) <= budget < 60
        # Minute after minute, the rest of the final cards, never more than the budget in a minute.
        for _ in range(5):
            bot.clock.advance(60)
            await bot.cycle()
        shown = {c.params.get("ts") for c in update_calls(bot.slack) if "Succeeded" in all_text(c.params)}
        assert shown == {card.ts for _, card in jobs}
        worst = most_in_a_minute([c.time for c in update_calls(bot.slack)])
        assert worst == budget, f"{worst} chat.update calls in one minute"  # at most, and all used
        for job_id, _ in jobs:
            assert len(outcomes(bot.slack, job_id)) == 1
    finally:
        await bot.stop()


# -- after a restart (issue 12 follow-up) -----------------------------------------------------------
#
# Card edits wait in memory: a process that stops loses them. Here the edit is lost the way a
# stop loses it (the edit failed and no cycle retried it before the restart); the SIGKILL between
# the outcome and the final edit is shown end to end in tests/test_card_restart.py.


def finals(slack: FakeSlack, ts: str) -> list[str]:
    return [t for t in card_updates(slack, ts) if "Succeeded" in t]


def succeed(bot: InProcessBot, job_id: str) -> None:
    bot.openai.set_status(job_id, "succeeded", fine_tuned_model=f"ft:gpt-4o-mini:acme::{job_id[-6:]}")


async def test_a_final_card_lost_at_a_restart_is_shown_once_and_a_final_card_is_not_edited_again(
    bot: InProcessBot,
) -> None:
    done, done_card = await create(bot, "C200")
    owed, owed_card = await create(bot, "C300")
    succeed(bot, done)
    await bot.cycle()
    [_] = finals(bot.slack, done_card.ts)
    assert card_digest(bot, done) not in (None, "owed")  # recorded once Slack accepted the edit

    # A restart that owes nothing edits nothing at its first cycle.
    bot = await bot.restart()
    edits = len(update_calls(bot.slack))
    await bot.cycle()
    assert len(update_calls(bot.slack)) == edits
    # `owed` ends; its outcome is out but its final edit is lost with this process.
    bot.slack.fail_next("chat.update", error="internal_error", channel="C300")
    succeed(bot, owed)
    await bot.cycle()
    assert len(outcomes(bot.slack, owed)) == 1 and finals(bot.slack, owed_card.ts) == []
    retrieves = len(bot.openai.requests_to(rf"/fine_tuning/jobs/{owed}"))

    bot = await bot.restart()
    await bot.cycle()
    [final] = finals(bot.slack, owed_card.ts)
    assert f"ft:gpt-4o-mini:acme::{owed[-6:]}" in final
    await bot.cycle(2)
    assert len(card_updates(bot.slack, owed_card.ts)) == 1
    assert len(card_updates(bot.slack, done_card.ts)) == 1  # its one final edit, before any restart
    assert len(outcomes(bot.slack, done)) == 1 and len(outcomes(bot.slack, owed)) == 1
    # The final state came from the outbox payload: the job was not asked for again.
    assert len(bot.openai.requests_to(rf"/fine_tuning/jobs/{owed}")) == retrieves
    await bot.stop()


async def test_a_status_change_whose_first_edit_was_lost_is_shown_after_restart(
    fake_openai: FakeOpenAI, fake_slack: FakeSlack, tmp_path: Path
) -> None:
    # A failed edit waits CARD_UPDATE_SECONDS before its retry: the restart comes first.
    bot = InProcessBot(fake_openai, fake_slack, tmp_path, **{**ENV, "CARD_UPDATE_SECONDS": "120"})
    job_id, card = await create(bot, "C400")
    assert "Running" not in str(card.blocks)
    bot.slack.fail_next("chat.update", error="internal_error", channel="C400")
    bot.openai.set_status(job_id, "running")
    await bot.cycle()
    [failed] = update_calls(bot.slack)
    assert failed.params.get("ts") == card.ts and card_updates(bot.slack, card.ts) == []
    # The new status is recorded with the watch; the card still shows the old one, and owes an edit.
    with bot.store.engine.connect() as conn:
        query = sa.text("SELECT last_status FROM finetune_watches WHERE job_id = :j")
        assert conn.execute(query, {"j": job_id}).scalar_one() == "running"
    assert card_digest(bot, job_id) == "owed"

    bot = await bot.restart()
    try:
        await bot.cycle()
        [shown] = card_updates(bot.slack, card.ts)
        assert "Running" in shown
        bot.clock.advance(120)
        await bot.cycle(2)
        assert len(card_updates(bot.slack, card.ts)) == 1
    finally:
        await bot.stop()
