"""The buttons on a job (its card, the `get` reply) and on `list`. Pure: no I/O, no Slack calls.

A button's `value` carries only what names the thing (a job id; for Next page, the list command to
run again): the listener reads everything else fresh and authorizes the clicker itself, so a forged
value can ask for nothing that typing the command could not.
"""

from __future__ import annotations

from typing import Any

from bot import ids
from bot.models import TERMINAL_STATUSES, FineTuningJob

JOB_REFRESH = "job_refresh"
JOB_EVENTS = "job_events"
JOB_CANCEL = "job_cancel"
JOB_PAUSE = "job_pause"
JOB_RESUME = "job_resume"
JOB_CHECKPOINTS = "job_checkpoints"
LIST_NEXT_PAGE = "list_next_page"
OPEN_CREATE_FORM = "open_create_form"

JOB_ACTION_IDS = (JOB_REFRESH, JOB_EVENTS, JOB_CANCEL, JOB_PAUSE, JOB_RESUME, JOB_CHECKPOINTS)
JOB_BLOCK_ID = "job_actions"
LIST_BLOCK_ID = "list_actions"
HELP_BLOCK_ID = "help_actions"

# Slack's limits (FACTS-interactive §6): the value and the confirm dialog's texts.
VALUE_CHARS = 2000
CONFIRM_TITLE_CHARS = 100
CONFIRM_TEXT_CHARS = 300

_LABELS = {
    JOB_REFRESH: "Refresh",
    JOB_EVENTS: "Events",
    JOB_CANCEL: "Cancel",
    JOB_PAUSE: "Pause",
    JOB_RESUME: "Resume",
    JOB_CHECKPOINTS: "Checkpoints",
}
# Before training starts there is nothing to pause and no checkpoint yet.
_NOT_STARTED = frozenset({"validating_files", "queued"})


def job_action_ids(status: str) -> tuple[str, ...]:
    """Which buttons make sense for a job in this status, in the order they are shown."""
    if status == "running":
        return (JOB_REFRESH, JOB_EVENTS, JOB_PAUSE, JOB_CANCEL, JOB_CHECKPOINTS)
    if status == "paused":
        return (JOB_REFRESH, JOB_EVENTS, JOB_RESUME, JOB_CANCEL, JOB_CHECKPOINTS)
    if status in _NOT_STARTED:
        return (JOB_REFRESH, JOB_EVENTS, JOB_CANCEL)
    if status in TERMINAL_STATUSES:
        return (JOB_REFRESH, JOB_EVENTS, JOB_CHECKPOINTS)
    # A status OpenAI adds later: offer only what cannot do harm.
    return (JOB_REFRESH, JOB_EVENTS)


def _button(action_id: str, text: str, value: str | None) -> dict[str, Any]:
    button: dict[str, Any] = {
        "type": "button",
        "action_id": action_id,
        "text": {"type": "plain_text", "text": text, "emoji": True},
    }
    if value:
        button["value"] = value[:VALUE_CHARS]
    return button


def cancel_confirm(job_id: str) -> dict[str, Any]:
    """Slack's own confirmation dialog: a misclick cannot cancel hours of training."""
    # An id that is not a job id's shape (never from OpenAI) is not repeated anywhere.
    text = f"Cancel {job_id}? This cannot be undone." if ids.is_job_id(job_id) else "Cancel this job?"
    return {
        "title": {"type": "plain_text", "text": "Cancel this job?"},
        "text": {"type": "plain_text", "text": text[:CONFIRM_TEXT_CHARS]},
        "confirm": {"type": "plain_text", "text": "Cancel job"},
        "deny": {"type": "plain_text", "text": "Keep it running"},
        "style": "danger",
    }


def job_actions(job: FineTuningJob) -> dict[str, Any]:
    """ONE actions block (block_id "job_actions") with the buttons that fit the job's status."""
    elements = []
    for action_id in job_action_ids(job.status):
        # Only the job id, and only when it is one: the click is refused as broken otherwise.
        button = _button(action_id, _LABELS[action_id], job.id if ids.is_job_id(job.id) else None)
        if action_id == JOB_CANCEL:
            button["style"] = "danger"
            button["confirm"] = cancel_confirm(job.id)
        elements.append(button)
    return {"type": "actions", "block_id": JOB_BLOCK_ID, "elements": elements}


def list_actions(next_page: str) -> dict[str, Any]:
    """The Next page button; `next_page` is the list command that shows the next page."""
    return {
        "type": "actions",
        "block_id": LIST_BLOCK_ID,
        "elements": [_button(LIST_NEXT_PAGE, "Next page", next_page)],
    }


def help_actions() -> dict[str, Any]:
    """The help's **New fine-tuning job** button: it opens the create form (a click carries the
    trigger_id that views.open needs, as a typed `/finetune create` does)."""
    button = _button(OPEN_CREATE_FORM, "New fine-tuning job", None)
    button["style"] = "primary"
    return {"type": "actions", "block_id": HELP_BLOCK_ID, "elements": [button]}
