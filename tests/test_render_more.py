"""Rendering details: null settings, long ages and durations, singular counts, the list of a page
the read policy filtered, and the not-found answer a hidden job shares with a missing one."""

from __future__ import annotations

from typing import Any

import pytest

from bot import access, render
from bot.models import FineTuningJob
from bot.openai_client import NotFoundError
from tests.harness import all_text

NOW = 1_700_000_000
DAY = 86400


def job(**overrides: Any) -> FineTuningJob:
    data: dict[str, Any] = {
        "id": "ftjob-abc123",
        "model": "gpt-4o-mini-2024-07-18",
        "created_at": NOW - 600,
        "status": "running",
        "training_file": "file-train1",
        "method": {
            "type": "dpo",
            "dpo": {"hyperparameters": {"n_epochs": 3, "batch_size": None, "beta": 0.1, "x": True}},
        },
    }
    data.update(overrides)
    return FineTuningJob.from_api(data)


def text(reply: render.Reply) -> str:
    return all_text(reply.as_kwargs())


def test_a_null_hyperparameter_is_left_out_not_shown_as_none() -> None:
    shown = text(render.render_job(job(), NOW))
    assert "`n_epochs=3`" in shown and "`beta=0.1`" in shown and "`x=true`" in shown
    assert "None" not in shown and "batch_size" not in shown


def test_all_null_hyperparameters_leave_no_empty_section() -> None:
    bare = job(method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": None}}})
    assert "Hyperparameters" not in text(render.render_job(bare, NOW))


@pytest.mark.parametrize(
    ("ago", "words"),
    [
        (20 * DAY, "20 days ago"),
        (45 * DAY, "1 month ago"),
        (1215 * DAY, "3 years ago"),
        (400 * DAY, "1 year ago"),
    ],
)
def test_long_ages_read_in_months_and_years(ago: int, words: str) -> None:
    assert render.age_words(NOW - ago, NOW) == words


@pytest.mark.parametrize(
    ("seconds", "words"),
    [
        (3 * DAY + 4 * 3600, "3 days 4 hours"),
        (45 * DAY, "1 month 14 days"),
        (1215 * DAY, "3 years 3 months"),
    ],
)
def test_long_durations_read_in_months_and_years(seconds: int, words: str) -> None:
    assert render.duration_words(seconds) == words


def test_one_job_or_event_is_singular() -> None:
    one = render.render_job_list([job()], True, NOW)
    assert "Showing the most recent job;" in text(one) and "1 most recent" not in text(one)
    assert one.text == "1 fine-tuning job"
    events = render.render_events("ftjob-abc123", [], False, NOW)
    assert "No events yet" in text(events)


def test_a_filtered_list_counts_hidden_jobs_and_names_none() -> None:
    reply = render.render_job_list([job()], False, NOW, hidden=2, policy=access.ReadAccess.CHANNEL.value)
    shown = text(reply)
    assert "ftjob-abc123" in shown
    assert "2 more jobs are not shown here" in shown and "this channel" in shown
    nothing = text(render.render_job_list([], False, NOW, hidden=1, policy="slack"))
    assert "No fine-tuning jobs you can see here" in nothing and "1 more job is not shown" in nothing


def test_a_hidden_job_and_a_missing_one_get_the_same_answer() -> None:
    missing = render.render_openai_error(
        NotFoundError("No such job", status=404, request_id="req_123"), job_id="ftjob-abc123"
    )
    assert missing == render.render_job_not_found("ftjob-abc123")
    assert "req_123" not in text(missing)
