"""The live job card: the announcement message, re-rendered as the job advances. Pure.

`render_card` draws a job plus its latest metrics; `card_digest` names what the card shows, so an
unchanged card is never edited again (even after a restart: the digest is stored with the watch);
`cards_to_edit` decides which cards to edit now under a per-card throttle and the workspace's
`chat.update` budget.

Metrics events carry an untyped `data` object: every key is read as optional, and `total_steps`
(not confirmed by OpenAI's spec) may simply be absent, in which case no percentage is shown.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from bot import ids
from bot.buttons import job_actions
from bot.models import FineTuningJob, JobEvent
from bot.render import (
    ERROR_CHARS,
    ID_CHARS,
    NAME_CHARS,
    Reply,
    _clip,
    _code,
    _fields,
    _mention,
    _reply,
    _section,
    _status,
    _when,
    date_token,
    duration_words,
)

BAR_CELLS = 10
ETA_FORMAT = "{date_short_pretty} {time}"


@dataclass(frozen=True)
class Progress:
    """What the newest metrics events say; every field may be unknown."""

    step: int | None = None
    total_steps: int | None = None
    train_loss: float | None = None
    valid_loss: float | None = None
    train_accuracy: float | None = None
    at: int | None = None  # when the newest metrics event was written (epoch seconds)
    steps_per_second: float | None = None  # from the oldest and newest metrics events seen

    @property
    def fraction(self) -> float | None:
        if self.step is None or not self.total_steps or self.total_steps <= 0:
            return None
        return min(1.0, max(0.0, self.step / self.total_steps))


@dataclass(frozen=True)
class Candidate:
    """One card that may want an edit. `key` identifies it (the watch id)."""

    key: int
    digest: str
    shown_digest: str | None  # what the card shows now (None: not known)
    last_edited_at: float | None
    status_changed: bool = False
    final: bool = False  # the job ended: its last edit, never held back by the per-card throttle


# ---------------------------------------------------------------------------------------------- parsing


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _whole(value: Any) -> int | None:
    number = _number(value)
    if number is None or not number.is_integer() or number < 0:
        return None
    return int(number)


def _is_metrics(event: JobEvent) -> bool:
    return event.type == "metrics" or (event.type is None and "step" in event.data)


def progress_from_events(events: Iterable[JobEvent]) -> Progress | None:
    """`events` newest first, as the API lists them. None when there is no metrics event."""
    metrics = [e for e in events if _is_metrics(e)]
    if not metrics:
        return None
    newest = metrics[0].data

    def latest(key: str, read: Any) -> Any:
        # A key missing from the newest event (a validation loss is not reported every step) is
        # taken from the newest event that has it.
        for event in metrics:
            value = read(event.data.get(key))
            if value is not None:
                return value
        return None

    step = _whole(newest.get("step"))
    return Progress(
        step=step,
        total_steps=latest("total_steps", _whole),
        train_loss=_number(newest.get("train_loss")),
        valid_loss=latest("valid_loss", _number),
        train_accuracy=latest("train_mean_token_accuracy", _number),
        at=metrics[0].created_at,
        steps_per_second=_step_rate(metrics),
    )


def _step_rate(metrics: Sequence[JobEvent]) -> float | None:
    points = [(e.created_at, _whole(e.data.get("step"))) for e in metrics]
    known = [(t, s) for t, s in points if t is not None and s is not None]
    if len(known) < 2:
        return None
    (t1, s1), (t0, s0) = known[0], known[-1]
    if t1 <= t0 or s1 <= s0:
        return None
    return (s1 - s0) / (t1 - t0)


def eta(job: FineTuningJob, progress: Progress | None) -> int | None:
    """OpenAI's `estimated_finish` when it gives one; else the step rate carried forward."""
    if job.estimated_finish is not None and job.estimated_finish > 0:
        return job.estimated_finish
    if progress is None or progress.steps_per_second is None or progress.at is None:
        return None
    if progress.step is None or not progress.total_steps or progress.step >= progress.total_steps:
        return None
    return int(progress.at + (progress.total_steps - progress.step) / progress.steps_per_second)


# ---------------------------------------------------------------------------------------------- digest


def _shown(value: float | None) -> str | None:
    return None if value is None else f"{value:.3g}"


def card_digest(job: FineTuningJob, progress: Progress | None) -> str:
    """A fingerprint of what the card shows, except the elapsed time: the clock alone never
    causes an edit (elapsed time is refreshed whenever something else changes)."""
    running = job.status == "running"
    finish = eta(job, progress) if running else None
    state = (
        job.status,
        job.fine_tuned_model,
        job.trained_tokens,
        job.finished_at,
        job.error.code if job.error else None,
        job.error.message if job.error else None,
        # An ETA moving by less than a minute is not worth an edit.
        None if finish is None else finish // 60,
        *(
            (
                progress.step,
                progress.total_steps,
                _shown(progress.train_loss),
                _shown(progress.valid_loss),
                _shown(progress.train_accuracy),
            )
            if running and progress is not None
            else ()
        ),
    )
    return hashlib.sha256(repr(state).encode()).hexdigest()[:32]


# ---------------------------------------------------------------------------------------------- rendering


def progress_bar(fraction: float, cells: int = BAR_CELLS) -> str:
    filled = min(cells, max(0, math.floor(fraction * cells + 1e-9)))
    return "▓" * filled + "░" * (cells - filled)


def _progress_line(progress: Progress | None) -> str:
    if progress is None or progress.step is None:
        return "_Waiting for the first training metrics…_"
    fraction = progress.fraction
    if fraction is None:
        return f"Step {progress.step:,} (total steps not reported)"
    assert progress.total_steps is not None
    percent = math.floor(fraction * 100)
    return f"`{progress_bar(fraction)}` {percent}% · step {progress.step:,} of {progress.total_steps:,}"


def _running_fields(job: FineTuningJob, progress: Progress | None, now: int) -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    if progress is not None:
        for label, value in (
            ("Train loss", progress.train_loss),
            ("Valid loss", progress.valid_loss),
            ("Train accuracy", progress.train_accuracy),
        ):
            if value is not None:
                pairs.append((label, f"{value:.3g}"))
    if job.created_at is not None:
        pairs.append(("Elapsed", duration_words(max(0, now - job.created_at))))
    finish = eta(job, progress)
    if finish is not None:
        how = "" if job.estimated_finish else " (from the step rate)"
        pairs.append(("ETA", date_token(finish, ETA_FORMAT) + how))
    return pairs


def _ended_blocks(job: FineTuningJob) -> list[dict[str, Any]]:
    pairs: list[tuple[str, str]] = []
    if job.fine_tuned_model:
        pairs.append(("Fine-tuned model", _code(job.fine_tuned_model, NAME_CHARS)))
    if job.trained_tokens is not None:
        pairs.append(("Trained tokens", f"{job.trained_tokens:,}"))
    if job.finished_at is not None and job.created_at is not None:
        pairs.append(("Duration", duration_words(max(0, job.finished_at - job.created_at))))
    blocks = _fields(pairs) if pairs else []
    # A succeeded job may carry an error object whose fields are all null: JobError drops those.
    if job.error is not None and job.status != "succeeded":
        code = _code(job.error.code) if job.error.code else ""
        message = _clip(job.error.message or "", ERROR_CHARS)
        blocks.append(_section("*Error* " + " ".join(p for p in (code, message) if p)))
    elif job.status == "failed":
        blocks.append(_section("*Error* OpenAI gave no reason."))
    return blocks


def _header_fields(job: FineTuningJob, now: int) -> list[tuple[str, str]]:
    suffix = job.raw.get("user_provided_suffix")
    pairs = [("Model", _code(job.model, NAME_CHARS))]
    if isinstance(suffix, str) and suffix:
        pairs.append(("Suffix", _code(suffix)))
    pairs += [
        ("Method", _clip(job.method_type or "supervised", ID_CHARS)),
        ("Training file", _code(job.training_file)),
        ("Validation file", _code(job.validation_file)),
        ("Status", _status(job.status)),
        ("Created", _when(job.created_at, now)),
    ]
    return pairs


# (user id, when in epoch seconds, action) of the last cancel or pause, from the audit trail.
ChangedBy = tuple[str, int, str]
# The action that leaves a job in each status, and how the card says who did it.
CHANGED_BY_ACTION = {"cancelled": "cancel", "paused": "pause"}
_CHANGED_BY_WORDS = {"cancel": "Cancelled by", "pause": "Paused by"}


def changed_by_line(status: str, changed_by: ChangedBy | None) -> str | None:
    """"Cancelled by <@U1> 14:02" (a Slack date token: each reader's time zone), only when the job
    is in the state that action leaves it in (a resumed job no longer says who paused it)."""
    if changed_by is None:
        return None
    user_id, at, action = changed_by
    if CHANGED_BY_ACTION.get(status) != action:
        return None
    return f"{_CHANGED_BY_WORDS[action]} {_mention(user_id)} {date_token(at, '{time}')}"


def render_card(
    job: FineTuningJob,
    user_id: str,
    now: int,
    *,
    progress: Progress | None = None,
    origin: str = "create",
    changed_by: ChangedBy | None = None,
) -> Reply:
    """The card: who and what, the status, then progress (running) or the final state (ended),
    then the job's buttons. Everything from OpenAI or a user is escaped by the render helpers.
    `changed_by`: who cancelled or paused the job and when (from the audit trail), shown while
    the job's status is that action's."""
    who = _mention(user_id)
    if origin == "watch":
        lead = f"{who} is following fine-tuning job {_code(job.id)} in this channel"
        text = f"{who} is following fine-tuning job {_clip(job.id, ID_CHARS)}"
    else:
        lead = f"{who} started a fine-tuning job {_code(job.id)}"
        text = f"{who} started fine-tuning job {_clip(job.id, ID_CHARS)} on {_clip(job.model, NAME_CHARS)}"
    blocks = [_section(lead), *_fields(_header_fields(job, now))]
    if job.status == "running":
        blocks.append(_section(_progress_line(progress)))
        blocks += _fields(_running_fields(job, progress, now))
    elif job.is_terminal:
        blocks += _ended_blocks(job)
    line = changed_by_line(job.status, changed_by)
    if line is not None:
        blocks.append(_section(line))
    if ids.is_job_id(job.id):
        # A button whose value is not a job id could do nothing when clicked.
        blocks.append(job_actions(job))
    return _reply(text, blocks)


# ---------------------------------------------------------------------------------------------- throttle


def cards_to_edit(
    candidates: Iterable[Candidate], *, now: float, per_card_seconds: float, budget: int
) -> list[Candidate]:
    """Which cards to edit now: only those whose content changed, none edited less than
    `per_card_seconds` ago (except a job's final card), at most `budget` of them. When more want
    an edit than the budget allows: final states first, then status changes, then the cards least
    recently edited (never-edited ones first)."""
    if budget <= 0:
        return []
    due = [
        c
        for c in candidates
        if c.digest != c.shown_digest
        and (c.final or c.last_edited_at is None or now - c.last_edited_at >= per_card_seconds)
    ]
    due.sort(
        key=lambda c: (
            not c.final,
            not c.status_changed,
            -math.inf if c.last_edited_at is None else c.last_edited_at,
            c.key,
        )
    )
    return due[:budget]
