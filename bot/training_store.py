"""Durable state of training files sent through the create form (table in bot/store.py).

Each step is a conditional update, so two clicks (two users, a double click, two replicas) can
never both upload the file or both start a job: only the one whose update matched goes on. Times
are the Store's clock (this host's, or a test's fake clock).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from bot.store import Store, training_uploads

# An upload or create claimed by a process that then died is taken over after this long.
STALE_AFTER_SECONDS = 15 * 60.0


@dataclass(frozen=True)
class TrainingUpload:
    id: str
    team_id: str
    channel_id: str
    user_id: str
    slack_file_id: str
    filename: str
    validation_slack_file_id: str | None
    params: dict[str, Any]
    state: str
    report_channel: str | None
    report_ts: str | None
    sha256: str | None
    validation_sha256: str | None
    summary: dict[str, Any] | None
    openai_file_id: str | None
    openai_validation_file_id: str | None
    create_trigger: str | None
    job_id: str | None
    owner: str | None
    created_at: float
    updated_at: float
    note: str | None

    @classmethod
    def from_row(cls, row: Any) -> TrainingUpload:
        m = dict(row._mapping)
        m["params"] = json.loads(m["params"])
        m["summary"] = json.loads(m["summary"]) if m["summary"] else None
        return cls(**{f: m[f] for f in cls.__dataclass_fields__})

    @property
    def upload_name(self) -> str:
        """The name the file gets at OpenAI: unique to this upload, so that after a lost answer or
        a crash the bot finds the file it already sent (by name) instead of sending it twice."""
        stem = self.filename[:-6] if self.filename.lower().endswith(".jsonl") else self.filename
        return f"{stem[:150]}.{self.id[:12]}.jsonl"


class TrainingUploads:
    def __init__(self, store: Store) -> None:
        self._store = store

    @property
    def store(self) -> Store:
        return self._store

    def _update(self, upload_id: str, where: sa.ColumnElement[bool] | None, **values: Any) -> bool:
        values["updated_at"] = self._store.now()
        condition = training_uploads.c.id == upload_id
        if where is not None:
            condition = sa.and_(condition, where)
        with self._store.engine.begin() as conn:
            result = conn.execute(training_uploads.update().where(condition).values(**values))
        return result.rowcount == 1

    def begin(
        self,
        *,
        team_id: str,
        channel_id: str,
        user_id: str,
        slack_file_id: str,
        filename: str,
        validation_slack_file_id: str | None,
        params: dict[str, Any],
    ) -> TrainingUpload:
        now = self._store.now()
        upload_id = uuid.uuid4().hex
        with self._store.engine.begin() as conn:
            conn.execute(
                training_uploads.insert().values(
                    id=upload_id,
                    team_id=team_id,
                    channel_id=channel_id,
                    user_id=user_id,
                    slack_file_id=slack_file_id,
                    filename=filename[:300],
                    validation_slack_file_id=validation_slack_file_id,
                    params=json.dumps(params, separators=(",", ":")),
                    state="checking",
                    created_at=now,
                    updated_at=now,
                )
            )
        found = self.get(upload_id)
        assert found is not None
        return found

    def get(self, upload_id: str) -> TrainingUpload | None:
        with self._store.engine.connect() as conn:
            row = conn.execute(sa.select(training_uploads).where(training_uploads.c.id == upload_id)).first()
        return TrainingUpload.from_row(row) if row is not None else None

    def set_report(self, upload_id: str, channel: str, ts: str) -> None:
        self._update(upload_id, None, report_channel=channel, report_ts=ts)

    def checked(
        self,
        upload_id: str,
        *,
        ok: bool,
        sha256: str | None,
        validation_sha256: str | None,
        summary: dict[str, Any],
    ) -> None:
        self._update(
            upload_id,
            training_uploads.c.state == "checking",
            state="ready" if ok else "rejected",
            sha256=sha256,
            validation_sha256=validation_sha256,
            summary=json.dumps(summary, separators=(",", ":")),
        )

    def failed(self, upload_id: str, note: str) -> None:
        self._update(upload_id, None, state="failed", note=note[:300])

    def claim_upload(self, upload_id: str, owner: str) -> bool:
        """ready → uploading, or take over an upload whose process died (stale)."""
        stale = self._store.now() - STALE_AFTER_SECONDS
        return self._update(
            upload_id,
            sa.or_(
                training_uploads.c.state == "ready",
                sa.and_(
                    training_uploads.c.state.in_(("uploading", "uploaded")),
                    training_uploads.c.updated_at < stale,
                ),
            ),
            state="uploading",
            owner=owner,
        )

    def uploaded(self, upload_id: str, openai_file_id: str, openai_validation_file_id: str | None) -> None:
        self._update(
            upload_id,
            None,
            state="uploaded",
            openai_file_id=openai_file_id,
            openai_validation_file_id=openai_validation_file_id,
        )

    def creating(self, upload_id: str, trigger: str, owner: str) -> bool:
        """uploaded → creating: this click's create (keyed by its `trigger`) is the only one under
        way. False when another click got there first."""
        return self._update(
            upload_id,
            training_uploads.c.state == "uploaded",
            state="creating",
            create_trigger=trigger,
            owner=owner,
            note=None,
        )

    def creating_since(self, since: float, *, limit: int = 50) -> list[TrainingUpload]:
        """Uploads whose create was under way at some point after `since`, oldest first: those
        whose create has since come to something are settled (bot/training_flow.py)."""
        with self._store.engine.connect() as conn:
            rows = conn.execute(
                sa.select(training_uploads)
                .where(training_uploads.c.state == "creating", training_uploads.c.updated_at >= since)
                .order_by(training_uploads.c.updated_at)
                .limit(limit)
            )
            return [TrainingUpload.from_row(r) for r in rows]

    def claim_settling(
        self, upload_id: str, trigger: str, owner: str, *, stale_before: float, others_orphaned: bool
    ) -> bool:
        """Take the settling of the create `trigger` (its report edit, then its row's last step):
        one claimer at a time. Free to take: a row nobody claimed, this process's own (the caller
        keeps its own work apart), one whose claimer has not moved it since `stale_before` (it died)
        and, when `others_orphaned` (SQLite: one process, so another owner is a dead predecessor),
        any. Moves `updated_at` to now, which is what keeps another replica off it meanwhile."""
        free = sa.or_(
            training_uploads.c.owner.is_(None),
            training_uploads.c.owner == owner,
            training_uploads.c.updated_at < stale_before,
        )
        if others_orphaned:
            free = sa.true()
        return self._update(
            upload_id,
            sa.and_(
                training_uploads.c.state == "creating",
                training_uploads.c.create_trigger == trigger,
                free,
            ),
            owner=owner,
        )

    def started(self, upload_id: str, trigger: str, job_id: str) -> bool:
        """creating → started: the create `trigger` made `job_id` (and the report says so)."""
        return self._update(
            upload_id,
            sa.and_(training_uploads.c.state == "creating", training_uploads.c.create_trigger == trigger),
            state="started",
            job_id=job_id,
            owner=None,
        )

    def no_job_started(self, upload_id: str, trigger: str, note: str) -> bool:
        """creating → uploaded: the create `trigger` made no job, so Start may be clicked again (the
        file is in OpenAI already: the next Start only creates)."""
        return self._update(
            upload_id,
            sa.and_(training_uploads.c.state == "creating", training_uploads.c.create_trigger == trigger),
            state="uploaded",
            owner=None,
            note=note[:300],
        )

    def release(self, upload_id: str, state: str, note: str) -> None:
        """Back to a state from which Start can be clicked again (a failure that a retry may fix)."""
        self._update(upload_id, None, state=state, owner=None, note=note[:300])
