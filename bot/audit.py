"""The audit trail: who did what to which job, where, when, and what it came to.

Every state-changing action (create, start from a training report, cancel, pause, resume, watch,
unwatch) is recorded, refused ones included, in `finetune_audit` (bot/store.py) and logged at INFO
("audit: <@U1> cancel ftjob-… in C1: ok"). Recording never fails the action: a database error is
logged and the action goes on. Rows older than AUDIT_RETENTION_DAYS are deleted by the poll cycle
(`AuditRetention`), at most once an hour and a bounded number at a time.

The trail is append-only. A create whose outcome is not known when it is recorded (OpenAI's
answer was lost) is recorded `unconfirmed`, without a job; the reconciler (bot/pending.py), once
it knows, adds a row of its own: `ok` naming the job, or `failed` when no job was made. Every
create row carries the create's key in `detail`, which ties the two together.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from bot.logs import one_line
from bot.store import Store

log = logging.getLogger(__name__)

DAY = 86400.0
# How often the poll cycle deletes expired rows, and how many at most each time.
PURGE_EVERY_SECONDS = 3600.0
PURGE_BATCH = 5000


class Action(StrEnum):
    CREATE = "create"
    START_TRAINING = "start_training"
    CANCEL = "cancel"
    PAUSE = "pause"
    RESUME = "resume"
    WATCH = "watch"
    UNWATCH = "unwatch"


class Result(StrEnum):
    OK = "ok"
    REFUSED = "refused"  # not allowed, not readable, or the job's state does not allow it
    FAILED = "failed"  # OpenAI or the database failed
    # OpenAI's answer to a create was lost (timeout, 5xx): a job may or may not exist. The
    # reconciler's later row says which.
    UNCONFIRMED = "unconfirmed"


@dataclass(frozen=True)
class AuditEntry:
    team_id: str
    channel_id: str
    user_id: str
    action: Action
    job_id: str | None
    result: Result
    reason: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)


def audit_line(entry: AuditEntry) -> str:
    """The INFO line of an entry: "audit: <@U1> cancel ftjob-abc in C1: refused (not allowed)"."""
    what = f"{entry.action.value} {entry.job_id}" if entry.job_id else entry.action.value
    where = f" in {entry.channel_id}" if entry.channel_id else ""
    why = f" ({one_line(entry.reason, 200)})" if entry.reason else ""
    return f"audit: <@{entry.user_id}> {what}{where}: {entry.result.value}{why}"


class Auditor:
    def __init__(self, store: Store, *, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._clock = clock

    async def record(self, entry: AuditEntry) -> None:
        """Log the entry and write it down. Never raises: the action it records has happened (or
        been refused) whatever the database says."""
        log.info("%s", audit_line(entry))
        try:
            await asyncio.to_thread(
                self._store.add_audit,
                at=self._clock(),
                team_id=entry.team_id,
                channel_id=entry.channel_id,
                user_id=entry.user_id,
                action=entry.action.value,
                job_id=entry.job_id,
                result=entry.result.value,
                reason=entry.reason,
                detail=entry.detail,
            )
        except Exception as error:
            log.warning("could not write the audit row of %s: %s", audit_line(entry), type(error).__name__)

    async def record_unless_done(self, entry: AuditEntry) -> None:
        """Record the entry unless its job already has a successful row of the same action: a
        create the reconciler finishes may have been recorded `ok` by the runner before the
        process died or the database failed. Never raises; if the trail cannot be read, the entry
        is recorded (a conclusion said twice beats one lost)."""
        if entry.job_id is not None:
            try:
                done = await asyncio.to_thread(self._store.last_audited, entry.job_id, entry.action.value)
            except Exception as error:
                log.warning("could not read the audit trail of %s: %s", entry.job_id, type(error).__name__)
                done = None
            if done is not None:
                return
        await self.record(entry)


class AuditRetention:
    """Deletes audit rows older than the retention, at most once per PURGE_EVERY_SECONDS (the
    poll cycle calls `maybe_purge` every cycle)."""

    def __init__(
        self, store: Store, *, days: int, clock: Callable[[], float] = time.time, batch: int = PURGE_BATCH
    ) -> None:
        self._store = store
        self._days = days
        self._clock = clock
        self._batch = batch
        self._last: float | None = None

    async def maybe_purge(self) -> int:
        """How many rows were deleted (0 when not due). Never raises."""
        now = self._clock()
        if self._last is not None and now - self._last < PURGE_EVERY_SECONDS:
            return 0
        self._last = now
        try:
            deleted = await asyncio.to_thread(
                self._store.purge_audit, now - self._days * DAY, limit=self._batch
            )
        except Exception:
            log.exception("deleting expired audit rows failed; will try again in an hour")
            return 0
        if deleted:
            log.info("deleted %d audit row(s) older than %d days", deleted, self._days)
        return deleted
