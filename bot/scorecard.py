"""The completion report's numbers and text. Pure: no I/O, no clock (callers pass `now`).

`build_scorecard` reduces a job, its step metrics and its checkpoints to the figures an ML engineer
looks for (did the losses go down, did validation turn up, which checkpoint was best);
`render_scorecard` says them in Slack mrkdwn short enough for a phone, `chart_alt_text` says them
again for screen readers, and `chart_title` names the picture.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from bot.models import FineTuningJob
from bot.render import _code, escape, status_label
from bot.training_metrics import CheckpointInfo, MetricPoint, MetricSeries

MAX_TEXT = 3000  # the report is one section's worth: readable on a phone, within a section's limit
MAX_ALT_TEXT = 1000  # Slack's alt_txt limit (files.getUploadURLExternal answers alt_txt_too_large)
MAX_TITLE = 120
MODEL_CHARS = 150
BEST = ":star: best by validation loss"


@dataclass(frozen=True)
class Scorecard:
    job_id: str
    base_model: str
    fine_tuned_model: str | None
    status: str
    steps: int | None  # last step seen
    final_train_loss: float | None
    min_train_loss: float | None
    min_train_loss_step: int | None
    final_valid_loss: float | None
    min_valid_loss: float | None
    min_valid_loss_step: int | None
    full_valid_loss: float | None  # last full-epoch validation loss, when present
    final_train_accuracy: float | None
    final_valid_accuracy: float | None
    trained_tokens: int | None
    epochs: int | str | None
    duration_seconds: int | None
    checkpoints: tuple[CheckpointInfo, ...]
    best_checkpoint: CheckpointInfo | None  # lowest validation loss
    metrics_source: str | None  # "result file" / "events" / None
    first_train_loss: float | None = None
    first_valid_loss: float | None = None

    @property
    def has_metrics(self) -> bool:
        return any(
            value is not None
            for value in (
                self.final_train_loss,
                self.final_valid_loss,
                self.full_valid_loss,
                self.final_train_accuracy,
                self.final_valid_accuracy,
            )
        )


# ---------------------------------------------------------------------------------------------- numbers


def _values(
    points: Sequence[MetricPoint], get: Callable[[MetricPoint], float | None]
) -> list[tuple[int, float]]:
    return [(p.step, value) for p in points if (value := get(p)) is not None]


def _lowest(values: list[tuple[int, float]]) -> tuple[int, float] | None:
    # On a tie the earlier step wins: the same loss for less training.
    return min(values, key=lambda sv: (sv[1], sv[0])) if values else None


def best_checkpoint(checkpoints: Sequence[CheckpointInfo]) -> CheckpointInfo | None:
    """Lowest `valid_loss`; when no checkpoint has one, lowest `full_valid_loss`. The two are not
    compared with each other: they are measured on different amounts of validation data."""
    for key in ("valid_loss", "full_valid_loss"):
        scored = [(c.metrics[key], c.step, c) for c in checkpoints if key in c.metrics]
        if scored:
            return min(scored, key=lambda s: (s[0], s[1]))[2]
    return None


def _epochs(job: FineTuningJob) -> int | str | None:
    value = job.hyperparameters.get("n_epochs")
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return value if isinstance(value, str) and value else None


def _duration(job: FineTuningJob, now: int | None) -> int | None:
    if job.created_at is None:
        return None
    end = job.finished_at if job.finished_at is not None else (None if job.is_terminal else now)
    return max(0, end - job.created_at) if end is not None else None


def build_scorecard(
    job: FineTuningJob,
    series: MetricSeries | None,
    checkpoints: Sequence[CheckpointInfo],
    *,
    now: int | None = None,
) -> Scorecard:
    """`now` gives a running job's duration so far; without it (or for an ended job with no
    `finished_at`) the duration is unknown rather than guessed."""
    points = series.points if series is not None else ()
    train = _values(points, lambda p: p.train_loss)
    valid = _values(points, lambda p: p.valid_loss)
    full_valid = _values(points, lambda p: p.full_valid_loss)
    train_acc = _values(points, lambda p: p.train_accuracy)
    valid_acc = _values(points, lambda p: p.valid_accuracy) or _values(
        points, lambda p: p.full_valid_accuracy
    )
    min_train, min_valid = _lowest(train), _lowest(valid)
    ordered = tuple(sorted(checkpoints, key=lambda c: c.step))
    last_step = points[-1].step if points else (ordered[-1].step if ordered else None)
    return Scorecard(
        job_id=job.id,
        base_model=job.model,
        fine_tuned_model=job.fine_tuned_model,
        status=job.status,
        steps=last_step,
        final_train_loss=train[-1][1] if train else None,
        min_train_loss=min_train[1] if min_train else None,
        min_train_loss_step=min_train[0] if min_train else None,
        final_valid_loss=valid[-1][1] if valid else None,
        min_valid_loss=min_valid[1] if min_valid else None,
        min_valid_loss_step=min_valid[0] if min_valid else None,
        full_valid_loss=full_valid[-1][1] if full_valid else None,
        final_train_accuracy=train_acc[-1][1] if train_acc else None,
        final_valid_accuracy=valid_acc[-1][1] if valid_acc else None,
        trained_tokens=job.trained_tokens,
        epochs=_epochs(job),
        duration_seconds=_duration(job, now),
        checkpoints=ordered,
        best_checkpoint=best_checkpoint(ordered),
        metrics_source=series.source if series is not None and series.points else None,
        first_train_loss=train[0][1] if train else None,
        first_valid_loss=valid[0][1] if valid else None,
    )


# ---------------------------------------------------------------------------------------------- formatting


def format_loss(value: float) -> str:
    """Three significant digits without an exponent: 0.412, 1.23, 12.3, 0.0123, 1235."""
    if value == 0 or not math.isfinite(value):
        return "0" if value == 0 else str(value)
    magnitude = math.floor(math.log10(abs(value)))
    if magnitude < -6:
        return f"{value:.2e}"
    return f"{value:.{max(0, 2 - magnitude)}f}"


def format_accuracy(value: float) -> str:
    return f"{value * 100:.1f}%"


def format_duration(seconds: int) -> str:
    """Compact, two units at most: "1 h 12 min", "3 d 4 h", "5 min 3 s", "42 s"."""
    seconds = max(0, int(seconds))
    units = (("d", 86400), ("h", 3600), ("min", 60), ("s", 1))
    for index, (name, size) in enumerate(units):
        if seconds >= size or size == 1:
            parts = [f"{seconds // size} {name}"]
            if index + 1 < len(units):
                smaller, smaller_size = units[index + 1]
                rest = (seconds % size) // smaller_size
                if rest:
                    parts.append(f"{rest} {smaller}")
            return " ".join(parts)
    raise AssertionError("unreachable: the last unit is one second")  # pragma: no cover


def _final_and_min(final: float | None, low: float | None, step: int | None) -> str | None:
    if final is None:
        return None
    text = f"{format_loss(final)} final"
    if low is not None and step is not None:
        text += f" · {format_loss(low)} min (step {step:,})"
    return text


# ---------------------------------------------------------------------------------------------- mrkdwn


def _loss_lines(card: Scorecard) -> list[str]:
    lines = []
    train = _final_and_min(card.final_train_loss, card.min_train_loss, card.min_train_loss_step)
    if train:
        lines.append(f"*Training loss:* {train}")
    valid = _final_and_min(card.final_valid_loss, card.min_valid_loss, card.min_valid_loss_step)
    if valid and card.full_valid_loss is not None:
        valid += f" · {format_loss(card.full_valid_loss)} full validation"
    elif card.full_valid_loss is not None:
        valid = f"{format_loss(card.full_valid_loss)} full validation"
    if valid:
        lines.append(f"*Validation loss:* {valid}")
    accuracy = []
    if card.final_train_accuracy is not None:
        accuracy.append(f"{format_accuracy(card.final_train_accuracy)} training")
    if card.final_valid_accuracy is not None:
        accuracy.append(f"{format_accuracy(card.final_valid_accuracy)} validation")
    if accuracy:
        lines.append(f"*Token accuracy:* {' · '.join(accuracy)}")
    return lines


def _facts_line(card: Scorecard) -> str | None:
    facts = []
    if card.steps is not None:
        facts.append(f"*Steps:* {card.steps:,}")
    if card.trained_tokens is not None:
        facts.append(f"*Tokens:* {card.trained_tokens:,}")
    if card.epochs is not None:
        facts.append(f"*Epochs:* {escape(str(card.epochs)[:20])}")
    if card.duration_seconds is not None:
        facts.append(f"*Duration:* {format_duration(card.duration_seconds)}")
    return " · ".join(facts) if facts else None


def _checkpoint_metrics(checkpoint: CheckpointInfo) -> str:
    parts = []
    for key, label in (("valid_loss", "valid"), ("full_valid_loss", "full valid"), ("train_loss", "train")):
        if key in checkpoint.metrics:
            parts.append(f"{label} {format_loss(checkpoint.metrics[key])}")
    return " · ".join(parts)


def _checkpoint_line(checkpoint: CheckpointInfo, best: bool) -> str:
    metrics = _checkpoint_metrics(checkpoint)
    line = f"• step {checkpoint.step:,}" + (f" · {metrics}" if metrics else "")
    line += f" · {_code(checkpoint.model, MODEL_CHARS)}"
    return line + (f" {BEST}" if best else "")


def _checkpoint_lines(card: Scorecard, budget: int) -> list[str]:
    """Checkpoints in step order within `budget` characters; the best one is always kept, and the
    ones that do not fit are counted in "… and N more"."""
    if not card.checkpoints:
        return []
    title = "*Checkpoints:*"
    lines = [_checkpoint_line(c, c == card.best_checkpoint) for c in card.checkpoints]
    best = [i for i, c in enumerate(card.checkpoints) if c == card.best_checkpoint][:1]
    used = len(title) + len("\n… and 9999 more") + sum(1 + len(lines[i]) for i in best)
    chosen = set(best)
    for index, line in enumerate(lines):
        if index in chosen:
            continue
        if used + 1 + len(line) > budget:
            break
        chosen.add(index)
        used += 1 + len(line)
    out = [title, *(line for index, line in enumerate(lines) if index in chosen)]
    if len(chosen) < len(lines):
        out.append(f"… and {len(lines) - len(chosen)} more")
    return out


def _clip_text(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def render_scorecard(card: Scorecard, *, partial: bool = False, note: str | None = None) -> str:
    """Slack mrkdwn: the chart upload's `initial_comment`, or the whole message when there is no
    picture. `note` is plain text (escaped here), e.g. why the picture is missing."""
    so_far = " so far" if partial else ""
    head = [f"*:bar_chart: Training report{so_far} for {_code(card.job_id)}*"]
    model = f"*Model:* {_code(card.fine_tuned_model, MODEL_CHARS)}" if card.fine_tuned_model else ""
    base = f"*Base:* {_code(card.base_model, MODEL_CHARS)}"
    head.append(f"{model} · {base}" if model else base)
    if card.status != "succeeded":  # a failed, cancelled or running job's numbers mean "up to here"
        head[-1] += f" · *Status:* {status_label(card.status)}"
    body = _loss_lines(card)
    if not card.has_metrics:
        body.append("_No step metrics were available._")
    facts = _facts_line(card)
    if facts:
        body.append(facts)
    tail = []
    if note:
        tail.append(f":information_source: {_clip_text(escape(' '.join(note.split())), 500)}")
    fixed = "\n".join([*head, *body, *tail])
    budget = MAX_TEXT - len(fixed) - 2  # the newline before and after the checkpoint list
    lines = [*head, *body, *_checkpoint_lines(card, budget), *tail]
    return _clip_text("\n".join(lines), MAX_TEXT)


# ---------------------------------------------------------------------------------------------- alt text


def _plain(value: str, limit: int) -> str:
    # alt_txt is shown as typed (no mrkdwn), so it needs cutting but not escaping.
    return _clip_text(" ".join(value.split()), limit)


def _loss_sentence(
    name: str, first: float | None, final: float | None, low: float | None, step: int | None
) -> str:
    if final is None:
        return ""
    text = f"{name} loss "
    text += (
        f"went from {format_loss(first)} to {format_loss(final)}"
        if first is not None
        else f"ended at {format_loss(final)}"
    )
    if low is not None and step is not None:
        text += f", lowest {format_loss(low)} at step {step:,}"
    return text + ". "


def chart_alt_text(card: Scorecard) -> str:
    """What the picture shows, in words and numbers, within Slack's 1,000-character alt_txt limit."""
    text = f"Loss chart of fine-tuning job {_plain(card.job_id, 80)} ({_plain(card.base_model, 80)}"
    text += f", {card.steps:,} steps). " if card.steps is not None else "). "
    text += _loss_sentence(
        "Training",
        card.first_train_loss,
        card.final_train_loss,
        card.min_train_loss,
        card.min_train_loss_step,
    )
    text += _loss_sentence(
        "Validation",
        card.first_valid_loss,
        card.final_valid_loss,
        card.min_valid_loss,
        card.min_valid_loss_step,
    )
    if card.full_valid_loss is not None:
        text += f"Full validation loss {format_loss(card.full_valid_loss)}. "
    accuracy = []
    if card.final_train_accuracy is not None:
        accuracy.append(f"{format_accuracy(card.final_train_accuracy)} training")
    if card.final_valid_accuracy is not None:
        accuracy.append(f"{format_accuracy(card.final_valid_accuracy)} validation")
    if accuracy:
        text += f"Final token accuracy {', '.join(accuracy)}. "
    if not card.has_metrics:
        text += "No step metrics were available. "
    if card.checkpoints:
        steps = ", ".join(f"{c.step:,}" for c in card.checkpoints[:20])
        more = f" and {len(card.checkpoints) - 20} more" if len(card.checkpoints) > 20 else ""
        text += f"Checkpoints at steps {steps}{more}. "
        if card.best_checkpoint is not None:
            text += f"Best by validation loss: step {card.best_checkpoint.step:,}. "
    return _plain(text, MAX_ALT_TEXT)


def chart_title(card: Scorecard) -> str:
    """Plain text for the picture: the job id and the model (the fine-tuned one when there is one)."""
    model = card.fine_tuned_model or card.base_model
    return _plain(f"{card.job_id} · {model}", MAX_TITLE)
