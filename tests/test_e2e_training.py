"""End to end: training data from Slack. The create form is opened and submitted, the uploaded file is
checked line by line from Slack's download, the report offers Start, and Start uploads the file
to OpenAI once and creates the job exactly as `/finetune create` does. Bad files are reported and
nothing is uploaded; `/finetune validate` and `/finetune files` answer for files already in OpenAI.

Here a real process goes the whole way once, its logs scanned for secrets. Bad, unreadable and
oversized files, Slack refusing the download, OpenAI refusing or losing the upload or the create,
`validate`, `files` and the file menu are shown in-process in tests/test_inprocess_training.py.

The fake Slack serves `views.open`, `files.info` and `url_private_download`, and accepts
view_submission and block_actions payloads; the fake OpenAI takes multipart `POST /files` as the
spec says and records what was uploaded.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bot import modal
from tests.fakes import FakeOpenAI, FakeSlack
from tests.harness import Harness, all_text, start_bot


@pytest.fixture
def h(fake_openai: FakeOpenAI, fake_slack: FakeSlack, tmp_path: Path) -> Iterator[Harness]:
    fake_openai.idempotent_uploads = False  # the bot must not rely on OpenAI de-duplicating uploads
    bot = start_bot(fake_openai, fake_slack, tmp_path, POLL_INTERVAL_SECONDS="1")
    harness = Harness(bot, fake_openai, fake_slack)
    try:
        yield harness
    finally:
        assert bot.stop() == 0, bot.logs
    harness.assert_no_secrets()
    assert fake_openai.schema_errors == []


def example(i: int) -> dict[str, Any]:
    return {
        "messages": [
            {"role": "system", "content": "You answer in one word."},
            {"role": "user", "content": f"Question number {i}?"},
            {"role": "assistant", "content": f"Answer{i}"},
        ]
    }


def jsonl(rows: list[Any]) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


GOOD = jsonl([example(i) for i in range(20)])


def open_form(h: Harness) -> dict[str, Any]:
    response, _ = h.command("create")
    assert response.status_code == 200
    [opened] = h.slack.wait_for(lambda s: [v for v in s.views if v.ok], timeout=10)
    assert opened.view["callback_id"] == modal.CREATE_VIEW_CALLBACK
    return h.slack.view(opened.view_id)


def submit(h: Harness, view: dict[str, Any], values: dict[str, Any]) -> httpx.Response:
    payload = h.slack.view_submission_payload(view, values)
    response = h.interact(payload)
    assert response.status_code == 200, response.text
    return response


def click_start(h: Harness, value: str, ts: str, user_id: str = "U123") -> str:
    key = uuid.uuid4().hex
    payload = h.slack.block_actions_payload(
        "training_start",
        value,
        user_id=user_id,
        message_ts=ts,
        block_id="training_actions",
        response_url=h.slack.response_url(key),
    )
    response = h.interact(payload)
    assert response.status_code == 200, response.text
    return key


def report_message(h: Harness, text: str) -> Any:
    """The "Checking…" message once it has become a report containing `text`."""
    return h.slack.wait_for(
        lambda s: next(
            (
                m
                for m in s.messages_in("C123")
                if "Checking" not in (m.text or "") and text in all_text({"b": m.blocks})
            ),
            None,
        ),
        timeout=30,
        message=f"a training report saying {text!r}",
    )


def start_value(message: Any) -> str | None:
    for block in message.blocks or []:
        for element in block.get("elements", []):
            if element.get("action_id") == "training_start":
                return str(element["value"])
    return None


def test_form_upload_check_start_uploads_once_and_creates_the_job(h: Harness) -> None:
    view = open_form(h)
    file = h.slack.add_file("train.jsonl", GOOD, channel="C123")
    submit(h, view, {modal.TRAINING_UPLOAD: file, modal.SUFFIX: "support", modal.EPOCHS: "3"})
    # "Checking `train.jsonl`…" first, in the channel the form was opened from; then the report.
    h.slack.wait_for(lambda s: any("Checking" in (m.text or "") for m in s.messages_in("C123")), timeout=10)
    report = report_message(h, "Ready")
    text = all_text({"b": report.blocks})
    assert "20 examples" in text and "$" in text and "estimate" in text.lower()
    value = start_value(report)
    assert value is not None
    assert h.openai.uploads == [] and h.openai.jobs == {}  # nothing leaves before Start

    key = click_start(h, value, report.ts)
    h.openai.wait_for(lambda o: o.jobs, timeout=30)
    [upload] = h.openai.uploads
    assert upload.data == GOOD and upload.filename.startswith("train.") and upload.purpose == "fine-tune"
    [job] = h.openai.jobs.values()
    assert job["training_file"] == upload.file_id
    assert job["method"]["supervised"]["hyperparameters"]["n_epochs"] == 3
    # Announced with its live card, like any create; the report says it started.
    h.slack.wait_for(lambda s: any(job["id"] in (m.text or "") for m in s.messages_in("C123")), timeout=15)
    report_message(h, job["id"])
    assert h.slack.downloads_of(file["id"])  # read from Slack with the bot token
    assert h.slack.responses_for(key) == []  # the announcement says it all: no private answer

    # Start again (a double click, another person): nothing more is sent or started.
    again = click_start(h, value, report.ts)
    assert "already started" in all_text(h.reply(again, timeout=15))
    stranger = click_start(h, value, report.ts, user_id="U999")
    h.reply(stranger, timeout=15)
    assert len(h.openai.uploads) == 1 and len(h.openai.jobs) == 1
