"""End to end: the announcement is a live card, edited in place as metrics arrive, by the real
scheduler's cycles and within CARD_UPDATE_SECONDS of wall time.

The rest of the card's behaviour (the interval and the per-minute budget read on a fake clock, a
429's pause, cards Slack will not let us edit, sixty cards over budget, and cards owed after a
restart) is shown in-process in tests/test_inprocess_card.py, where it costs no waiting.
"""

from __future__ import annotations

import itertools
from pathlib import Path

from tests.fakes import FakeOpenAI, FakeSlack
from tests.fakes.slack import RecordedMessage
from tests.harness import Harness, all_text, start_bot


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
