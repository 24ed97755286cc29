"""Turn values into Slack messages. Pure: no I/O, no clock (callers pass `now`), no logging.

Everything that comes from OpenAI or from a user goes through `escape()` before it enters mrkdwn, so
`<!channel>`, `<@U…>` and `<url|label>` arrive inert, and every renderer keeps within Slack's Block
Kit limits (a message that breaks them is rejected whole with `invalid_blocks`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from bot import buttons
from bot.commands import EXAMPLES, USAGE, ParseError
from bot.logs import redact_value
from bot.models import Checkpoint, FineTuningJob, JobEvent, OpenAIFile
from bot.openai_client import (
    AuthenticationError,
    BadRequestError,
    ConflictError,
    NotFoundError,
    OpenAIError,
    PermissionDeniedError,
    QuotaExceededError,
    RateLimitError,
    ServerError,
    UnavailableError,
)

# Slack's limits (FACTS.md).
MAX_BLOCKS = 50
SECTION_TEXT = 3000
FIELD_TEXT = 2000
MAX_FIELDS = 10
HEADER_TEXT = 150
TOP_TEXT = 40000
# Our own caps on single values, so that a pasted essay or a hostile string cannot crowd out the rest.
ID_CHARS = 80
NAME_CHARS = 150
EVENT_CHARS = 300
ERROR_CHARS = 1500

_USER_ID = re.compile(r"[UW][A-Z0-9]{2,}")
_CHANNEL_ID = re.compile(r"[CGD][A-Z0-9]{2,}")
# A cut that ends inside `&amp;`, `&lt;` or `&gt;` would leave a broken entity showing.
_PARTIAL_ENTITY = re.compile(r"&(?:a|am|amp|l|lt|g|gt)?$")

_STATUS = {
    "validating_files": (":mag:", "Validating files"),
    "queued": (":hourglass_flowing_sand:", "Queued"),
    "running": (":arrows_counterclockwise:", "Running"),
    "paused": (":double_vertical_bar:", "Paused"),
    "succeeded": (":white_check_mark:", "Succeeded"),
    "failed": (":x:", "Failed"),
    "cancelled": (":no_entry_sign:", "Cancelled"),
}
_LEVEL_MARKERS = {"warn": ":warning: ", "warning": ":warning: ", "error": ":red_circle: "}
_DESCRIPTIONS = {
    "create": "start a fine-tuning job",
    "list": "list recent jobs",
    "get": "show one job",
    "files": "list the training files already uploaded to OpenAI (newest first)",
    "events": "show a job's events",
    "cancel": "cancel a job",
    "pause": "pause a running job",
    "resume": "resume a paused job",
    "checkpoints": "list a job's checkpoints (their model names can be used like any model)",
    "report": "post a job's loss chart and scorecard (in its thread when this channel has its card)",
    "history": "show who did what to a job (for admins and the person who started it)",
    "watch": "follow a job's outcome in this channel (no id: list what this channel follows)",
    "unwatch": "stop following a job here",
}
# Months and years are the Gregorian averages: "3 years 4 months ago" reads better than "1215 days ago".
_UNITS = (
    ("year", 31_556_952),
    ("month", 2_629_746),
    ("day", 86400),
    ("hour", 3600),
    ("minute", 60),
    ("second", 1),
)


class Outcome(StrEnum):
    """What a reply tells the user about their request, counted in the metrics (bot/metrics.py)."""

    OK = "ok"
    REFUSED = "refused"  # not allowed here, not theirs, not readable, restarting
    BAD_INPUT = "bad_input"  # the command or button was not usable as sent
    OPENAI_ERROR = "openai_error"  # OpenAI refused or failed
    ERROR = "error"  # our own failure


@dataclass(frozen=True)
class Reply:
    text: str  # plain-text fallback (notifications, screen readers); Slack parses it as mrkdwn too
    blocks: list[dict[str, Any]]
    # Not part of the message (nor of equality): which kind of answer this is, for the metrics.
    outcome: Outcome = field(default=Outcome.OK, compare=False)

    def as_kwargs(self) -> dict[str, Any]:
        """What is sent to Slack. Every message leaves through here, so this is where configured
        secrets are masked (an OpenAI error can quote the API key), exactly as in the logs."""
        kwargs: dict[str, Any] = redact_value({"text": self.text, "blocks": self.blocks})
        return kwargs


# ---------------------------------------------------------------------------------------------- pieces


def escape(text: str) -> str:
    """The three replacements Slack requires; `&` first so the others are not escaped twice."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _truncate(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    if limit <= 0:
        return ""
    return _PARTIAL_ENTITY.sub("", text[: limit - 1]) + "…"


def _clip(value: str, limit: int) -> str:
    """Escape, then cut: bounds the escaped length, which is what Slack counts."""
    return _truncate(escape(" ".join(value.split())), limit)


def _code(value: str | None, limit: int = ID_CHARS) -> str:
    if not value:
        return "—"
    # A backtick inside would end the code span early; ids and model names never hold one.
    return "`" + _clip(value.replace("`", "'"), limit) + "`"


def date_token(ts: int, fmt: str = "{date_short_pretty} at {time}") -> str:
    """Renders in each reader's time zone; the fallback (old clients, notifications) is UTC."""
    fallback = datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"<!date^{int(ts)}^{fmt}|{fallback}>"


def _plural(count: int, unit: str) -> str:
    return f"{count} {unit}" if count == 1 else f"{count} {unit}s"


def duration_words(seconds: float) -> str:
    """The largest unit and the one below it, so "2 hours 5 minutes" but never "2 hours 5 seconds"."""
    remaining = max(0, round(seconds))
    for index, (unit, size) in enumerate(_UNITS):
        if remaining >= size or size == 1:
            parts = [_plural(remaining // size, unit)]
            if index + 1 < len(_UNITS):
                smaller, smaller_size = _UNITS[index + 1]
                rest = (remaining % size) // smaller_size
                if rest:
                    parts.append(_plural(rest, smaller))
            return " ".join(parts)
    raise AssertionError("unreachable: the last unit is one second")  # pragma: no cover


def size_words(size: int) -> str:
    """Bytes as people read them (decimal units, like Slack and OpenAI show file sizes)."""
    if size < 1000:
        return _plural(size, "byte")
    value = float(size)
    for unit in ("kB", "MB", "GB", "TB"):
        value /= 1000
        if value < 999.95 or unit == "TB":
            return f"{value:.1f} {unit}" if value < 100 else f"{value:.0f} {unit}"
    raise AssertionError("unreachable: TB ends the loop")  # pragma: no cover


def age_words(ts: int, now: int) -> str:
    elapsed = now - ts
    if elapsed < 60:  # also a clock skewed into the future
        return "just now"
    for unit, size in _UNITS:
        if elapsed >= size:
            return f"{_plural(elapsed // size, unit)} ago"
    raise AssertionError("unreachable: elapsed >= 60")  # pragma: no cover


def status_emoji(status: str) -> str:
    return _STATUS.get(status, (":grey_question:", ""))[0]


def _status_label_plain(status: str) -> str:
    if status in _STATUS:
        return _STATUS[status][1]
    words = " ".join(status.replace("_", " ").split())[:40] or "Unknown"
    return words[:1].upper() + words[1:]


def status_label(status: str) -> str:
    """Known statuses get a label; one OpenAI adds later is shown as itself rather than hidden."""
    return escape(_status_label_plain(status))


def _status(status: str) -> str:
    return f"{status_emoji(status)} {status_label(status)}"


def _when(ts: int | None, now: int) -> str:
    return "unknown" if ts is None else f"{date_token(ts)} ({age_words(ts, now)})"


# ---------------------------------------------------------------------------------------------- blocks


def _header(text: str) -> dict[str, Any]:
    # plain_text is shown as typed (no mentions, no links), so it needs cutting but not escaping.
    plain = " ".join(text.split()) or "finetune-bot"
    return {
        "type": "header",
        "text": {"type": "plain_text", "text": _truncate(plain, HEADER_TEXT), "emoji": True},
    }


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": _truncate(text, SECTION_TEXT)}}


def _fields(pairs: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """Label/value pairs as field sections, ten fields per section."""
    fields = [
        {"type": "mrkdwn", "text": _truncate(f"*{label}*\n{value}", FIELD_TEXT)} for label, value in pairs
    ]
    return [
        {"type": "section", "fields": fields[i : i + MAX_FIELDS]} for i in range(0, len(fields), MAX_FIELDS)
    ]


def _context(text: str) -> dict[str, Any]:
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": _truncate(text, SECTION_TEXT)}]}


def _chunk(lines: Iterable[str], limit: int = SECTION_TEXT) -> list[str]:
    """Pack lines into as few texts of at most `limit` characters as will hold them."""
    chunks: list[str] = []
    current = ""
    for line in lines:
        line = _truncate(line, limit)
        if current and len(current) + 1 + len(line) > limit:
            chunks.append(current)
            current = line
        else:
            current = f"{current}\n{line}" if current else line
    if current:
        chunks.append(current)
    return chunks


def _reply(text: str, blocks: list[dict[str, Any]], outcome: Outcome = Outcome.OK) -> Reply:
    # Each renderer sizes itself to fit; this is the last guard against `invalid_blocks`.
    return Reply(text=_truncate(text, TOP_TEXT), blocks=blocks[:MAX_BLOCKS], outcome=outcome)


def _mention(user_id: str) -> str:
    return f"<@{user_id}>" if _USER_ID.fullmatch(user_id) else _clip(user_id, ID_CHARS)


# ---------------------------------------------------------------------------------------------- help


def _help_lines(command: str) -> list[str]:
    cmd = _clip(command, 40)
    lines = [
        f"*`{cmd}` starts, inspects and cancels OpenAI fine-tuning jobs.*",
        f"• a form for a new job (upload a `.jsonl`: it is checked, counted and priced before anything "
        f"starts): `{cmd} create` with nothing after it, or the button below",
    ]
    for name, usage in USAGE.items():
        description = _DESCRIPTIONS.get(name, name)
        lines.append(f"• {description}: `{cmd} {escape(usage)}`")
        if name in EXAMPLES:
            lines.append(f"    e.g. `{cmd} {escape(EXAMPLES[name])}`")
    lines.append(f"• this help: `{cmd} help`")
    return lines


def render_help(command: str = "/finetune") -> Reply:
    blocks = [_section(chunk) for chunk in _chunk(_help_lines(command))]
    blocks.append(buttons.help_actions())
    return _reply(f"How to use {_clip(command, 40)}", blocks)


def render_parse_error(error: ParseError, command: str = "/finetune") -> Reply:
    cmd = _clip(command, 40)
    message = f":warning: {_clip(error.message, ERROR_CHARS)}"
    text = message
    if error.usage:
        usage = f"Usage: `{cmd} {_clip(error.usage, ERROR_CHARS)}`"
        message = f"{message}\n{usage}"
        text = f"{text} {usage}"
    blocks = [_section(message)]
    if error.show_help:
        blocks += render_help(command).blocks
    return _reply(text, blocks, Outcome.BAD_INPUT)


# ---------------------------------------------------------------------------------------------- jobs


def _job_fields(job: FineTuningJob, now: int) -> list[tuple[str, str]]:
    pairs = [("Status", _status(job.status)), ("Model", _code(job.model, NAME_CHARS))]
    if job.fine_tuned_model:
        pairs.append(("Fine-tuned model", _code(job.fine_tuned_model, NAME_CHARS)))
    pairs.append(("Training file", _code(job.training_file)))
    if job.validation_file:
        pairs.append(("Validation file", _code(job.validation_file)))
    pairs.append(("Created", _when(job.created_at, now)))
    if job.finished_at is not None:
        pairs.append(("Finished", date_token(job.finished_at)))
        if job.created_at is not None:
            pairs.append(("Duration", duration_words(job.finished_at - job.created_at)))
    elif job.estimated_finish is not None:
        eta = date_token(job.estimated_finish)
        if job.estimated_finish > now:
            eta += f" (in {duration_words(job.estimated_finish - now)})"
        pairs.append(("Estimated finish", eta))
    if job.trained_tokens is not None:
        pairs.append(("Trained tokens", f"{job.trained_tokens:,}"))
    if job.method_type:
        pairs.append(("Method", _clip(job.method_type, 40)))
    if job.seed is not None:
        pairs.append(("Seed", str(job.seed)))
    return pairs


def _setting_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _hyperparameter_text(hyperparameters: dict[str, Any]) -> str:
    """`key=value` for every setting the job has; a null one (not set) is left out, not "None"."""
    return " ".join(
        _code(f"{key}={_setting_value(value)}", 100)
        for key, value in hyperparameters.items()
        if value is not None
    )


def render_job(job: FineTuningJob, now: int) -> Reply:
    blocks = [
        _header(f"{status_emoji(job.status)} Fine-tuning job {job.id}"),
        *_fields(_job_fields(job, now)),
    ]
    hyperparameters = _hyperparameter_text(job.hyperparameters)
    if hyperparameters:
        blocks.append(_section(f"*Hyperparameters*\n{hyperparameters}"))
    if job.error:
        lines = [f":x: *Error* {_code(job.error.code)}", _clip(job.error.message or "", ERROR_CHARS)]
        if job.error.param:
            lines.append(f"Parameter: {_code(job.error.param)}")
        blocks.append(_section("\n".join(line for line in lines if line)))
    if job.metadata:
        lines = ["*Metadata*"] + [f"{_code(k, 64)} {_clip(v, 200)}" for k, v in job.metadata.items()]
        blocks += [_section(chunk) for chunk in _chunk(lines)]
    # The buttons come last and must survive the cut to MAX_BLOCKS.
    blocks = [*blocks[: MAX_BLOCKS - 1], buttons.job_actions(job)]
    text = f"Fine-tuning job {_clip(job.id, ID_CHARS)}: {status_label(job.status)}"
    return _reply(text, blocks)


def _job_line(job: FineTuningJob, now: int) -> str:
    model = _code(job.model, NAME_CHARS)
    if job.fine_tuned_model:
        model += f" → {_code(job.fine_tuned_model, NAME_CHARS)}"
    parts = [f"{_code(job.id)} {_status(job.status)}", model]
    if job.created_at is not None:
        parts.append(age_words(job.created_at, now))
    return " · ".join(parts)


def _most_recent(count: int, noun: str) -> str:
    """ "the most recent job", "the 10 most recent jobs" (never "the 1 most recent jobs")."""
    return f"the most recent {noun}" if count == 1 else f"the {count} most recent {noun}s"


# Why `list` left some jobs out, by read policy (FINETUNE_READ_ACCESS).
_HIDDEN_BECAUSE = {
    "slack": "only jobs started from Slack are shown",
    "channel": "only jobs started in (or followed by) this channel are shown",
}


def _hidden_note(hidden: int, policy: str | None) -> str:
    why = _HIDDEN_BECAUSE.get(policy or "", "of the read policy")
    verb = "is" if hidden == 1 else "are"
    return f":lock: {_plural(hidden, 'more job')} {verb} not shown here: {why} (`FINETUNE_READ_ACCESS`)."


def render_job_list(
    jobs: list[FineTuningJob],
    has_more: bool,
    now: int,
    *,
    hidden: int = 0,
    policy: str | None = None,
    next_page: str | None = None,
    filter_note: str | None = None,
) -> Reply:
    """`hidden`: how many jobs of the page the reader may not see (counted, never named).
    `next_page`: the list command behind a Next page button; `filter_note`: how the list was
    filtered, said plainly (e.g. that a status filter ran on our side)."""
    if not jobs:
        text = "No fine-tuning jobs yet." if filter_note is None else "No fine-tuning jobs match."
        if hidden:
            text = f"No fine-tuning jobs you can see here. {_hidden_note(hidden, policy)}"
        blocks = [_section(text)]
        if filter_note:
            blocks.append(_context(filter_note))
        if next_page:
            blocks.append(buttons.list_actions(next_page))
        return _reply(text, blocks)
    chunks = _chunk(_job_line(job, now) for job in jobs)
    # Header, the closing context and the button take three blocks; newest jobs come first.
    shown = chunks[: MAX_BLOCKS - 3]
    blocks = [_header("Fine-tuning jobs"), *(_section(chunk) for chunk in shown)]
    fetched = len(jobs) + hidden
    notes = [filter_note] if filter_note else []
    if next_page and len(shown) < len(chunks):
        notes.append(f"Showing the most recent of {_plural(len(jobs), 'job')}; Next page goes on from here.")
    elif next_page:
        notes.append("*Next page* shows older jobs.")
    elif has_more or len(shown) < len(chunks):
        if fetched >= 100 or len(shown) < len(chunks):
            note = f"Showing the most recent of {_plural(len(jobs), 'job')}; older ones are not listed here."
        else:
            note = f"Showing {_most_recent(fetched, 'job')}; `/finetune list limit=100` shows more."
        notes.append(note)
    if hidden:
        notes.append(_hidden_note(hidden, policy))
    if notes:
        blocks.append(_context(" ".join(notes)))
    if next_page:
        blocks.append(buttons.list_actions(next_page))
    return _reply(f"{_plural(len(jobs), 'fine-tuning job')}", blocks)


# ---------------------------------------------------------------------------------------------- events


def _number(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return f"{value:.3g}"


def _metrics_text(data: dict[str, Any]) -> str | None:
    parts = []
    step, total = data.get("step"), data.get("total_steps")
    if isinstance(step, int) and not isinstance(step, bool):
        parts.append(f"Step {step}/{total}" if isinstance(total, int) else f"Step {step}")
    for key, label in (
        ("train_loss", "train loss"),
        ("valid_loss", "valid loss"),
        ("train_mean_token_accuracy", "train accuracy"),
    ):
        number = _number(data.get(key))
        if number is not None:
            parts.append(f"{label} {number}")
    return " · ".join(parts) if parts else None


def _event_line(event: JobEvent) -> str:
    when = "—" if event.created_at is None else date_token(event.created_at, "{date_short} {time}")
    metrics = _metrics_text(event.data) if event.type == "metrics" else None
    message = metrics if metrics is not None else _clip(event.message, EVENT_CHARS)
    return f"{when} {_LEVEL_MARKERS.get(event.level, '')}{message}"


def render_events(job_id: str, events: list[JobEvent], has_more: bool, now: int) -> Reply:
    header = _header(f"Events of {job_id}")
    if not events:
        return _reply(f"No events yet for {_clip(job_id, ID_CHARS)}.", [header, _section("No events yet.")])
    # The API sends newest first; a log reads oldest to newest.
    chunks = _chunk(_event_line(event) for event in reversed(events))
    # If it still does not fit, the newest events are the ones worth keeping.
    shown = chunks[-(MAX_BLOCKS - 2) :]
    blocks = [header, *(_section(chunk) for chunk in shown)]
    if has_more or len(shown) < len(chunks):
        if len(events) >= 100 or len(shown) < len(chunks):
            note = f"Showing the most recent of {len(events)} events; older ones are not listed here."
        else:
            note = f"Showing {_most_recent(len(events), 'event')}; use `limit=` for more (max 100)."
        blocks.append(_context(note))
    return _reply(f"{_plural(len(events), 'event')} of {_clip(job_id, ID_CHARS)}", blocks)


# ---------------------------------------------------------------------------------------------- checkpoints


def _checkpoint_line(checkpoint: Checkpoint) -> str:
    step = checkpoint.step_number
    parts = [f"*Step {step}*" if step is not None else "*Step ?*"]
    metrics = dict(checkpoint.metrics)
    metrics.pop("step", None)  # already the headline
    shown = _metrics_text(metrics)
    if shown:
        parts.append(shown)
    more = (("valid_mean_token_accuracy", "valid accuracy"), ("full_valid_loss", "full valid loss"))
    for key, label in more:
        number = _number(metrics.get(key))
        if number is not None:
            parts.append(f"{label} {number}")
    if checkpoint.created_at is not None:
        parts.append(date_token(checkpoint.created_at, "{date_short} {time}"))
    # A code span on its own line: one click selects the whole model name to copy.
    return " · ".join(parts) + "\n" + _code(checkpoint.fine_tuned_model_checkpoint, NAME_CHARS + 50)


@dataclass(frozen=True)
class HistoryEntry:
    """One row of a job's audit trail, as `render_history` shows it."""

    at: int
    user_id: str
    channel_id: str
    action: str
    result: str
    reason: str | None = None


_RESULT_MARKS = {"ok": ":white_check_mark:", "refused": ":no_entry:", "failed": ":x:"}


def render_history(job_id: str, entries: Sequence[HistoryEntry], *, limit: int) -> Reply:
    """A job's audit trail, newest first (as given), every value from the database escaped."""
    if not entries:
        text = f"No recorded actions on {_clip(job_id, ID_CHARS)}."
        return _reply(text, [_section(f"No recorded actions on {_code(job_id)}.")])
    lines = []
    for entry in entries:
        channel = f"<#{entry.channel_id}>" if _CHANNEL_ID.fullmatch(entry.channel_id) else "—"
        why = f" ({_clip(entry.reason, 200)})" if entry.reason else ""
        mark = _RESULT_MARKS.get(entry.result, ":grey_question:")
        lines.append(
            f"{mark} {date_token(entry.at)} {_mention(entry.user_id)} *{_clip(entry.action, 40)}* "
            f"in {channel}: {_clip(entry.result, 20)}{why}"
        )
    head = f"*Audit trail of {_code(job_id)}*, newest first"
    if len(entries) >= limit:
        head += f" (the last {limit})"
    blocks = [_section(chunk) for chunk in _chunk([head, *lines])]
    return _reply(f"Audit trail of {_clip(job_id, ID_CHARS)}: {len(entries)} action(s)", blocks)


def render_report_posted(job_id: str, *, in_thread: bool) -> Reply:
    where = "in the job's thread" if in_thread else "in this channel"
    return _reply(
        f"Posted the report of {_clip(job_id, ID_CHARS)} {where}.",
        [_section(f":bar_chart: Posted the report of {_code(job_id)} {where}.")],
    )


def render_report_private(scorecard_mrkdwn: str, note: str | None = None) -> Reply:
    """The scorecard for the asker alone: when there is nothing to chart yet, or the bot may not
    post here. `scorecard_mrkdwn` is already escaped (bot/scorecard.py)."""
    blocks = [_section(scorecard_mrkdwn)]
    if note:
        blocks.append(_context(note))
    return _reply(scorecard_mrkdwn, blocks)


def render_report_busy(job_id: str) -> Reply:
    return _reply(
        f"A report of {_clip(job_id, ID_CHARS)} is already being made.",
        [_section(f":hourglass_flowing_sand: A report of {_code(job_id)} is already being made here.")],
    )


def render_checkpoints(job_id: str, checkpoints: list[Checkpoint], has_more: bool) -> Reply:
    header = _header(f"Checkpoints of {job_id}")
    if not checkpoints:
        text = f"No checkpoints yet for {_code(job_id)}: OpenAI saves them as training goes on."
        return _reply(f"No checkpoints yet for {_clip(job_id, ID_CHARS)}.", [header, _section(text)])
    # Newest first, as OpenAI sends them: the latest checkpoint is the one people usually want.
    chunks = _chunk(_checkpoint_line(c) for c in checkpoints)
    shown = chunks[: MAX_BLOCKS - 2]
    blocks = [header, *(_section(chunk) for chunk in shown)]
    note = "A checkpoint's model name works anywhere a model name does (chat completions, a new `create`)."
    if has_more or len(shown) < len(chunks):
        note += " Older checkpoints are not listed; use `limit=` for more (max 100)."
    blocks.append(_context(note))
    return _reply(f"{_plural(len(checkpoints), 'checkpoint')} of {_clip(job_id, ID_CHARS)}", blocks)


# ---------------------------------------------------------------------------------------------- actions

# action → (emoji, what was asked, the status it needs to make sense, said as "nothing to …")
_ACTIONS = {
    "cancel": (":no_entry_sign:", "Cancellation requested", "cancel"),
    "pause": (":double_vertical_bar:", "Pause requested", "pause"),
    "resume": (":arrow_forward:", "Resume requested", "resume"),
}


def render_action_requested(job: FineTuningJob, action: str, now: int) -> Reply:
    """Cancel, pause or resume went through: the job's status as OpenAI now reports it."""
    if action == "cancel":
        return render_cancel_requested(job, now)
    emoji, headline, _ = _ACTIONS[action]
    blocks = [
        _section(f"{emoji} {headline} for {_code(job.id)}\nStatus now: {_status(job.status)}"),
        _context(f"`/finetune get {_clip(job.id, ID_CHARS)}` shows the latest."),
    ]
    return _reply(f"{headline} for {_clip(job.id, ID_CHARS)}", blocks)


def render_action_not_applicable(job: FineTuningJob, action: str) -> Reply:
    """A click on a stale card (or a command) asking for what the job's status no longer allows:
    its current state, not an error."""
    verb = _ACTIONS.get(action, ("", "", "change"))[2]
    if job.is_terminal:
        why = "it has already ended"
    elif action == "pause":
        why = "only a running job can be paused"
    elif action == "resume":
        why = "only a paused job can be resumed"
    else:
        why = "its status does not allow it"
    text = f"Nothing to {verb}: {_code(job.id)} is {_status(job.status)} now ({why})."
    plain = f"Nothing to {verb}: {_clip(job.id, ID_CHARS)} is {status_label(job.status)}"
    return _reply(plain, [_section(text)])


def render_card_unchanged(job: FineTuningJob) -> Reply:
    """Refresh found nothing new: say so, or the click looks ignored."""
    text = f":arrows_counterclockwise: Nothing has changed: {_code(job.id)} is still {_status(job.status)}."
    return _reply(f"{_clip(job.id, ID_CHARS)} is still {status_label(job.status)}", [_section(text)])


def render_button_broken() -> Reply:
    """A click whose value is not what the bot put there (forged, or from a much older version)."""
    text = ":warning: That button no longer works. Run the `/finetune` command instead (`/finetune help`)."
    return _reply(text, [_section(text)], Outcome.BAD_INPUT)


# ---------------------------------------------------------------------------------------------- announcements


def _announcement(job: FineTuningJob, user_id: str, now: int) -> tuple[str, list[dict[str, Any]]]:
    """A job's summary for private notices (no buttons, not edited later)."""
    who = _mention(user_id)
    pairs = [
        ("Model", _code(job.model, NAME_CHARS)),
        ("Training file", _code(job.training_file)),
        ("Validation file", _code(job.validation_file)),
        ("Status", _status(job.status)),
        ("Created", _when(job.created_at, now)),
    ]
    blocks = [_section(f"{who} started a fine-tuning job {_code(job.id)}"), *_fields(pairs)]
    text = f"{who} started fine-tuning job {_clip(job.id, ID_CHARS)} on {_clip(job.model, NAME_CHARS)}"
    return text, blocks


def render_announcement(job: FineTuningJob, user_id: str, now: int) -> Reply:
    """The parent message of a job started from Slack: the live card (bot/card.py)."""
    from bot.card import render_card  # card builds on this module's pieces

    return render_card(job, user_id, now, origin="create")


_NOT_POSTED_REASONS = {
    "not_in_channel": "I'm not a member of this channel",
    "channel_not_found": "I can't see this channel (private channels need an invite)",
    "is_archived": "this channel is archived",
}


def render_announcement_not_posted(
    job: FineTuningJob, user_id: str, channel_id: str, reason: str, now: int
) -> Reply:
    where = f"<#{channel_id}>" if _CHANNEL_ID.fullmatch(channel_id) else "this channel"
    if reason in _NOT_POSTED_REASONS:
        notice = (
            f":warning: The job was started, but I can't post in {where}: {_NOT_POSTED_REASONS[reason]}. "
            "Invite me with `/invite @finetune` (private channels need an invite) "
            "so the outcome can be announced here."
        )
    else:
        # Slack had a bad moment (or refused for another reason): inviting the bot would not help.
        notice = (
            f":warning: The job was started, but Slack did not take my announcement in {where} "
            f"({_code(reason, 60)}). I'll still try to post its outcome there when it ends."
        )
    _, blocks = _announcement(job, user_id, now)
    text = f"Your fine-tuning job {_clip(job.id, ID_CHARS)} was started, but I can't post in this channel."
    return _reply(text, [_section(notice), *blocks])


def render_cancel_requested(job: FineTuningJob, now: int) -> Reply:
    headline = f":no_entry_sign: Cancellation requested for {_code(job.id)}"
    blocks = [
        _section(f"{headline}\nStatus now: {_status(job.status)}"),
        _context(
            f"Cancelling can take a moment; `/finetune get {_clip(job.id, ID_CHARS)}` shows the latest."
        ),
    ]
    return _reply(f"Cancellation requested for {_clip(job.id, ID_CHARS)}", blocks)


# ---------------------------------------------------------------------------------------------- errors


def _openai_error_message(error: OpenAIError, job_id: str | None, action: str) -> str:
    if isinstance(error, NotFoundError):
        if job_id is None:
            # e.g. a model or file that does not exist: OpenAI's own words say which.
            return f"OpenAI could not find that: {_clip(error.message, ERROR_CHARS)}"
        return f"No fine-tuning job {_code(job_id)} was found (check the id with `/finetune list`)."
    if isinstance(error, AuthenticationError | PermissionDeniedError):
        # Fixed wording on purpose: the error's own text could quote part of the key.
        return (
            "OpenAI refused the bot's credentials — ask the admin who installed finetune-bot to check "
            "its OpenAI API key (and organization/project)."
        )
    if isinstance(error, QuotaExceededError):
        return (
            f"I couldn't {escape(action)}: the OpenAI account's quota is used up. Ask an admin to check "
            "its billing and usage limits."
        )
    rejected = isinstance(error, BadRequestError | ConflictError) or (
        not isinstance(error, RateLimitError | ServerError | UnavailableError)
        and error.status is not None
        and 400 <= error.status < 500
        and error.status != 408  # a timeout: trying again is the answer
    )
    if rejected:
        message = f"OpenAI rejected this: {_clip(error.message, ERROR_CHARS)}"
        if error.param:
            message += f" (parameter {_code(error.param)})"
        return message
    return f"I couldn't {escape(action)}: OpenAI is unavailable right now, try again in a minute."


def render_job_not_found(job_id: str) -> Reply:
    """A job OpenAI does not have, and a job the reader may not see, get this same answer, so the
    reply never tells whether a hidden job exists."""
    message = f":warning: No fine-tuning job {_code(job_id)} was found (check the id with `/finetune list`)."
    return _reply(message, [_section(message)], Outcome.REFUSED)


def render_openai_error(error: OpenAIError, *, job_id: str | None = None, action: str = "do that") -> Reply:
    if isinstance(error, NotFoundError) and job_id is not None:
        # No request id either: it would set a real 404 apart from a refusal (see above).
        return render_job_not_found(job_id)
    message = f":warning: {_openai_error_message(error, job_id, action)}"
    blocks = [_section(message)]
    if error.request_id:
        blocks.append(_context(f"OpenAI request id: {_code(error.request_id)}"))
    return _reply(message, blocks, Outcome.OPENAI_ERROR)


def render_internal_error() -> Reply:
    message = ":warning: Something went wrong on my side; the team has been told (see the bot's logs)."
    return _reply(message, [_section(message)], Outcome.ERROR)


# ---------------------------------------------------------------------------------------------- creates


def render_create_not_started_database() -> Reply:
    """The create could not be recorded, so OpenAI was never called: safe to try again later."""
    message = (
        ":warning: Nothing was started: I couldn't record the job in my database (a problem on the "
        "bot's side, not yours). Try again in a few minutes; if it keeps happening, tell whoever runs "
        "finetune-bot."
    )
    return _reply(message, [_section(message)], Outcome.ERROR)


def render_create_untracked(job: FineTuningJob, user_id: str, now: int) -> Reply:
    """OpenAI started the job but the bot could not write it down: the user must not retry."""
    job_id = _clip(job.id, ID_CHARS)
    notice = (
        f":warning: Your fine-tuning job {_code(job.id)} *was started and is running* — don't run "
        "`create` again, that would start (and bill) a second job. I couldn't record it in my "
        "database (a problem on the bot's side), so its outcome may not be announced here "
        f"automatically: `/finetune get {job_id}` shows how it is doing."
    )
    text = f"Your fine-tuning job {job_id} was started and is running; don't retry. /finetune get {job_id}"
    return _reply(text, [_section(notice), *_announcement(job, user_id, now)[1][1:]])


def render_create_duplicate(job_id: str) -> Reply:
    """The same command (same Slack trigger) reached the bot again: nothing new was started."""
    message = (
        f":information_source: This command reached me more than once; it started fine-tuning job "
        f"{_code(job_id)} the first time, and nothing new was started. "
        f"`/finetune get {_clip(job_id, ID_CHARS)}` shows how it is doing."
    )
    return _reply(message, [_section(message)])


def _unconfirmed_reason(error: OpenAIError) -> str:
    # Our own words from the status alone: OpenAI's (or a proxy's) text is not shown here.
    if isinstance(error, UnavailableError):
        return "it didn't answer in time or the connection dropped"
    if error.status is not None and error.status >= 500:
        return f"it answered HTTP {int(error.status)}"
    return "its answer was garbled"


def render_create_unconfirmed(error: OpenAIError, check_for: float) -> Reply:
    """A create whose answer was lost (timeout, 5xx, dropped connection): OpenAI may have started
    the job anyway, so the user must not retry with a new command while the bot looks it up."""
    minutes = max(1, round(check_for / 60))
    message = (
        f":warning: OpenAI is unavailable right now and didn't confirm your `create` "
        f"({_unconfirmed_reason(error)}), so the job *may or may not have started*. I'll check and "
        f"announce it here within {_plural(minutes, 'minute')} if it did — *don't run `create` "
        "again before then*, that could start (and bill) a second job. If no job turns up, I'll tell "
        "you here that a retry is safe."
    )
    blocks = [_section(message)]
    if error.request_id:
        blocks.append(_context(f"OpenAI request id: {_code(error.request_id)}"))
    return _reply(message, blocks, Outcome.OPENAI_ERROR)


def render_create_started_after_all(job_id: str, channel_id: str) -> Reply:
    """The unconfirmed create did start a job, found later by its metadata."""
    where = f"<#{channel_id}>" if _CHANNEL_ID.fullmatch(channel_id) else "the channel"
    message = (
        f":white_check_mark: Your `create` *did start* fine-tuning job {_code(job_id)} after all "
        f"(OpenAI hadn't confirmed it). It is announced in {where} and I'm watching it — don't run "
        f"`create` again. `/finetune get {_clip(job_id, ID_CHARS)}` shows how it is doing."
    )
    return _reply(message, [_section(message)])


def render_create_never_started(training_file: str | None) -> Reply:
    """The unconfirmed create started nothing: no job carrying its key ever appeared."""
    what = f" (training file {_code(training_file)})" if training_file else ""
    message = (
        f":information_source: Your earlier `create`{what} started nothing: OpenAI never confirmed it "
        "and no job from it has turned up. It is safe to run it again."
    )
    return _reply(message, [_section(message)])


# ---------------------------------------------------------------------------------------------- restarts


def render_restarting() -> Reply:
    """A command that arrives while the bot shuts down (a deploy): refused before any work."""
    message = ":arrows_counterclockwise: I'm restarting right now. Please try again in a minute."
    return _reply(message, [_section(message)], Outcome.REFUSED)


def render_unfinished(subcommand: str, command: str = "/finetune") -> Reply:
    """A command acknowledged before a restart that could not finish inside the shutdown window.
    A `create` may have reached OpenAI without an answer: never claim it was not created."""
    what = _code(f"{command} {subcommand}", 60)
    if subcommand == "create":
        message = (
            f":warning: I was restarting and could not finish {what}: OpenAI had not confirmed the "
            f"job yet, so it may or may not have been created. Check `{command} list` before "
            "running it again, so it does not start twice."
        )
    else:
        message = f":warning: I was restarting and could not finish {what}; please run it again."
    return _reply(message, [_section(message)])


# ---------------------------------------------------------------------------------------------- watches


def render_watch_announcement(job: FineTuningJob, user_id: str, now: int) -> Reply:
    """A channel starts following a job started elsewhere: the parent message of its outcome,
    also a live card."""
    from bot.card import render_card  # card builds on this module's pieces

    return render_card(job, user_id, now, origin="watch")


def render_already_watching(job_id: str) -> Reply:
    text = f"This channel already follows {_code(job_id)}; its outcome will be posted here."
    return _reply(text, [_section(text)])


def render_unwatched(job_id: str, was_watching: bool) -> Reply:
    if was_watching:
        text = f":mute: This channel no longer follows {_code(job_id)}."
    else:
        text = f"This channel does not follow {_code(job_id)}; nothing to stop."
    return _reply(text, [_section(text)])


def render_watch_list(rows: list[tuple[str, str | None, int | None]], now: int) -> Reply:
    """`rows` are (job id, last known status, when the watch began)."""
    if not rows:
        text = "This channel follows no fine-tuning jobs. Start one with `/finetune create`, or follow one "
        text += "with `/finetune watch ftjob-…`."
        return _reply(text, [_section(text)])
    lines = [
        f"{_status(status or 'unknown')} {_code(job_id)} · following since {_when(since, now)}"
        for job_id, status, since in rows
    ]
    header = f"*This channel follows {len(rows)} fine-tuning job{'s' if len(rows) != 1 else ''}:*"
    blocks = [_section(header), *[_section(chunk) for chunk in _chunk(lines)][: MAX_BLOCKS - 2]]
    return _reply(f"This channel follows {_plural(len(rows), 'fine-tuning job')}", blocks)


def render_outcome(
    job: FineTuningJob, user_id: str, outcome: str, now: int, *, note: str | None = None
) -> Reply:
    """The one message that tells a channel how a job ended (threaded under its announcement)."""
    who = _mention(user_id)
    job_code = _code(job.id)
    if outcome == "succeeded":
        lines = [f":white_check_mark: {who} fine-tuning job {job_code} succeeded."]
        if job.fine_tuned_model:
            lines.append(f"Your model {_code(job.fine_tuned_model, NAME_CHARS)} is ready.")
        details = []
        if job.trained_tokens is not None:
            details.append(f"{job.trained_tokens:,} trained tokens")
        if job.finished_at is not None and job.created_at is not None:
            details.append(f"took {duration_words(max(0, job.finished_at - job.created_at))}")
        if details:
            lines.append(" · ".join(details).capitalize())
        text = f"Fine-tuning job {_clip(job.id, ID_CHARS)} succeeded"
        if job.fine_tuned_model:
            text += f": {_clip(job.fine_tuned_model, NAME_CHARS)} is ready"
    elif outcome == "failed":
        lines = [f":x: {who} fine-tuning job {job_code} failed."]
        if job.error is not None:
            code = _code(job.error.code, 80) if job.error.code else ""
            message = _clip(job.error.message or "", ERROR_CHARS)
            lines.append(" ".join(part for part in (code, message) if part))
        else:
            lines.append(
                "OpenAI gave no reason; `/finetune events " + _clip(job.id, ID_CHARS) + "` may say more."
            )
        text = f"Fine-tuning job {_clip(job.id, ID_CHARS)} failed"
    elif outcome == "cancelled":
        when = date_token(job.finished_at) if job.finished_at is not None else "just now"
        lines = [f":no_entry_sign: {who} fine-tuning job {job_code} was cancelled ({when})."]
        text = f"Fine-tuning job {_clip(job.id, ID_CHARS)} was cancelled"
    else:  # "missing": OpenAI no longer knows the job
        lines = [
            f":grey_question: {who} OpenAI no longer has fine-tuning job {job_code} (it may have been "
            "deleted), so I've stopped following it."
        ]
        text = f"Fine-tuning job {_clip(job.id, ID_CHARS)} can no longer be found"
    blocks = [_section("\n".join(lines))]
    if note:
        blocks.append(_context(note))
    return _reply(text, blocks)


def render_redirected_note(channel_id: str, reason: str) -> str:
    """Why an outcome arrived by DM instead of in its channel (mrkdwn, for a context block)."""
    where = f"<#{channel_id}>" if _CHANNEL_ID.fullmatch(channel_id) else "the channel"
    why = _NOT_POSTED_REASONS.get(reason, f"Slack said {_code(reason, 60)}")
    return (
        f"I couldn't post this in {where} ({why}). Invite me with `/invite @finetune` so outcomes "
        "land there next time."
    )


# ---------------------------------------------------------------------------------------------- access


def render_channel_not_allowed(allowed: frozenset[str]) -> Reply:
    channels = [f"<#{c}>" for c in sorted(allowed) if _CHANNEL_ID.fullmatch(c)][:20]
    where = ", ".join(channels) if channels else "the channels your admin chose"
    text = f":lock: `/finetune` isn't enabled in this channel. It works in {where}."
    return _reply(text, [_section(text)], Outcome.REFUSED)


def render_not_allowed(job_id: str, action: str, starter: str | None, *, starter_here: bool = True) -> Reply:
    """`starter` None: the job was not started from Slack. `starter_here` False: it was, in another
    channel, whose members this reader must not learn, so the starter is not named."""
    if starter is None:
        text = (
            f":lock: Sorry, you can't {_clip(action, 40)} {_code(job_id)}: it wasn't started from Slack, "
            "so only a finetune-bot admin (`FINETUNE_ADMINS`) can."
        )
    else:
        who = "the person who started it"
        if starter_here:
            who += f" ({_mention(starter)})"
        text = (
            f":lock: Sorry, you can't {_clip(action, 40)} {_code(job_id)}: only {who} "
            "or a finetune-bot admin (`FINETUNE_ADMINS`) can."
        )
    return _reply(text, [_section(text)], Outcome.REFUSED)


# ------------------------------------------------------------------------------------ the create form


def render_create_form_not_opened(reason: str, command: str = "/finetune") -> Reply:
    """views.open failed (most often the 3-second trigger ran out): what to do instead."""
    cmd = _clip(command, 40)
    if reason in ("expired_trigger_id", "exchanged_trigger_id", "invalid_trigger_id"):
        why = "Slack gives a bot only 3 seconds to open a form, and that time ran out"
    else:
        why = f"Slack said {_code(reason, 60)}"
    text = (
        f":warning: I couldn't open the create form ({why}). Try again, or type the command: "
        f"`{cmd} {escape(EXAMPLES['create'])}`."
    )
    return _reply(text, [_section(text)])


def render_shortcut_needs_one_jsonl(found: int, other_names: list[str]) -> Reply:
    """The message shortcut on a message without exactly one `.jsonl` file."""
    if found > 1:
        what = f"this message has {found} `.jsonl` files; I can take one at a time"
    elif other_names:
        names = ", ".join(_code(name.replace("`", "'"), 60) for name in other_names[:5])
        more = f" and {len(other_names) - 5} more" if len(other_names) > 5 else ""
        what = f"this message has no `.jsonl` file (only {names}{more})"
    else:
        what = "this message has no file"
    text = (
        f":warning: “Fine-tune on this file” needs a message with one `.jsonl` file: {what}. "
        "Fine-tuning takes JSON Lines, one example per line. Share the `.jsonl` in a message of its "
        "own and use the shortcut on it, or run `/finetune create` to upload it in the form."
    )
    return _reply(text, [_section(text)])


def _file_line(file: OpenAIFile, now: int) -> str:
    parts = [_code(file.id), _clip(file.filename, NAME_CHARS) or "(no name)"]
    if file.bytes is not None:
        parts.append(size_words(file.bytes))
    if file.created_at is not None:
        parts.append(f"uploaded {_when(file.created_at, now)}")
    return "• " + " · ".join(parts)


def render_files(files: list[OpenAIFile], has_more: bool, now: int) -> Reply:
    """`/finetune files`: the fine-tune files in OpenAI, newest first (the id is what `create` takes)."""
    if not files:
        text = "No fine-tune files in OpenAI yet. Upload a `.jsonl` with `/finetune create` (the form)."
        return _reply(text, [_section(text)])
    if has_more:
        recent = _most_recent(len(files), "fine-tune file")
        heading = recent[:1].upper() + recent[1:]
    else:
        heading = f"{_plural(len(files), 'fine-tune file')} in OpenAI"
    blocks = [_section(f"*{heading}*")]
    blocks += [_section(chunk) for chunk in _chunk(_file_line(f, now) for f in files)]
    blocks.append(_context("Start a job on one: `/finetune create file-…` (or pick it in the form)."))
    return _reply(heading, blocks)
