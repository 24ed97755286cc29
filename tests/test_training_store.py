"""The training uploads' conditional steps (bot/training_store.py) on the Store's clock: a fake
clock decides when an upload is stale."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.store import Store
from bot.training_store import STALE_AFTER_SECONDS, TrainingUpload, TrainingUploads
from tests.fakes.clock import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(start=1_800_000_000.0)


@pytest.fixture
def uploads(tmp_path: Path, clock: FakeClock) -> Iterator[TrainingUploads]:
    store = Store.from_url(f"sqlite:///{tmp_path / 'uploads.db'}", clock=clock)
    yield TrainingUploads(store)
    store.close()


def checked(uploads: TrainingUploads) -> TrainingUpload:
    row = uploads.begin(
        team_id="T1",
        channel_id="C1",
        user_id="U1",
        slack_file_id="F1",
        filename="train.jsonl",
        validation_slack_file_id=None,
        params={"model": "gpt-4o-mini"},
    )
    uploads.checked(row.id, ok=True, sha256="0" * 64, validation_sha256=None, summary={"examples": 20})
    return row


def state(uploads: TrainingUploads, upload_id: str) -> tuple[str, str | None, str | None]:
    row = uploads.get(upload_id)
    assert row is not None
    return row.state, row.owner, row.job_id


def test_rows_are_stamped_and_taken_over_on_the_stores_clock(
    uploads: TrainingUploads, clock: FakeClock
) -> None:
    row = checked(uploads)
    assert row.created_at == row.updated_at == clock.time()
    assert uploads.claim_upload(row.id, "a")
    assert not uploads.claim_upload(row.id, "b")  # a is uploading it
    clock.advance(STALE_AFTER_SECONDS - 1)
    assert not uploads.claim_upload(row.id, "b")
    clock.advance(2)  # a has not moved it for STALE_AFTER_SECONDS: it died
    assert uploads.claim_upload(row.id, "b")
    assert state(uploads, row.id) == ("uploading", "b", None)
