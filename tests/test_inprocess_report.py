"""The completion report (chart and scorecard) in this test's event loop, on a fake clock
(tests/inprocess.py): where the numbers come from, how it degrades to the numbers alone when the
picture cannot be made or posted, its retries and `/finetune report`, without waiting for poll
cycles or backoffs. The chart is drawn by the production renderer, in a real worker process.

What needs a real process stays in tests/test_e2e_report.py: the happy path end to end, and a
SIGKILL between the upload and the share.

The fake OpenAI serves result files and checkpoints as the spec says; the fake Slack implements the
three-step upload (files.getUploadURLExternal → POST the bytes → files.completeUploadExternal) and
records the bytes, so the PNG checked here is the one Slack would have shown.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from bot.chart_renderer import ChartRenderer
from tests.bot_process import BOT_TOKEN, OPENAI_KEY, SIGNING_SECRET
from tests.fakes import FakeOpenAI, FakeSlack
from tests.fakes.slack import RecordedMessage
from tests.harness import all_text
from tests.inprocess import InProcessBot
from tests.test_inprocess_lifecycle import outcomes, start_job

# Past any report backoff (at most 10 minutes) and any outbox retry.
PAST_ANY_BACKOFF = 10 * 60 + 1


def result_csv(steps: int = 60, *, validation: bool = True) -> str:
    lines = ["step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy"]
    for step in range(1, steps + 1):
        train = 2.0 / (1 + step / 10)
        valid = f"{train + 0.05:.4f}" if validation and step % 10 == 0 else ""
        accuracy = f"{min(0.99, 0.5 + step / (2 * steps)):.4f}"
        lines.append(f"{step},{train:.4f},{accuracy},{valid},{accuracy if valid else ''}")
    return "\n".join(lines) + "\n"


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", data[:16]
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def report_messages(slack: FakeSlack, job_id: str) -> list[RecordedMessage]:
    """Reports posted as text alone (metadata carries the report's own key)."""
    return [
        m
        for m in slack.messages
        if (m.params.get("metadata") or {}).get("event_type") == "finetune_report"
        and job_id in str((m.params["metadata"].get("event_payload") or {}).get("key", ""))
    ]


def succeed_with_metrics(openai: FakeOpenAI, job_id: str, *, validation: bool = True) -> str:
    file_id = openai.add_result_file(job_id, result_csv(validation=validation))
    openai.add_checkpoint(job_id, 30, metrics={"step": 30.0, "train_loss": 0.5, "valid_loss": 0.61})
    openai.add_checkpoint(job_id, 60, metrics={"step": 60.0, "train_loss": 0.29, "valid_loss": 0.55})
    openai.set_status(job_id, "succeeded", result_files=[file_id])
    return file_id


class ModuleRenderer(ChartRenderer):
    """One chart worker for the whole module: spawning it (and importing matplotlib there) costs
    about two seconds, more than most tests here. Bots stopping leave it running; the module's
    fixture stops it."""

    def close(self) -> None:
        pass

    def shut_down(self) -> None:
        super().close()


@pytest.fixture(scope="module")
def renderer() -> Iterator[ModuleRenderer]:
    renderer = ModuleRenderer()
    yield renderer
    renderer.shut_down()


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO)
    return caplog


@pytest.fixture
async def bot(
    fake_openai: FakeOpenAI,
    fake_slack: FakeSlack,
    tmp_path: Path,
    renderer: ModuleRenderer,
    logs: pytest.LogCaptureFixture,
) -> AsyncIterator[InProcessBot]:
    bot = InProcessBot(fake_openai, fake_slack, tmp_path, renderer=renderer)
    yield bot
    await bot.stop()
    assert_nothing_leaked(bot, logs)


def assert_nothing_leaked(bot: InProcessBot, logs: pytest.LogCaptureFixture) -> None:
    """No secret in what the bot logged or sent to Slack, and no traceback in its log."""
    everything = logs.text + repr([c.params for c in bot.slack.calls])
    everything += repr([r.json for r in bot.slack.responses])
    for secret in (OPENAI_KEY, BOT_TOKEN, SIGNING_SECRET):
        assert secret not in everything
    assert [r.getMessage() for r in logs.records if r.exc_info] == []


async def test_base64_result_file_and_events_fallback(bot: InProcessBot) -> None:
    """A result file served base64-encoded is decoded; without one, the metrics events are used."""
    first, _ = await start_job(bot)
    file_id = bot.openai.add_result_file(first, result_csv(), base64_encoded=True)
    bot.openai.set_status(first, "succeeded", result_files=[file_id])
    await bot.cycle()
    [upload] = bot.slack.uploads
    assert "step 60" in (upload.initial_comment or "").replace(",", "")

    second, announcement = await start_job(bot)
    bot.openai.add_metrics_events(
        second, [{"step": s, "train_loss": 1.0 / s, "total_steps": 150} for s in range(1, 151)]
    )
    bot.openai.set_status(second, "succeeded")  # no result file at all
    await bot.cycle()
    assert len(bot.slack.uploads) == 2
    upload = bot.slack.uploads[1]
    assert upload.thread_ts == announcement.ts and second in (upload.initial_comment or "")
    assert "150" in (upload.initial_comment or "")


async def test_result_file_missing_and_no_events_gives_the_scorecard_text(bot: InProcessBot) -> None:
    job_id, announcement = await start_job(bot)
    bot.openai.add_checkpoint(job_id, 40, metrics={"step": 40.0, "train_loss": 0.4, "valid_loss": 0.47})
    bot.openai.set_status(job_id, "succeeded", result_files=["file-doesnotexist123"])
    await bot.cycle()
    [message] = report_messages(bot.slack, job_id)
    assert message.thread_ts == announcement.ts
    assert "ckpt-step-40" in all_text({"t": message.text}) and "No step metrics" in (message.text or "")
    assert bot.slack.uploads == []
    assert len(outcomes(bot.slack, job_id)) == 1


async def test_nothing_to_report_posts_nothing_more(bot: InProcessBot) -> None:
    job_id, announcement = await start_job(bot)
    bot.openai.set_status(job_id, "cancelled")
    await bot.cycle()
    assert len(outcomes(bot.slack, job_id)) == 1
    await bot.cycle(3)
    assert bot.slack.uploads == [] and report_messages(bot.slack, job_id) == []
    replies = [m for m in bot.slack.messages_in("C123", announcement.ts) if m.ts != announcement.ts]
    assert replies == outcomes(bot.slack, job_id)


async def test_failure_with_metrics_gets_the_numbers_so_far(bot: InProcessBot) -> None:
    job_id, announcement = await start_job(bot)
    bot.openai.add_metrics_events(job_id, [{"step": s, "train_loss": 3.0 - s / 100} for s in range(1, 41)])
    bot.openai.set_status(job_id, "failed")
    await bot.cycle()
    [upload] = bot.slack.uploads
    assert upload.thread_ts == announcement.ts and "2.6" in (upload.initial_comment or "")


async def test_without_files_write_the_numbers_go_alone_and_say_why(bot: InProcessBot) -> None:
    bot.slack.revoke_scope("files:write")
    job_id, announcement = await start_job(bot)
    succeed_with_metrics(bot.openai, job_id)
    await bot.cycle()
    [message] = report_messages(bot.slack, job_id)
    assert message.thread_ts == announcement.ts and "files:write" in (message.text or "")
    assert "Training loss" in (message.text or "")
    await bot.cycle(2)
    assert len(report_messages(bot.slack, job_id)) == 1 and bot.slack.uploads == []


async def test_a_failing_upload_is_retried_and_the_outcome_never_waits(bot: InProcessBot) -> None:
    bot.slack.fail_next("upload", status=500, times=2)
    job_id, announcement = await start_job(bot)
    succeed_with_metrics(bot.openai, job_id)
    await bot.cycle()
    # The outcome went at once; the report's upload failed and the report was deferred.
    assert len(outcomes(bot.slack, job_id)) == 1
    assert len(bot.slack.calls_to("files.getUploadURLExternal")) == 1 and bot.slack.uploads == []
    for tries in (2, 3):
        await bot.cycle()  # not due yet: nothing is tried
        assert len(bot.slack.calls_to("files.getUploadURLExternal")) == tries - 1
        bot.clock.advance(PAST_ANY_BACKOFF)
        await bot.cycle()
        assert len(bot.slack.calls_to("files.getUploadURLExternal")) == tries
    [upload] = bot.slack.uploads
    assert upload.data[:4] == b"\x89PNG" and upload.thread_ts == announcement.ts
    assert len(outcomes(bot.slack, job_id)) == 1 and report_messages(bot.slack, job_id) == []


async def test_report_command_on_a_running_job_posts_the_chart_so_far(bot: InProcessBot) -> None:
    job_id, announcement = await start_job(bot)
    bot.openai.set_status(job_id, "running")
    bot.openai.add_metrics_events(
        job_id, [{"step": s, "train_loss": 2.0 - s / 50, "total_steps": 90} for s in range(1, 31)]
    )
    response, key = await bot.command(f"report {job_id}")
    assert response.status_code == 200
    reply = await bot.reply(key)
    assert "Posted the report" in all_text(reply) and "thread" in all_text(reply)
    [upload] = bot.slack.uploads
    assert upload.thread_ts == announcement.ts
    assert "so far" in (upload.initial_comment or "") and "<@U123>" in (upload.initial_comment or "")


async def test_report_command_elsewhere_posts_in_the_channel_or_answers_privately(bot: InProcessBot) -> None:
    job = bot.openai.add_job(status="running")
    bot.openai.add_metrics_events(job["id"], [{"step": s, "train_loss": 1.0} for s in range(1, 5)])
    _, key = await bot.command(f"chart {job['id']}", channel_id="C777")
    assert "in this channel" in all_text(await bot.reply(key))
    [upload] = bot.slack.uploads
    assert upload.channel == "C777" and upload.thread_ts is None
    # No metrics yet: nothing is posted; the asker alone hears what there is.
    quiet = bot.openai.add_job(status="queued")
    _, key = await bot.command(f"report {quiet['id']}", channel_id="C777")
    text = all_text(await bot.reply(key))
    assert "No step metrics" in text and len(bot.slack.uploads) == 1


async def test_a_renderer_that_dies_leaves_the_numbers_alone_in_the_thread(
    fake_openai: FakeOpenAI,
    fake_slack: FakeSlack,
    tmp_path: Path,
    logs: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The chart worker process is SIGKILLed mid-render (FINETUNE_CRASH_AT=chart_worker, read by
    the worker, which inherits this process' environment when it is spawned): the bot lives on,
    and the thread gets the scorecard saying the chart could not be drawn."""
    monkeypatch.setenv("FINETUNE_CRASH_AT", "chart_worker")
    renderer = ChartRenderer()  # its own worker, spawned with the variable set
    bot = InProcessBot(fake_openai, fake_slack, tmp_path, renderer=renderer)
    try:
        job_id, announcement = await start_job(bot)
        succeed_with_metrics(fake_openai, job_id)
        await bot.cycle()
        [message] = report_messages(fake_slack, job_id)
        assert message.thread_ts == announcement.ts
        assert "could not be drawn" in (message.text or "") and "Training loss" in (message.text or "")
        assert fake_slack.uploads == [] and len(outcomes(fake_slack, job_id)) == 1
        assert "the chart worker process died" in logs.text
        # The next job's chart is tried again with a new worker (which dies the same way here).
        deaths = logs.text.count("the chart worker process died")
        second, _ = await start_job(bot)
        succeed_with_metrics(fake_openai, second)
        await bot.cycle()
        assert len(report_messages(fake_slack, second)) == 1
        assert logs.text.count("the chart worker process died") > deaths
    finally:
        await bot.stop()
    assert_nothing_leaked(bot, logs)


async def test_a_huge_result_file_is_not_read_whole_and_the_events_stand_in(
    bot: InProcessBot, logs: pytest.LogCaptureFixture
) -> None:
    job_id, announcement = await start_job(bot)
    file_id = bot.openai.add_result_file(job_id, result_csv())
    bot.openai.serve_large_content(file_id, 50 * 1024 * 1024, content_length=False)
    bot.openai.add_metrics_events(job_id, [{"step": s, "train_loss": 1.5 - s / 100} for s in range(1, 81)])
    bot.openai.set_status(job_id, "succeeded", result_files=[file_id])
    await bot.cycle()
    assert len(outcomes(bot.slack, job_id)) == 1
    [upload] = bot.slack.uploads
    assert upload.thread_ts == announcement.ts and "0.700" in (upload.initial_comment or "")
    assert "too large" in logs.text


async def test_a_channel_that_refuses_the_file_still_gets_the_numbers(bot: InProcessBot) -> None:
    """Sharing a file needs membership (chat:write.public is not enough): the numbers still go."""
    job_id, announcement = await start_job(bot)
    bot.slack.fail_next("files.completeUploadExternal", error="not_in_channel")
    succeed_with_metrics(bot.openai, job_id)
    await bot.cycle()
    [message] = report_messages(bot.slack, job_id)
    assert message.thread_ts == announcement.ts and "/invite" in (message.text or "")
    assert "Training loss" in (message.text or "") and bot.slack.uploads == []


async def test_openai_failing_while_the_report_is_made_delays_it_and_it_comes_later(
    bot: InProcessBot, logs: pytest.LogCaptureFixture
) -> None:
    """OpenAI 500s outlive the client's retries while the report gathers its numbers: the report
    is deferred (with backoff), never lost, and the outcome is not held up."""
    job_id, announcement = await start_job(bot)
    checkpoints = rf"/fine_tuning/jobs/{job_id}/checkpoints"
    bot.openai.fail_next(500, path=checkpoints, method="GET", times=3)
    succeed_with_metrics(bot.openai, job_id)
    await bot.cycle()
    assert len(outcomes(bot.slack, job_id)) == 1 and bot.slack.uploads == []
    assert len(bot.openai.requests_to(checkpoints, "GET")) == 3  # the client's own retries, all failed
    assert "will retry" in logs.text
    await bot.cycle()  # not due yet: OpenAI is not asked again
    assert len(bot.openai.requests_to(checkpoints, "GET")) == 3 and bot.slack.uploads == []
    bot.clock.advance(PAST_ANY_BACKOFF)
    await bot.cycle()
    [upload] = bot.slack.uploads
    assert upload.thread_ts == announcement.ts
    assert len(outcomes(bot.slack, job_id)) == 1 and report_messages(bot.slack, job_id) == []
