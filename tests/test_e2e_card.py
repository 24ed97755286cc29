"""End to end: the announcement is a live card, edited as metrics arrive, within its budget."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

from tests.fakes import FakeOpenAI, FakeSlack
from tests.fakes.slack import RecordedMessage
from tests.harness import Harness, all_text, query_db, start_bot, wait_until


def start(fake_openai: FakeOpenAI, fake_slack: FakeSlack, tmp_path: Path, **env: str) -> Harness:
    settings = {"POLL_INTERVAL_SECONDS": "1", "CARD_UPDATE_SECONDS": "2", **env}
    return Harness(start_bot(fake_openai, fake_slack, tmp_path, **settings), fake_openai, fake_slack)


def stop(h: Harness) -> None:
    assert h.bot.stop() == 0, h.bot.logs
    h.assert_no_secrets()


def create(h: Harness, channel: str) -> tuple[str, RecordedMessage]:
    before, count = set(h.openai.jobs), len(h.slack.messages_in(channel))
    response, _ = h.command("create file-abc123", channel_id=channel, user_id="U42")
    assert response.status_code == 200
    h.slack.wait_for(lambda s: len(s.messages_in(channel)) > count)
    [job_id] = set(h.openai.jobs) - before
    return job_id, h.slack.messages_in(channel)[-1]


def metrics(h: Harness, job_id: str, step: int, loss: float, total: int = 100) -> None:
    data = {"step": step, "total_steps": total, "train_loss": loss}
    h.openai.add_event(job_id, f"Step {step}/{total}", type="metrics", data=data)


def card_updates(h: Harness, ts: str) -> list[str]:
    return [all_text({"t": u.text, "b": u.blocks}) for u in h.slack.updates if u.ts == ts]


def outcomes(h: Harness, job_id: str) -> list[RecordedMessage]:
    return [
        m
        for m in h.slack.messages
        if (m.params.get("metadata") or {}).get("event_type") == "finetune_outcome"
        and (m.params["metadata"].get("event_payload") or {}).get("key", "").startswith(job_id + ":")
    ]


def test_card_follows_metrics_then_shows_the_final_state(
    fake_openai: FakeOpenAI, fake_slack: FakeSlack, tmp_path: Path
) -> None:
    h = start(fake_openai, fake_slack, tmp_path)
    try:
        job_id, card = create(h, "C123")
        h.openai.set_status(job_id, "running")
        metrics(h, job_id, 10, 0.9)
        h.slack.wait_for(lambda s: any("step 10 of 100" in t for t in card_updates(h, card.ts)), timeout=20)
        first = card_updates(h, card.ts)[-1]
        assert "10%" in first and "0.9" in first and "Running" in first
        metrics(h, job_id, 55, 0.42)
        h.slack.wait_for(lambda s: any("step 55 of 100" in t for t in card_updates(h, card.ts)), timeout=20)
        latest = card_updates(h, card.ts)[-1]
        assert "55%" in latest and "0.42" in latest
        # Within the throttle: two edits of one card at least CARD_UPDATE_SECONDS apart.
        times = [u.time for u in h.slack.updates if u.ts == card.ts]
        assert all(b - a >= 2 - 0.25 for a, b in itertools.pairwise(times)), times
        # At most one events request per cycle, newest page only, a small limit.
        events = h.openai.requests_to(rf"/fine_tuning/jobs/{job_id}/events")
        assert events and all(r.query.get("limit") == "10" for r in events)
        assert "after" not in events[-1].query

        h.openai.set_status(
            job_id, "succeeded", fine_tuned_model="ft:gpt-4o-mini:acme::xyz", trained_tokens=4242
        )
        h.slack.wait_for(lambda s: outcomes(h, job_id), timeout=20)
        h.slack.wait_for(lambda s: any("Succeeded" in t for t in card_updates(h, card.ts)), timeout=20)
        final = card_updates(h, card.ts)[-1]
        assert "ft:gpt-4o-mini:acme::xyz" in final and "4,242" in final and "%" not in final
        h.wait_poll_cycles(2)
        [outcome] = outcomes(h, job_id)
        assert outcome.thread_ts == card.ts
    finally:
        stop(h)


def test_card_faults_stop_or_pause_editing_and_the_outcome_still_posts(
    fake_openai: FakeOpenAI, fake_slack: FakeSlack, tmp_path: Path
) -> None:
    h = start(fake_openai, fake_slack, tmp_path)
    try:
        jobs = {channel: create(h, channel) for channel in ("CGONE", "CLOCKED", "CSLOW")}
        h.slack.fail_next("chat.update", error="message_not_found", channel="CGONE")
        h.slack.fail_next("chat.update", error="cant_update_message", channel="CLOCKED")
        h.slack.fail_next("chat.update", retry_after=3, channel="CSLOW")
        for job_id, _ in jobs.values():
            h.openai.set_status(job_id, "running")
            metrics(h, job_id, 10, 0.9)

        def calls(channel: str) -> list[int | None]:
            return [c.status for c in h.slack.calls_to("chat.update") if c.params.get("channel") == channel]

        # The 429'd card is edited after its Retry-After.
        _, slow_card = jobs["CSLOW"]
        h.slack.wait_for(
            lambda s: any("step 10 of 100" in t for t in card_updates(h, slow_card.ts)), timeout=30
        )
        assert calls("CSLOW")[0] == 429
        assert "rate-limited" in h.bot.logs
        for channel, reason in (("CGONE", "message_not_found"), ("CLOCKED", "cant_update_message")):
            wait_until(
                lambda ch=channel: query_db(
                    h.db_url, "SELECT card_stopped FROM finetune_watches WHERE channel_id = :c", c=ch
                )[0][0],
                15,
                f"{channel}'s card to be given up",
            )
            [(stopped,)] = query_db(
                h.db_url, "SELECT card_stopped FROM finetune_watches WHERE channel_id = :c", c=channel
            )
            assert stopped == reason
        # More progress: the working card is edited again (positive control); the others are not tried.
        for job_id, _ in jobs.values():
            metrics(h, job_id, 60, 0.3)
        h.slack.wait_for(
            lambda s: any("step 60 of 100" in t for t in card_updates(h, slow_card.ts)), timeout=30
        )
        for job_id, _ in jobs.values():
            h.openai.set_status(job_id, "succeeded", fine_tuned_model="ft:m::x", trained_tokens=1)
        for job_id, _ in jobs.values():
            h.slack.wait_for(lambda s, j=job_id: outcomes(h, j), timeout=20)
        h.slack.wait_for(lambda s: any("Succeeded" in t for t in card_updates(h, slow_card.ts)), timeout=20)
        h.wait_poll_cycles(2)
        for job_id, card in jobs.values():
            assert len(outcomes(h, job_id)) == 1
            assert outcomes(h, job_id)[0].thread_ts == card.ts
        assert len(calls("CGONE")) == 1 and len(calls("CLOCKED")) == 1
    finally:
        stop(h)


def test_sixty_running_jobs_stay_within_the_update_budget_and_outcomes_are_not_delayed(
    fake_openai: FakeOpenAI, fake_slack: FakeSlack, tmp_path: Path
) -> None:
    budget = 20
    h = start(fake_openai, fake_slack, tmp_path, CARD_UPDATE_SECONDS="1", CARD_EDITS_PER_MINUTE=str(budget))
    try:
        channels = [f"CLOAD{i}" for i in range(6)]
        jobs = [create(h, channels[i % 6]) for i in range(60)]
        for job_id, _ in jobs:
            h.openai.set_status(job_id, "running")
        step = 1
        deadline = time.monotonic() + 60
        # Metrics change every cycle until the budget is spent.
        while len(h.slack.calls_to("chat.update")) < budget and time.monotonic() < deadline:
            for job_id, _ in jobs:
                metrics(h, job_id, step, 1.0 / step)
            step += 1
            h.wait_poll_cycles(1)
        h.wait_poll_cycles(2)
        edited = {c.params.get("ts") for c in h.slack.calls_to("chat.update")}
        assert len(edited) >= budget // 2  # least recently edited first: spread over many cards

        for job_id, _ in jobs:
            h.openai.set_status(job_id, "succeeded", fine_tuned_model="ft:m::x", trained_tokens=1)
        h.slack.wait_for(lambda s: all(outcomes(h, j) for j, _ in jobs), timeout=90)
        # Outcomes did not wait for the card budget: most final cards are still to come.
        finals = [c for c in h.slack.calls_to("chat.update") if "Succeeded" in all_text(c.params)]
        assert len(finals) < 60
        times = sorted(c.time for c in h.slack.calls_to("chat.update"))
        worst = max(sum(1 for t in times if start <= t < start + 60) for start in times)
        assert worst <= budget, f"{worst} chat.update calls in one minute"
        assert worst <= 50  # Slack's Tier 3
        for job_id, _ in jobs:
            assert len(outcomes(h, job_id)) == 1
    finally:
        stop(h)
