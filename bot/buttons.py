"""The job's buttons (placeholder: the buttons work replaces this module with the full set)."""

from __future__ import annotations

from typing import Any

from bot.models import FineTuningJob


def job_actions(job: FineTuningJob) -> dict[str, Any]:
    """The actions block shown under a job: the button's value carries only the job id."""
    return {
        "type": "actions",
        "block_id": "job_actions",
        "elements": [
            {
                "type": "button",
                "action_id": "job_refresh",
                "text": {"type": "plain_text", "text": "Refresh", "emoji": True},
                "value": job.id[:2000],
            }
        ],
    }
