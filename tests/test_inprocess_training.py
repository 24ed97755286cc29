"""Training data from Slack, in this test's event loop (tests/inprocess.py): the create form's file
checked line by line, bad and unreadable files answered, Start's upload retried or found by name
but never sent twice, and `/finetune validate` / `files` for files already in OpenAI.

The requests go through the real signature check and Bolt listeners; the bot's calls go over real
HTTP to the fake Slack (views.open, files.info, url_private_download) and the fake OpenAI
(multipart `POST /files`, checked against the spec). Retry backoffs run on the fake clock, and
`settle` waits for the lazy listeners instead of polling for their messages. The whole path in a
real process (form, check, Start, one upload, one job, its secret scan over the process' logs)
stays end to end in tests/test_e2e_training.py.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bot import modal
from tests.bot_process import BOT_TOKEN, OPENAI_KEY, SIGNING_SECRET
from tests.fakes import FakeOpenAI, FakeSlack
from tests.fakes.slack import RecordedMessage
from tests.harness import all_text
from tests.inprocess import InProcessBot
from tests.test_e2e_training import GOOD, example, jsonl, start_value


@pytest.fixture
async def bot(
    fake_openai: FakeOpenAI, fake_slack: FakeSlack, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> AsyncIterator[InProcessBot]:
    caplog.set_level(logging.INFO)  # as the bot logs by default (LOG_LEVEL)
    fake_openai.idempotent_uploads = False  # the bot must not rely on OpenAI de-duplicating uploads
    bot = InProcessBot(fake_openai, fake_slack, tmp_path, POLL_INTERVAL_SECONDS="1")
    yield bot
    await bot.stop()
    assert_no_secrets(bot.slack, caplog)


def assert_no_secrets(slack: FakeSlack, caplog: pytest.LogCaptureFixture) -> None:
    """Nothing the bot logged during the test, sent to Slack or answered carries a secret."""
    records = [*caplog.get_records("setup"), *caplog.get_records("call"), *caplog.records]
    logged = "\n".join(caplog.handler.format(record) for record in records)
    everything = logged + repr([c.params for c in slack.calls]) + repr([r.json for r in slack.responses])
    for secret in (OPENAI_KEY, BOT_TOKEN, SIGNING_SECRET):
        assert secret not in everything, f"a secret ({secret[:8]}…) was logged or sent to Slack"


async def open_form(bot: InProcessBot) -> dict[str, Any]:
    response, _ = await bot.command("create")
    assert response.status_code == 200
    await bot.settle()
    [opened] = [v for v in bot.slack.views if v.ok]
    assert opened.view["callback_id"] == modal.CREATE_VIEW_CALLBACK
    return bot.slack.view(opened.view_id)


async def submit(bot: InProcessBot, view: dict[str, Any], values: dict[str, Any]) -> httpx.Response:
    """Submit the form, and wait for what it set going (the check, its report)."""
    response = await bot.interact(bot.slack.view_submission_payload(view, values))
    assert response.status_code == 200, response.text
    await bot.settle()
    return response


async def click_start(bot: InProcessBot, value: str, ts: str, user_id: str = "U123") -> str:
    """Click Start on the report `ts`; returns the key of the click's response_url. Waits for
    what the click set going (upload, create, announcement)."""
    return await bot.click(
        "training_start", value, user_id=user_id, message_ts=ts, block_id="training_actions"
    )


def message_saying(bot: InProcessBot, text: str, *, case: bool = True) -> RecordedMessage:
    """The message in C123 (a report, not "Checking…") whose blocks say `text`."""
    found = [
        m
        for m in bot.slack.messages_in("C123")
        if "Checking" not in (m.text or "")
        and (text in all_text({"b": m.blocks}) if case else text.lower() in all_text({"b": m.blocks}).lower())
    ]
    assert found, f"no message in C123 says {text!r}: {[m.text for m in bot.slack.messages_in('C123')]}"
    return found[0]


async def test_a_bad_file_is_reported_by_line_and_nothing_is_uploaded(bot: InProcessBot) -> None:
    rows = [example(i) for i in range(12)]
    rows[3] = {"messages": [{"role": "user", "content": "no answer <!channel>"}]}
    data = jsonl(rows) + b"{not json\n"
    view = await open_form(bot)
    file = bot.slack.add_file("bad.jsonl", data, channel="C123")
    await submit(bot, view, {modal.TRAINING_UPLOAD: file})
    report = message_saying(bot, "must be fixed")
    text = all_text({"b": report.blocks})
    assert "4" in text and "13" in text  # the line numbers of the problems
    assert "<!channel>" not in json.dumps(report.blocks)
    assert start_value(report) is None
    # Everything the submission set going has finished (settle): OpenAI was at most read.
    assert all(r.method == "GET" for r in bot.openai.requests)
    assert bot.openai.uploads == []


@pytest.mark.parametrize("case", ["not jsonl", "deleted", "no access"])
async def test_a_file_that_cannot_be_read_or_is_not_jsonl_gets_a_clear_answer(
    bot: InProcessBot, case: str
) -> None:
    view = await open_form(bot)
    content = b"a,b,c\n1,2,3\n" if case == "not jsonl" else GOOD
    file = bot.slack.add_file("train.jsonl", content, channel="C123", visible=case != "no access")
    if case == "deleted":
        bot.slack.delete_file(file["id"])
    await submit(bot, view, {modal.TRAINING_UPLOAD: file})
    wanted = {"not jsonl": "CSV", "deleted": "gone", "no access": "share"}[case]
    message = message_saying(bot, wanted, case=False)
    assert start_value(message) is None and bot.openai.uploads == []


async def test_a_lost_upload_answer_is_found_by_name_not_sent_twice(bot: InProcessBot) -> None:
    view = await open_form(bot)
    file = bot.slack.add_file("train.jsonl", GOOD, channel="C123")
    await submit(bot, view, {modal.TRAINING_UPLOAD: file})
    report = message_saying(bot, "Ready")
    # OpenAI takes the file, then the connection drops before its answer.
    bot.openai.fail_next(path="/files", method="POST", kind="close", processed=True)
    await click_start(bot, str(start_value(report)), report.ts)
    [upload] = bot.openai.uploads
    [job] = bot.openai.jobs.values()
    assert job["training_file"] == upload.file_id


async def test_an_oversized_file_is_refused_before_any_download(
    fake_openai: FakeOpenAI, fake_slack: FakeSlack, tmp_path: Path
) -> None:
    bot = InProcessBot(fake_openai, fake_slack, tmp_path, FINETUNE_MAX_UPLOAD_MB="1")
    try:
        view = await open_form(bot)
        file = fake_slack.add_file("big.jsonl", GOOD, channel="C123")
        fake_slack.serve_large_file(file["id"], 3_000_000)
        await submit(bot, view, {modal.TRAINING_UPLOAD: file})
        message_saying(bot, "limit")
        assert fake_slack.downloads_of(file["id"]) == []
    finally:
        await bot.stop()


async def test_validate_and_files_answer_for_files_already_in_openai(bot: InProcessBot) -> None:
    good = bot.openai.add_file("good.jsonl", GOOD)
    bad = bot.openai.add_file("bad.jsonl", jsonl([example(i) for i in range(3)]))
    _, key = await bot.command(f"validate {good['id']}")
    assert "Ready" in all_text(await bot.reply(key))
    _, key = await bot.command(f"validate {bad['id']} model=gpt-4o-2024-08-06")
    text = all_text(await bot.reply(key))
    assert "10" in text and "must be fixed" in text  # under OpenAI's minimum of 10 examples
    _, key = await bot.command("files")
    text = all_text(await bot.reply(key))
    assert good["id"] in text and bad["id"] in text
    # Bad input is answered in the acknowledgement itself; nothing reaches OpenAI.
    requests = len(bot.openai.requests)
    response, key = await bot.command("validate file-../../etc")
    assert "not a file id" in response.text
    await bot.settle()
    assert len(bot.openai.requests) == requests and bot.slack.responses_for(key) == []


@pytest.mark.parametrize("case", ["download 503", "no files:read"])
async def test_slack_refusing_the_file_gets_a_clear_answer(bot: InProcessBot, case: str) -> None:
    view = await open_form(bot)
    file = bot.slack.add_file("train.jsonl", GOOD, channel="C123")
    if case == "download 503":
        bot.slack.fail_next("download", status=503, times=1)
        wanted = "try again"
    else:
        bot.slack.revoke_scope("files:read")
        wanted = "files:read"
    await submit(bot, view, {modal.TRAINING_UPLOAD: file})
    message = message_saying(bot, wanted)
    assert "Could not check" in all_text({"b": message.blocks}) and bot.openai.uploads == []


async def test_an_upload_openai_keeps_refusing_starts_nothing_and_start_works_later(
    bot: InProcessBot,
) -> None:
    view = await open_form(bot)
    file = bot.slack.add_file("train.jsonl", GOOD, channel="C123")
    await submit(bot, view, {modal.TRAINING_UPLOAD: file})
    report = message_saying(bot, "Ready")
    value = str(start_value(report))
    bot.openai.fail_next(path="/files", method="POST", status=500, times=3)
    sleeps = len(bot.clock.sleeps)
    key = await click_start(bot, value, report.ts)
    text = all_text(await bot.reply(key))
    assert "upload to OpenAI failed" in text and "Nothing was started" in text
    assert bot.openai.jobs == {}
    # Between the three tries, backoffs: on the clock, not in wall time.
    assert len(bot.openai.requests_to("/files", "POST")) == 3 and len(bot.clock.sleeps) - sleeps >= 2
    # The report offers Start again; this time OpenAI takes it.
    again = message_saying(bot, "last upload to OpenAI failed")
    assert start_value(again) == value
    await click_start(bot, value, report.ts)
    assert len(bot.openai.jobs) == 1 and len(bot.openai.uploads) == 1


async def test_the_openai_file_menu_lists_and_filters_fine_tune_files(bot: InProcessBot) -> None:
    bot.openai.add_file("support-v1.jsonl", GOOD)
    bot.openai.add_file("sales.jsonl", GOOD)
    view = await open_form(bot)
    payload = bot.slack.block_suggestion_payload(
        modal.OPENAI_FILE_ACTION, "SUPPORT", block_id=modal.TRAINING_OPENAI, view=view
    )
    response = await bot.interact(payload)
    assert response.status_code == 200
    options = response.json()["options"]
    assert [o["text"]["text"].split(" · ")[0] for o in options] == ["support-v1.jsonl"]


async def test_a_create_openai_refuses_after_the_upload_leaves_start_for_another_try(
    bot: InProcessBot,
) -> None:
    view = await open_form(bot)
    file = bot.slack.add_file("train.jsonl", GOOD, channel="C123")
    await submit(bot, view, {modal.TRAINING_UPLOAD: file})
    report = message_saying(bot, "Ready")
    value = str(start_value(report))
    bot.openai.fail_next(
        400,
        path="/fine_tuning/jobs",
        method="POST",
        body={"error": {"message": "Quota exceeded for this project.", "type": "invalid_request_error"}},
    )
    key = await click_start(bot, value, report.ts)
    assert "Quota exceeded" in all_text(await bot.reply(key))
    assert bot.openai.jobs == {} and len(bot.openai.uploads) == 1
    again = message_saying(bot, "nothing was started")
    assert start_value(again) == value
    await click_start(bot, value, report.ts)
    # The file already in OpenAI was used: still one upload.
    assert len(bot.openai.jobs) == 1 and len(bot.openai.uploads) == 1
