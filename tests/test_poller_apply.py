"""Poller.apply in process: what it records for each kind of news, and that watches without news
cost no write (the poll cycle's own overhead, issue 15)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from bot.models import FineTuningJob
from bot.openai_client import _decode_json
from bot.poller import Poller, StatusReport
from bot.store import Store, watches


class RecordingStore(Store):
    """The real SQLite store, counting the status writes the poller makes."""

    status_writes: list[tuple[list[int], str]]

    def set_status(self, watch_ids: Any, status: str) -> None:
        self.status_writes.append((sorted(watch_ids), status))
        super().set_status(watch_ids, status)


def job(job_id: str, status: str) -> FineTuningJob:
    return FineTuningJob.from_api({"id": job_id, "status": status, "model": "m", "created_at": 1})


@pytest.fixture
def store(tmp_path: Path) -> RecordingStore:
    s = RecordingStore.from_url(f"sqlite:///{tmp_path / 'bot.db'}")
    assert isinstance(s, RecordingStore)
    s.status_writes = []
    return s


async def test_apply_records_each_kind_of_news_and_writes_nothing_for_the_rest(store: RecordingStore) -> None:
    for i in range(8):
        store.add_watch(
            job_id=f"ftjob-{i}",
            team_id="T1",
            channel_id="C1",
            user_id="U1",
            announcement_ts=None,
            job_created_at=1,
            status="queued",
        )
    claimed = store.claim_watches("r1", ttl=60, live_replicas=1)
    report = StatusReport(
        jobs={
            "ftjob-0": job("ftjob-0", "queued"),  # unchanged
            "ftjob-1": job("ftjob-1", "queued"),  # unchanged
            "ftjob-2": job("ftjob-2", "running"),
            "ftjob-3": job("ftjob-3", "running"),
            "ftjob-4": job("ftjob-4", "validating_files"),
            "ftjob-5": job("ftjob-5", "succeeded"),
        },
        missing={"ftjob-6"},
        unknown={"ftjob-7"},  # not learnt this cycle: left as it is
    )
    poller = Poller(store, None, None, owner="r1", lease_ttl=60)  # type: ignore[arg-type]
    assert await poller.apply(claimed, report) == 2
    ids = {w.job_id: w.id for w in claimed}
    # One write per new status, none for the unchanged, the ended or the unknown.
    assert sorted(store.status_writes, key=lambda w: w[1]) == [
        ([ids["ftjob-2"], ids["ftjob-3"]], "running"),
        ([ids["ftjob-4"]], "validating_files"),
    ]
    with store.engine.connect() as conn:
        rows = {r.job_id: r for r in conn.execute(sa.select(watches))}
    assert {j: rows[j].last_status for j in ("ftjob-0", "ftjob-2", "ftjob-4", "ftjob-7")} == {
        "ftjob-0": "queued",
        "ftjob-2": "running",
        "ftjob-4": "validating_files",
        "ftjob-7": "queued",
    }
    assert {j for j, r in rows.items() if r.ended_at is not None} == {"ftjob-5", "ftjob-6"}
    owed = sorted((i.job_id, i.outcome) for i in store.outbox_items())
    # A success also owes its completion report (issue 13), a row of its own.
    assert owed == [("ftjob-5", "report"), ("ftjob-5", "succeeded"), ("ftjob-6", "missing")]
    # A second pass over the same news owes nothing more (exactly once).
    assert await poller.apply(claimed, report) == 0
    assert sorted((i.job_id, i.outcome) for i in store.outbox_items()) == owed


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"a": 1, "b": [true, null, "\\u00e9"]}', {"a": 1, "b": [True, None, "é"]}),
        (b'\xef\xbb\xbf{"a": 1}', {"a": 1}),  # a BOM: msgspec refuses, json accepts
        (b'{"a": 123456789012345678901234567890}', {"a": 123456789012345678901234567890}),
        ('{"a": "é"}'.encode("utf-16"), {"a": "é"}),
        (b"not json", None),
        (b"", None),
    ],
)
def test_responses_decode_as_httpx_would(body: bytes, expected: object) -> None:
    response = httpx.Response(200, content=body)
    assert _decode_json(response) == expected
    try:
        assert response.json() == expected
    except ValueError:
        assert expected is None
