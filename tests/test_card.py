"""Unit tests for bot.card: the live card's content, its fingerprint, and which cards to edit."""

from __future__ import annotations

import json
from typing import Any

import pytest
from slack_sdk.models.blocks import Block

from bot import card
from bot.card import Candidate, Progress, card_digest, cards_to_edit, progress_from_events, render_card
from bot.models import FineTuningJob, JobEvent
from bot.render import Reply, date_token

NOW = 1_700_000_000
HOSTILE = "<!channel> <@U123> <https://evil|click> & `tick`"
LIVE = ("<!channel", "<@U123>", "<https://evil")


def job(**overrides: Any) -> FineTuningJob:
    data: dict[str, Any] = {
        "object": "fine_tuning.job",
        "id": "ftjob-abc123",
        "model": "gpt-4o-mini-2024-07-18",
        "created_at": NOW - 3600,
        "finished_at": None,
        "fine_tuned_model": None,
        "status": "running",
        "validation_file": None,
        "training_file": "file-train1",
        "trained_tokens": None,
        "error": None,
        "estimated_finish": None,
        "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 3}}},
        "user_provided_suffix": "my-bot",
    }
    data.update(overrides)
    return FineTuningJob.from_api(data)


def metrics(created_at: int, **data: Any) -> JobEvent:
    return JobEvent.from_api(
        {
            "object": "fine_tuning.job.event",
            "id": f"ftevent-{created_at}",
            "created_at": created_at,
            "level": "info",
            "message": f"Step {data.get('step')}",
            "type": "metrics",
            "data": data,
        }
    )


def text_of(reply: Reply) -> str:
    return json.dumps(reply.as_kwargs(), ensure_ascii=False)


def assert_valid(reply: Reply) -> None:
    assert len(reply.blocks) <= 50
    ids = []
    for block in reply.blocks:
        Block.parse(block).validate_json()  # type: ignore[union-attr]
        if block["type"] == "section":
            assert len(block.get("text", {}).get("text", "")) <= 3000
            assert len(block.get("fields", [])) <= 10
        if block["type"] == "actions":
            assert 1 <= len(block["elements"]) <= 25
            ids += [e["action_id"] for e in block["elements"]]
    assert len(ids) == len(set(ids))


# ---------------------------------------------------------------------------------------------- parsing


def test_progress_reads_the_newest_metrics_and_the_step_rate() -> None:
    events = [
        metrics(NOW - 10, step=40, total_steps=100, train_loss=0.5),
        JobEvent.from_api({"id": "ftevent-m", "created_at": NOW - 20, "level": "info", "message": "hi"}),
        metrics(NOW - 110, step=20, total_steps=100, train_loss=0.9, valid_loss=1.1),
    ]
    progress = progress_from_events(events)
    assert progress == Progress(
        step=40,
        total_steps=100,
        train_loss=0.5,
        valid_loss=1.1,  # not in the newest event: the newest one that has it
        train_accuracy=None,
        at=NOW - 10,
        steps_per_second=0.2,
    )
    assert progress.fraction == 0.4


@pytest.mark.parametrize(
    "data",
    [{}, {"step": "12"}, {"step": True}, {"step": None, "train_loss": "x"}, {"step": float("nan")}],
)
def test_progress_tolerates_missing_and_mistyped_keys(data: dict[str, Any]) -> None:
    progress = progress_from_events([metrics(NOW, **data)])
    assert progress is not None and progress.step is None and progress.train_loss is None
    reply = render_card(job(), "U1", NOW, progress=progress)
    assert "Waiting for the first training metrics" in text_of(reply)
    assert_valid(reply)


def test_no_metrics_event_means_no_progress() -> None:
    assert progress_from_events([]) is None
    message = JobEvent.from_api({"id": "e", "created_at": NOW, "level": "info", "message": "Job started"})
    assert progress_from_events([message]) is None


# ---------------------------------------------------------------------------------------------- rendering


def test_running_card_shows_bar_step_percent_losses_elapsed() -> None:
    progress = progress_from_events(
        [
            metrics(
                NOW - 5,
                step=420,
                total_steps=1000,
                train_loss=0.31234,
                valid_loss=0.4,
                train_mean_token_accuracy=0.9,
            )
        ]
    )
    text = text_of(render_card(job(), "U123ABC", NOW, progress=progress))
    assert "`▓▓▓▓░░░░░░` 42% · step 420 of 1,000" in text
    assert "*Train loss*\\n0.312" in text
    assert "*Valid loss*\\n0.4" in text
    assert "*Train accuracy*\\n0.9" in text
    assert "*Elapsed*\\n1 hour" in text
    for item in (
        "<@U123ABC> started a fine-tuning job `ftjob-abc123`",
        "`gpt-4o-mini-2024-07-18`",
        "`my-bot`",
    ):
        assert item in text
    assert "supervised" in text and ":arrows_counterclockwise: Running" in text


def test_without_total_steps_the_step_is_shown_without_percent() -> None:
    progress = progress_from_events([metrics(NOW, step=7, train_loss=1.5)])
    text = text_of(render_card(job(), "U1", NOW, progress=progress))
    assert "Step 7 (total steps not reported)" in text and "%" not in text
    assert "ETA" not in text  # no total, no estimate from OpenAI: no ETA rather than a guess


def test_eta_from_estimated_finish_in_the_readers_time_zone() -> None:
    progress = progress_from_events([metrics(NOW, step=10, total_steps=100)])
    text = text_of(render_card(job(estimated_finish=NOW + 900), "U1", NOW, progress=progress))
    assert "*ETA*\\n" + date_token(NOW + 900, "{date_short_pretty} {time}") in text
    assert "step rate" not in text


def test_eta_from_the_step_rate_when_openai_gives_none() -> None:
    events = [metrics(NOW - 10, step=30, total_steps=100), metrics(NOW - 210, step=10, total_steps=100)]
    progress = progress_from_events(events)
    # 20 steps in 200 s → 0.1 step/s; 70 steps to go → 700 s after the newest event.
    assert card.eta(job(), progress) == NOW - 10 + 700
    text = text_of(render_card(job(), "U1", NOW, progress=progress))
    assert date_token(NOW + 690, "{date_short_pretty} {time}") + " (from the step rate)" in text


@pytest.mark.parametrize(
    ("status", "shown"),
    [
        ("queued", ":hourglass_flowing_sand: Queued"),
        ("validating_files", ":mag: Validating files"),
        ("paused", ":double_vertical_bar: Paused"),
        ("cancelled", ":no_entry_sign: Cancelled"),
        ("some_new_state", ":grey_question: Some new state"),
    ],
)
def test_statuses_show_their_emoji_and_no_progress(status: str, shown: str) -> None:
    progress = progress_from_events([metrics(NOW, step=1, total_steps=10)])
    reply = render_card(job(status=status), "U1", NOW, progress=progress)
    assert shown in text_of(reply) and "▓" not in text_of(reply) and "░" not in text_of(reply)
    assert_valid(reply)


def test_succeeded_card_shows_model_tokens_duration_and_ignores_a_null_error() -> None:
    ended = job(
        status="succeeded",
        fine_tuned_model="ft:gpt-4o-mini:org:my-bot:abc",
        trained_tokens=123456,
        finished_at=NOW - 3600 + 5400,
        error={"code": None, "message": None, "param": None},
    )
    text = text_of(render_card(ended, "U1", NOW))
    assert "`ft:gpt-4o-mini:org:my-bot:abc`" in text and "123,456" in text
    assert "*Duration*\\n1 hour 30 minutes" in text and "Error" not in text
    assert ":white_check_mark: Succeeded" in text


def test_failed_card_shows_the_error_escaped() -> None:
    failed = job(status="failed", error={"code": "invalid_file", "message": HOSTILE, "param": None})
    reply = render_card(failed, "U1", NOW)
    text = text_of(reply)
    assert "*Error* `invalid_file` &lt;!channel&gt;" in text
    assert_valid(reply)
    assert "Error* OpenAI gave no reason" in text_of(render_card(job(status="failed"), "U1", NOW))


def test_everything_from_openai_and_users_is_escaped() -> None:
    hostile = job(model=HOSTILE, user_provided_suffix=HOSTILE, training_file=HOSTILE, status=HOSTILE)
    reply = render_card(hostile, HOSTILE, NOW, progress=Progress(step=1, total_steps=2))
    for block in reply.blocks:
        if block["type"] == "actions":
            continue
        for live in LIVE:
            assert live not in json.dumps(block)
    assert_valid(reply)


def test_huge_values_stay_within_block_kit_limits() -> None:
    big = "x" * 10_000
    reply = render_card(
        job(model=big, user_provided_suffix=big, status="failed", error={"code": big, "message": big}),
        "U1",
        NOW,
    )
    assert_valid(reply)


def test_card_carries_the_job_buttons_and_watch_wording() -> None:
    reply = render_card(job(), "U1", NOW, origin="watch")
    actions = [b for b in reply.blocks if b["type"] == "actions"]
    assert actions and actions[0]["elements"][0]["value"] == "ftjob-abc123"
    assert "is following fine-tuning job `ftjob-abc123` in this channel" in text_of(reply)


# ---------------------------------------------------------------------------------------------- digest


def test_digest_changes_with_what_the_card_shows_but_not_with_the_clock() -> None:
    p1 = Progress(step=10, total_steps=100, train_loss=0.5)
    assert card_digest(job(), p1) == card_digest(
        job(), Progress(step=10, total_steps=100, train_loss=0.50001)
    )
    assert card_digest(job(), p1) != card_digest(job(), Progress(step=11, total_steps=100, train_loss=0.5))
    assert card_digest(job(), p1) != card_digest(job(status="succeeded"), None)
    # Elapsed time is not part of it: rendering at another time gives the same digest.
    assert card_digest(job(), p1) == card_digest(job(), p1)


# ---------------------------------------------------------------------------------------------- throttle


def cand(
    key: int, *, changed: bool = True, edited: float | None = None, status: bool = False, final: bool = False
) -> Candidate:
    return Candidate(key, "new" if changed else "old", "old", edited, status, final)


def test_only_changed_cards_are_edited() -> None:
    picks = cards_to_edit([cand(1), cand(2, changed=False)], now=100, per_card_seconds=30, budget=10)
    assert [c.key for c in picks] == [1]


def test_a_card_is_edited_at_most_once_per_interval_except_its_final_state() -> None:
    candidates = [cand(1, edited=80), cand(2, edited=60), cand(3, edited=95, final=True)]
    picks = cards_to_edit(candidates, now=100, per_card_seconds=30, budget=10)
    assert [c.key for c in picks] == [3, 2]


def test_budget_goes_to_finals_then_status_changes_then_least_recently_edited() -> None:
    candidates = [
        cand(1, edited=10),
        cand(2, edited=5),
        cand(3, edited=50, status=True),
        cand(4),  # never edited
        cand(5, edited=60, final=True),
    ]
    picks = cards_to_edit(candidates, now=100, per_card_seconds=30, budget=4)
    assert [c.key for c in picks] == [5, 3, 4, 2]
    assert cards_to_edit(candidates, now=100, per_card_seconds=30, budget=0) == []
