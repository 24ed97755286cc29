"""End to end: training data from Slack. The create form is opened and submitted, the uploaded file is
checked line by line from Slack's download, the report offers Start, and Start uploads the file
to OpenAI once and creates the job exactly as `/finetune create` does. Bad files are reported and
nothing is uploaded; `/finetune validate` and `/finetune files` answer for files already in OpenAI.

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
from tests.fakes.signing import sign_slack_request
from tests.harness import SIGNING_SECRET, Harness, all_text, start_bot


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
    body = FakeSlack.block_actions_form(payload)
    response = httpx.post(
        f"{h.bot.url}/slack/events",
        content=body,
        headers=sign_slack_request(body, SIGNING_SECRET),
        timeout=10,
    )
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


def test_a_bad_file_is_reported_by_line_and_nothing_is_uploaded(h: Harness) -> None:
    rows = [example(i) for i in range(12)]
    rows[3] = {"messages": [{"role": "user", "content": "no answer <!channel>"}]}
    data = jsonl(rows) + b"{not json\n"
    view = open_form(h)
    file = h.slack.add_file("bad.jsonl", data, channel="C123")
    submit(h, view, {modal.TRAINING_UPLOAD: file})
    report = report_message(h, "must be fixed")
    text = all_text({"b": report.blocks})
    assert "4" in text and "13" in text  # the line numbers of the problems
    assert "<!channel>" not in json.dumps(report.blocks)
    assert start_value(report) is None
    control = h.control()
    assert h.openai_requests_besides(control) == [] or all(
        r.method == "GET" for r in h.openai_requests_besides(control)
    )
    assert h.openai.uploads == []


@pytest.mark.parametrize("case", ["not jsonl", "deleted", "no access"])
def test_a_file_that_cannot_be_read_or_is_not_jsonl_gets_a_clear_answer(h: Harness, case: str) -> None:
    view = open_form(h)
    content = b"a,b,c\n1,2,3\n" if case == "not jsonl" else GOOD
    file = h.slack.add_file("train.jsonl", content, channel="C123", visible=case != "no access")
    if case == "deleted":
        h.slack.delete_file(file["id"])
    submit(h, view, {modal.TRAINING_UPLOAD: file})
    wanted = {"not jsonl": "CSV", "deleted": "gone", "no access": "share"}[case]
    message = h.slack.wait_for(
        lambda s: next(
            (m for m in s.messages_in("C123") if wanted.lower() in all_text({"b": m.blocks}).lower()), None
        ),
        timeout=30,
        message=f"an answer mentioning {wanted!r}",
    )
    assert start_value(message) is None and h.openai.uploads == []


def test_a_lost_upload_answer_is_found_by_name_not_sent_twice(h: Harness) -> None:
    view = open_form(h)
    file = h.slack.add_file("train.jsonl", GOOD, channel="C123")
    submit(h, view, {modal.TRAINING_UPLOAD: file})
    report = report_message(h, "Ready")
    # OpenAI takes the file, then the connection drops before its answer.
    h.openai.fail_next(path="/files", method="POST", kind="close", processed=True)
    click_start(h, str(start_value(report)), report.ts)
    h.openai.wait_for(lambda o: o.jobs, timeout=30)
    [upload] = h.openai.uploads
    [job] = h.openai.jobs.values()
    assert job["training_file"] == upload.file_id


def test_an_oversized_file_is_refused_before_any_download(
    fake_openai: FakeOpenAI, fake_slack: FakeSlack, tmp_path: Path
) -> None:
    bot = start_bot(fake_openai, fake_slack, tmp_path, FINETUNE_MAX_UPLOAD_MB="1")
    h = Harness(bot, fake_openai, fake_slack)
    try:
        view = open_form(h)
        file = fake_slack.add_file("big.jsonl", GOOD, channel="C123")
        fake_slack.serve_large_file(file["id"], 3_000_000)
        submit(h, view, {modal.TRAINING_UPLOAD: file})
        fake_slack.wait_for(
            lambda s: any("limit" in all_text({"b": m.blocks}) for m in s.messages_in("C123")), timeout=30
        )
        assert fake_slack.downloads_of(file["id"]) == []
    finally:
        assert bot.stop() == 0, bot.logs


def test_validate_and_files_answer_for_files_already_in_openai(h: Harness) -> None:
    good = h.openai.add_file("good.jsonl", GOOD)
    bad = h.openai.add_file("bad.jsonl", jsonl([example(i) for i in range(3)]))
    _, key = h.command(f"validate {good['id']}")
    assert "Ready" in all_text(h.reply(key, timeout=30))
    _, key = h.command(f"validate {bad['id']} model=gpt-4o-2024-08-06")
    text = all_text(h.reply(key, timeout=30))
    assert "10" in text and "must be fixed" in text  # under OpenAI's minimum of 10 examples
    _, key = h.command("files")
    text = all_text(h.reply(key, timeout=15))
    assert good["id"] in text and bad["id"] in text
    # Bad input is answered in the acknowledgement itself; nothing reaches OpenAI.
    response, _ = h.command("validate file-../../etc")
    assert "not a file id" in response.text


@pytest.mark.parametrize("case", ["download 503", "no files:read"])
def test_slack_refusing_the_file_gets_a_clear_answer(h: Harness, case: str) -> None:
    view = open_form(h)
    file = h.slack.add_file("train.jsonl", GOOD, channel="C123")
    if case == "download 503":
        h.slack.fail_next("download", status=503, times=1)
        wanted = "try again"
    else:
        h.slack.revoke_scope("files:read")
        wanted = "files:read"
    submit(h, view, {modal.TRAINING_UPLOAD: file})
    message = h.slack.wait_for(
        lambda s: next((m for m in s.messages_in("C123") if wanted in all_text({"b": m.blocks})), None),
        timeout=30,
        message=f"an answer mentioning {wanted!r}",
    )
    assert "Could not check" in all_text({"b": message.blocks}) and h.openai.uploads == []


def test_an_upload_openai_keeps_refusing_starts_nothing_and_start_works_later(h: Harness) -> None:
    view = open_form(h)
    file = h.slack.add_file("train.jsonl", GOOD, channel="C123")
    submit(h, view, {modal.TRAINING_UPLOAD: file})
    report = report_message(h, "Ready")
    value = str(start_value(report))
    h.openai.fail_next(path="/files", method="POST", status=500, times=3)
    key = click_start(h, value, report.ts)
    text = all_text(h.reply(key, timeout=60))
    assert "upload to OpenAI failed" in text and "Nothing was started" in text
    assert h.openai.jobs == {}
    # The report offers Start again; this time OpenAI takes it.
    again = report_message(h, "last upload to OpenAI failed")
    assert start_value(again) == value
    click_start(h, value, report.ts)
    h.openai.wait_for(lambda o: o.jobs, timeout=30)
    assert len(h.openai.jobs) == 1 and len(h.openai.uploads) == 1


def test_the_openai_file_menu_lists_and_filters_fine_tune_files(h: Harness) -> None:
    h.openai.add_file("support-v1.jsonl", GOOD)
    h.openai.add_file("sales.jsonl", GOOD)
    view = open_form(h)
    payload = h.slack.block_suggestion_payload(
        modal.OPENAI_FILE_ACTION, "SUPPORT", block_id=modal.TRAINING_OPENAI, view=view
    )
    response = h.interact(payload)
    assert response.status_code == 200
    options = response.json()["options"]
    assert [o["text"]["text"].split(" · ")[0] for o in options] == ["support-v1.jsonl"]


def test_a_create_openai_refuses_after_the_upload_leaves_start_for_another_try(h: Harness) -> None:
    view = open_form(h)
    file = h.slack.add_file("train.jsonl", GOOD, channel="C123")
    submit(h, view, {modal.TRAINING_UPLOAD: file})
    report = report_message(h, "Ready")
    value = str(start_value(report))
    h.openai.fail_next(
        400,
        path="/fine_tuning/jobs",
        method="POST",
        body={"error": {"message": "Quota exceeded for this project.", "type": "invalid_request_error"}},
    )
    key = click_start(h, value, report.ts)
    assert "Quota exceeded" in all_text(h.reply(key, timeout=30))
    assert h.openai.jobs == {} and len(h.openai.uploads) == 1
    again = report_message(h, "nothing was started")
    assert start_value(again) == value
    click_start(h, value, report.ts)
    h.openai.wait_for(lambda o: o.jobs, timeout=30)
    # The file already in OpenAI was used: still one upload.
    assert len(h.openai.jobs) == 1 and len(h.openai.uploads) == 1
