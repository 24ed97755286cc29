"""The report's numbers and texts (bot/scorecard.py), on small hand-computed series."""

from __future__ import annotations

from typing import Any

import pytest

from bot.models import FineTuningJob
from bot.scorecard import (
    MAX_ALT_TEXT,
    MAX_TEXT,
    Scorecard,
    best_checkpoint,
    build_scorecard,
    chart_alt_text,
    chart_title,
    format_accuracy,
    format_duration,
    format_loss,
    render_scorecard,
)
from bot.training_metrics import CheckpointInfo, MetricPoint, MetricSeries

HOSTILE = "ft:gpt-4o-mini:<!channel>:*bold*_x_`tick`<https://evil.example|click> & more"


def job(**overrides: Any) -> FineTuningJob:
    data: dict[str, Any] = {
        "id": "ftjob-abc123",
        "object": "fine_tuning.job",
        "status": "succeeded",
        "model": "gpt-4o-mini-2024-07-18",
        "created_at": 1_700_000_000,
        "finished_at": 1_700_000_000 + 4320,  # 1 h 12 min
        "fine_tuned_model": "ft:gpt-4o-mini-2024-07-18:acme::9xYz",
        "trained_tokens": 1_234_567,
        "hyperparameters": {"n_epochs": 3, "batch_size": 1},
        "result_files": ["file-res"],
    }
    data.update(overrides)
    return FineTuningJob.from_api(data)


# train: 2.0, 1.5, 1.2, 1.3, 1.25 → final 1.25, min 1.2 at step 3
# valid: 2.1 (1), 1.4 (3), 1.45 (5) → final 1.45, min 1.4 at step 3; full valid at step 5 only
SERIES = MetricSeries(
    points=(
        MetricPoint(1, train_loss=2.0, train_accuracy=0.40, valid_loss=2.1, valid_accuracy=0.38),
        MetricPoint(2, train_loss=1.5, train_accuracy=0.50),
        MetricPoint(3, train_loss=1.2, train_accuracy=0.60, valid_loss=1.4, valid_accuracy=0.58),
        MetricPoint(4, train_loss=1.3, train_accuracy=0.62),
        MetricPoint(
            5,
            train_loss=1.25,
            train_accuracy=0.655,
            valid_loss=1.45,
            valid_accuracy=0.6,
            full_valid_loss=1.42,
        ),
    ),
    skipped_rows=0,
    source="result file",
)


def ckpt(step: int, **metrics: float) -> CheckpointInfo:
    return CheckpointInfo(step=step, model=f"ft:gpt-4o-mini:acme::9xYz:ckpt-step-{step}", metrics=metrics)


CHECKPOINTS = (ckpt(5, train_loss=1.25, valid_loss=1.45), ckpt(3, train_loss=1.2, valid_loss=1.4))


def card(**overrides: Any) -> Scorecard:
    return build_scorecard(
        overrides.pop("job", job()), overrides.pop("series", SERIES), CHECKPOINTS, **overrides
    )


# ---------------------------------------------------------------------------------------------- numbers


def test_numbers_of_a_small_series() -> None:
    c = card()
    assert (c.job_id, c.base_model, c.status) == ("ftjob-abc123", "gpt-4o-mini-2024-07-18", "succeeded")
    assert c.fine_tuned_model == "ft:gpt-4o-mini-2024-07-18:acme::9xYz"
    assert c.steps == 5
    assert (c.final_train_loss, c.min_train_loss, c.min_train_loss_step) == (1.25, 1.2, 3)
    assert (c.first_train_loss, c.first_valid_loss) == (2.0, 2.1)
    assert (c.final_valid_loss, c.min_valid_loss, c.min_valid_loss_step) == (1.45, 1.4, 3)
    assert c.full_valid_loss == 1.42
    assert (c.final_train_accuracy, c.final_valid_accuracy) == (0.655, 0.6)
    assert (c.trained_tokens, c.epochs, c.duration_seconds) == (1_234_567, 3, 4320)
    assert [k.step for k in c.checkpoints] == [3, 5]  # sorted, whatever order they came in
    assert c.best_checkpoint == ckpt(3, train_loss=1.2, valid_loss=1.4)
    assert c.metrics_source == "result file"
    assert c.has_metrics


def test_min_tie_goes_to_the_earlier_step() -> None:
    series = MetricSeries((MetricPoint(1, train_loss=0.5), MetricPoint(2, train_loss=0.5)), 0, "events")
    c = card(series=series)
    assert (c.min_train_loss, c.min_train_loss_step) == (0.5, 1)
    assert c.final_valid_loss is None and c.min_valid_loss_step is None
    assert c.metrics_source == "events"


def test_best_checkpoint_by_valid_loss_then_full_valid_loss() -> None:
    assert best_checkpoint(
        [ckpt(1, valid_loss=0.9), ckpt(2, valid_loss=0.7), ckpt(3, valid_loss=0.8)]
    ) == ckpt(2, valid_loss=0.7)
    # valid_loss is preferred even when another checkpoint has a lower full_valid_loss
    assert best_checkpoint([ckpt(1, valid_loss=0.9), ckpt(2, full_valid_loss=0.1)]) == ckpt(1, valid_loss=0.9)
    assert best_checkpoint([ckpt(1, full_valid_loss=0.9), ckpt(2, full_valid_loss=0.8)]) == ckpt(
        2, full_valid_loss=0.8
    )
    assert best_checkpoint([ckpt(1, train_loss=0.1)]) is None
    assert best_checkpoint([]) is None


def test_epochs_auto_and_missing() -> None:
    assert card(job=job(hyperparameters={"n_epochs": "auto"})).epochs == "auto"
    assert card(job=job(hyperparameters={})).epochs is None


def test_epochs_from_the_method_hyperparameters() -> None:
    method = {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 4}}}
    assert card(job=job(method=method, hyperparameters=None)).epochs == 4


def test_duration_of_a_running_job_uses_now_and_without_now_is_unknown() -> None:
    running = job(status="running", finished_at=None, fine_tuned_model=None)
    assert card(job=running, now=1_700_000_000 + 600).duration_seconds == 600
    assert card(job=running).duration_seconds is None
    # An ended job without finished_at: unknown, not "until now".
    assert card(job=job(status="failed", finished_at=None), now=1_800_000_000).duration_seconds is None


def test_no_metrics_at_all() -> None:
    c = build_scorecard(job(), None, [])
    assert not c.has_metrics
    assert c.metrics_source is None and c.steps is None and c.best_checkpoint is None
    empty = build_scorecard(job(), MetricSeries((MetricPoint(1),), 0, "events"), [])
    assert not empty.has_metrics


# ---------------------------------------------------------------------------------------------- formatting


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.41234, "0.412"),
        (0.398, "0.398"),
        (1.2345, "1.23"),
        (12.345, "12.3"),
        (1234.5, "1234"),
        (0.012345, "0.0123"),
        (0.0, "0"),
        (1e-9, "1.00e-09"),
    ],
)
def test_format_loss(value: float, text: str) -> None:
    assert format_loss(value) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0 s"), (42, "42 s"), (303, "5 min 3 s"), (4320, "1 h 12 min"), (3600, "1 h"), (273_600, "3 d 4 h")],
)
def test_format_duration(seconds: int, text: str) -> None:
    assert format_duration(seconds) == text


def test_format_accuracy() -> None:
    assert format_accuracy(0.655) == "65.5%"
    assert format_accuracy(1.0) == "100.0%"


# ---------------------------------------------------------------------------------------------- mrkdwn


def test_render_states_the_numbers() -> None:
    text = render_scorecard(card())
    lines = text.splitlines()
    assert lines[0] == "*:bar_chart: Training report for `ftjob-abc123`*"
    assert "*Training loss:* 1.25 final · 1.20 min (step 3)" in lines
    assert "*Validation loss:* 1.45 final · 1.40 min (step 3) · 1.42 full validation" in lines
    assert "*Token accuracy:* 65.5% training · 60.0% validation" in lines
    assert "*Steps:* 5 · *Tokens:* 1,234,567 · *Epochs:* 3 · *Duration:* 1 h 12 min" in lines
    assert lines[lines.index("*Checkpoints:*") + 1 :] == [
        "• step 3 · valid 1.40 · train 1.20 · `ft:gpt-4o-mini:acme::9xYz:ckpt-step-3`"
        " :star: best by validation loss",
        "• step 5 · valid 1.45 · train 1.25 · `ft:gpt-4o-mini:acme::9xYz:ckpt-step-5`",
    ]
    assert "Status" not in text  # a succeeded job's status goes without saying


def test_partial_report_of_a_running_job() -> None:
    running = job(status="running", finished_at=None, fine_tuned_model=None)
    text = render_scorecard(card(job=running, now=1_700_000_000 + 90), partial=True)
    assert text.splitlines()[0] == "*:bar_chart: Training report so far for `ftjob-abc123`*"
    assert "*Base:* `gpt-4o-mini-2024-07-18` · *Status:* Running" in text
    assert "*Model:*" not in text
    assert "*Duration:* 1 min 30 s" in text


def test_note_is_an_escaped_last_line() -> None:
    text = render_scorecard(card(), note="The chart could not be drawn: <!here> timed out")
    assert (
        text.splitlines()[-1] == ":information_source: The chart could not be drawn: &lt;!here&gt; timed out"
    )


def test_no_metrics_text_still_reports_the_rest() -> None:
    text = render_scorecard(build_scorecard(job(), None, CHECKPOINTS))
    assert "No step metrics were available" in text
    assert "*Tokens:* 1,234,567" in text and "*Epochs:* 3" in text and "*Duration:* 1 h 12 min" in text
    assert "`ft:gpt-4o-mini:acme::9xYz:ckpt-step-3` :star: best by validation loss" in text
    assert "Training loss" not in text


def test_hostile_model_names_are_inert() -> None:
    hostile_job = job(id="ftjob-<!channel>", model="<@U123>", fine_tuned_model=HOSTILE)
    hostile_ckpt = CheckpointInfo(step=1, model=HOSTILE, metrics={"valid_loss": 0.5})
    text = render_scorecard(build_scorecard(hostile_job, SERIES, [hostile_ckpt]), note="<!everyone> *x*")
    assert "<" not in text and ">" not in text  # no mention, no link can form
    assert "&lt;!channel&gt;" in text and "&lt;@U123&gt;" in text
    # Model names sit in code spans, where *bold* and _italic_ are shown as typed; a backtick
    # inside cannot end the span early.
    assert (
        "`ft:gpt-4o-mini:&lt;!channel&gt;:*bold*_x_'tick'&lt;https://evil.example|click&gt; &amp; more`"
        in text
    )
    for line in text.splitlines():
        assert line.count("`") % 2 == 0


def test_length_cap_with_many_checkpoints_keeps_the_best() -> None:
    long_model = "ft:gpt-4o-mini-2024-07-18:a-very-long-organisation-name:with-a-long-suffix:ckpt-step-"
    many = [
        CheckpointInfo(step=s, model=f"{long_model}{s}", metrics={"valid_loss": 1 + s / 1000})
        for s in range(1, 201)
    ]
    many.append(CheckpointInfo(step=500, model=f"{long_model}500", metrics={"valid_loss": 0.5}))
    text = render_scorecard(build_scorecard(job(), SERIES, many), note="x" * 5000)
    assert len(text) <= MAX_TEXT
    lines = text.splitlines()
    shown = [line for line in lines if line.startswith("• step")]
    assert 5 < len(shown) < 201
    assert shown[-1].endswith(":star: best by validation loss") and "step 500 " in shown[-1]
    assert f"… and {201 - len(shown)} more" in lines
    assert lines[-1].startswith(":information_source: xxx") and lines[-1].endswith("…")


# ------------------------------------------------------------------------------------------ alt text, title


def test_alt_text_states_the_final_losses() -> None:
    alt = chart_alt_text(card())
    assert len(alt) <= MAX_ALT_TEXT
    assert "ftjob-abc123" in alt
    assert "Training loss went from 2.00 to 1.25, lowest 1.20 at step 3." in alt
    assert "Validation loss went from 2.10 to 1.45, lowest 1.40 at step 3." in alt
    assert "Full validation loss 1.42." in alt
    assert "Final token accuracy 65.5% training, 60.0% validation." in alt
    assert "Best by validation loss: step 3." in alt


def test_alt_text_is_capped_with_long_names_and_many_checkpoints() -> None:
    many = [ckpt(s, valid_loss=1.0) for s in range(10_000, 10_500)]
    alt = chart_alt_text(build_scorecard(job(id="ftjob-" + "x" * 2000, model="m" * 2000), SERIES, many))
    assert len(alt) <= MAX_ALT_TEXT
    assert "1.25" in alt and "1.45" in alt


def test_alt_text_without_metrics() -> None:
    assert "No step metrics were available." in chart_alt_text(build_scorecard(job(), None, []))


def test_chart_title_names_the_job_and_model() -> None:
    assert chart_title(card()) == "ftjob-abc123 · ft:gpt-4o-mini-2024-07-18:acme::9xYz"
    assert chart_title(card(job=job(fine_tuned_model=None))) == "ftjob-abc123 · gpt-4o-mini-2024-07-18"
    assert len(chart_title(card(job=job(fine_tuned_model="y" * 1000)))) <= 120
