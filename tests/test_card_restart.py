"""A job's card never stays stale after a restart (issue 12 follow-up).

Card edits wait in memory; a process that stops (SIGKILL) loses them. At its first cycle the next
process edits the cards of jobs that ended recently whose outcome is out but whose card does not
show the final state (from the outbox payload, no OpenAI request), and a card whose status moved
on before its first edit is marked as owing one, so the next process edits it too.

Here a real process is SIGKILLed between the outcome and its final card edit. The rest (a final
card not edited again after restarts, a status change whose first edit was lost) is shown
in-process, on a fake clock, in tests/test_inprocess_card.py.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from bot.store import Store
from tests.fakes import FakeOpenAI, FakeSlack
from tests.harness import Harness, query_db, start_bot
from tests.test_e2e_card import card_updates, create, outcomes
from tests.test_e2e_exactly_once import wait_killed

ENV = {"POLL_INTERVAL_SECONDS": "1", "CARD_UPDATE_SECONDS": "2"}


def succeed(h: Harness, job_id: str) -> None:
    h.openai.set_status(job_id, "succeeded", fine_tuned_model=f"ft:gpt-4o-mini:acme::{job_id[-6:]}")


def card_digest_of(h: Harness, job_id: str) -> str | None:
    [(digest,)] = query_db(h.db_url, "SELECT card_digest FROM finetune_watches WHERE job_id = :j", j=job_id)
    return digest


def finals(h: Harness, ts: str) -> list[str]:
    return [t for t in card_updates(h, ts) if "Succeeded" in t]


def test_final_card_lost_at_a_kill_is_shown_after_restart(
    fake_openai: FakeOpenAI, fake_slack: FakeSlack, tmp_path: Path
) -> None:
    h = Harness(
        start_bot(fake_openai, fake_slack, tmp_path, **ENV, FINETUNE_CRASH_AT="before_final_card"),
        fake_openai,
        fake_slack,
    )
    job_id, card = create(h, "C100")
    succeed(h, job_id)
    wait_killed(h.bot)  # the outcome was posted, then the process died before editing the card
    assert len(outcomes(h, job_id)) == 1
    assert card_updates(h, card.ts) == []
    retrieves = len(fake_openai.requests_to(rf"/fine_tuning/jobs/{job_id}"))

    h.bot = start_bot(fake_openai, fake_slack, tmp_path, **ENV)
    try:
        h.slack.wait_for(lambda s: finals(h, card.ts), timeout=20)
        assert f"ft:gpt-4o-mini:acme::{job_id[-6:]}" in finals(h, card.ts)[0]
        h.wait_poll_cycles(2)
        assert len(card_updates(h, card.ts)) == 1
        assert len(outcomes(h, job_id)) == 1
        # The final state came from the outbox payload: the job was not asked for again (nor for
        # its report, which starts from that payload too).
        assert len(fake_openai.requests_to(rf"/fine_tuning/jobs/{job_id}")) == retrieves
    finally:
        assert h.bot.stop() == 0, h.bot.logs


def test_final_cards_to_check_finds_only_sent_editable_recent_cards(database_url: str) -> None:
    store = Store.from_url(database_url)
    with contextlib.closing(store):

        def ended(job: str, *, at: float, sent_to: str | None = "C1", ts: str | None = "1.0") -> int:
            watch, _ = store.add_watch(
                job_id=job, team_id="T", channel_id="C1", user_id="U",
                announcement_ts=ts, job_created_at=1, status="running",
            )  # fmt: skip
            store.finish_watch(watch, "succeeded", {"id": job, "status": "succeeded"}, now=at)
            [item] = [i for i in store.outbox_items() if i.job_id == job and not i.is_report]
            if sent_to:
                store.mark_sent(item.id, channel=sent_to, ts="2.0")
            return watch.id

        wanted = ended("ftjob-owed", at=1000.0)
        newer = ended("ftjob-newer", at=1500.0)
        ended("ftjob-unsent", at=1000.0, sent_to=None)  # the notifier edits it once it is out
        ended("ftjob-by-dm", at=1000.0, sent_to="D9")  # the channel refused the bot
        ended("ftjob-old", at=100.0)
        ended("ftjob-no-card", at=1000.0, ts=None)
        store.stop_card(ended("ftjob-stopped", at=1000.0), "message_not_found")

        rows = store.final_cards_to_check(ended_since=500.0)
        assert [(w.id, p["id"]) for w, p in rows] == [(newer, "ftjob-newer"), (wanted, "ftjob-owed")]
        assert [w.id for w, _ in store.final_cards_to_check(ended_since=500.0, limit=1)] == [newer]
