"""End to end: the completion report (chart and scorecard) lands in the job's thread, after the
outcome, exactly once — across a SIGKILL between the upload and the share — and degrades to the
numbers alone when the picture cannot be made or posted. `/finetune report` makes one on demand.

The fake OpenAI serves result files and checkpoints as the spec says; the fake Slack implements the
three-step upload (files.getUploadURLExternal → POST the bytes → files.completeUploadExternal) and
records the bytes, so the PNG checked here is the one Slack would have shown.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakes import FakeOpenAI, FakeSlack
from tests.fakes.slack import RecordedMessage
from tests.harness import Harness, all_text, start_bot, wait_until
from tests.test_e2e_exactly_once import wait_killed
from tests.test_e2e_notifications import outcomes, start_job


@pytest.fixture
def h(fake_openai: FakeOpenAI, fake_slack: FakeSlack, tmp_path: Path) -> Iterator[Harness]:
    bot = start_bot(fake_openai, fake_slack, tmp_path, POLL_INTERVAL_SECONDS="1")
    harness = Harness(bot, fake_openai, fake_slack)
    try:
        yield harness
    finally:
        assert bot.stop() == 0, bot.logs
    harness.assert_no_secrets()


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


def report_messages(h: Harness, job_id: str) -> list[RecordedMessage]:
    """Reports posted as text alone (metadata carries the report's own key)."""
    return [
        m
        for m in h.slack.messages
        if (m.params.get("metadata") or {}).get("event_type") == "finetune_report"
        and job_id in str((m.params["metadata"].get("event_payload") or {}).get("key", ""))
    ]


def succeed_with_metrics(h: Harness, job_id: str, **csv_args: bool) -> str:
    file_id = h.openai.add_result_file(job_id, result_csv(**csv_args))  # type: ignore[arg-type]
    h.openai.add_checkpoint(job_id, 30, metrics={"step": 30.0, "train_loss": 0.5, "valid_loss": 0.61})
    h.openai.add_checkpoint(job_id, 60, metrics={"step": 60.0, "train_loss": 0.29, "valid_loss": 0.55})
    h.openai.set_status(job_id, "succeeded", result_files=[file_id])
    return file_id


def test_success_posts_one_chart_with_its_scorecard_in_the_thread_after_the_outcome(h: Harness) -> None:
    job_id, announcement = start_job(h, user_id="U42")
    succeed_with_metrics(h, job_id)
    [outcome] = h.slack.wait_for(lambda s: outcomes(h, job_id), timeout=15)
    [upload] = h.slack.wait_for(lambda s: s.uploads, timeout=30, message="the report's chart")
    assert upload.channel == "C123" and upload.thread_ts == announcement.ts
    width, height = png_size(upload.data)
    assert width >= 1200 and height >= 700
    assert len(upload.data) < 500_000
    # The outcome came first; the chart is a reply in the same thread, after it.
    share = next(m for m in h.slack.messages if m.files and m.ts == upload.ts)
    assert float(share.ts) > float(outcome.ts) and share.thread_ts == announcement.ts
    comment = upload.initial_comment or ""
    assert job_id in comment and "Training loss" in comment and "Validation loss" in comment
    assert "ckpt-step-60" in comment and "best by validation loss" in comment
    # The alt text states the numbers, for screen readers and for notifications.
    final_train_loss = f"{2.0 / (1 + 60 / 10):.3f}"  # result_csv()'s last step
    assert upload.alt_txt and final_train_loss in upload.alt_txt and final_train_loss in comment
    h.wait_poll_cycles(2)  # complete cycles after the report: still one of each
    assert len(h.slack.uploads) == 1 and len(outcomes(h, job_id)) == 1
    assert report_messages(h, job_id) == []


def test_base64_result_file_and_events_fallback(h: Harness) -> None:
    """A result file served base64-encoded is decoded; without one, the metrics events are used."""
    first, _ = start_job(h)
    file_id = h.openai.add_result_file(first, result_csv(), base64_encoded=True)
    h.openai.set_status(first, "succeeded", result_files=[file_id])
    h.slack.wait_for(lambda s: len(s.uploads) == 1, timeout=30)
    assert "step 60" in (h.slack.uploads[0].initial_comment or "").replace(",", "")

    second, announcement = start_job(h)
    h.openai.add_metrics_events(
        second, [{"step": s, "train_loss": 1.0 / s, "total_steps": 150} for s in range(1, 151)]
    )
    h.openai.set_status(second, "succeeded")  # no result file at all
    h.slack.wait_for(lambda s: len(s.uploads) == 2, timeout=30)
    upload = h.slack.uploads[1]
    assert upload.thread_ts == announcement.ts and second in (upload.initial_comment or "")
    assert "150" in (upload.initial_comment or "")


def test_result_file_missing_and_no_events_gives_the_scorecard_text(h: Harness) -> None:
    job_id, announcement = start_job(h)
    h.openai.add_checkpoint(job_id, 40, metrics={"step": 40.0, "train_loss": 0.4, "valid_loss": 0.47})
    h.openai.set_status(job_id, "succeeded", result_files=["file-doesnotexist123"])
    [message] = h.slack.wait_for(lambda s: report_messages(h, job_id), timeout=30)
    assert message.thread_ts == announcement.ts
    assert "ckpt-step-40" in all_text({"t": message.text}) and "No step metrics" in (message.text or "")
    assert h.slack.uploads == []
    assert len(outcomes(h, job_id)) == 1


def test_nothing_to_report_posts_nothing_more(h: Harness) -> None:
    job_id, announcement = start_job(h)
    h.openai.set_status(job_id, "cancelled")
    h.slack.wait_for(lambda s: outcomes(h, job_id), timeout=15)
    h.wait_poll_cycles(3)
    assert h.slack.uploads == [] and report_messages(h, job_id) == []
    assert [m for m in h.slack.messages_in("C123", announcement.ts) if m.ts != announcement.ts] == outcomes(
        h, job_id
    )


def test_failure_with_metrics_gets_the_numbers_so_far(h: Harness) -> None:
    job_id, announcement = start_job(h)
    h.openai.add_metrics_events(job_id, [{"step": s, "train_loss": 3.0 - s / 100} for s in range(1, 41)])
    h.openai.set_status(job_id, "failed")
    [upload] = h.slack.wait_for(lambda s: s.uploads, timeout=30)
    assert upload.thread_ts == announcement.ts and "2.6" in (upload.initial_comment or "")


def test_without_files_write_the_numbers_go_alone_and_say_why(h: Harness) -> None:
    h.slack.revoke_scope("files:write")
    job_id, announcement = start_job(h)
    succeed_with_metrics(h, job_id)
    [message] = h.slack.wait_for(lambda s: report_messages(h, job_id), timeout=30)
    assert message.thread_ts == announcement.ts and "files:write" in (message.text or "")
    assert "Training loss" in (message.text or "")
    h.wait_poll_cycles(2)
    assert len(report_messages(h, job_id)) == 1 and h.slack.uploads == []


def test_a_failing_upload_is_retried_and_the_outcome_never_waits(h: Harness) -> None:
    h.slack.fail_next("upload", status=500, times=2)
    job_id, _ = start_job(h)
    succeed_with_metrics(h, job_id)
    h.slack.wait_for(lambda s: outcomes(h, job_id), timeout=15)
    [upload] = h.slack.wait_for(lambda s: s.uploads, timeout=90, message="the chart after retries")
    assert upload.data[:4] == b"\x89PNG"


@pytest.mark.parametrize("crash_at", ["report_before_share", "report_after_share"])
def test_killed_between_upload_and_share_reports_exactly_once(
    fake_openai: FakeOpenAI, fake_slack: FakeSlack, tmp_path: Path, crash_at: str
) -> None:
    bot = start_bot(fake_openai, fake_slack, tmp_path, POLL_INTERVAL_SECONDS="1", FINETUNE_CRASH_AT=crash_at)
    h = Harness(bot, fake_openai, fake_slack)
    job_id, announcement = start_job(h)
    succeed_with_metrics(h, job_id)
    wait_killed(bot, timeout=40)
    assert len(fake_slack.uploads) == (1 if crash_at == "report_after_share" else 0)
    restarted = start_bot(fake_openai, fake_slack, tmp_path, POLL_INTERVAL_SECONDS="1")
    h.bot = restarted
    try:
        fake_slack.wait_for(lambda s: s.uploads, timeout=30)
        if crash_at == "report_after_share":
            # The restart looked in the thread and found the chart before making another.
            fake_slack.wait_for(lambda s: s.calls_to("conversations.replies"), timeout=15)
        wait_until(
            lambda: (
                "report" in restarted.logs
                and ("already in Slack" in restarted.logs or "posted the report" in restarted.logs)
            ),
            20,
            "the restart to settle the report",
        )
        h.wait_poll_cycles(2)
        [upload] = fake_slack.uploads
        assert upload.thread_ts == announcement.ts
        assert len(outcomes(h, job_id)) == 1 and report_messages(h, job_id) == []
    finally:
        assert restarted.stop() == 0, restarted.logs


def test_report_command_on_a_running_job_posts_the_chart_so_far(h: Harness) -> None:
    job_id, announcement = start_job(h)
    h.openai.set_status(job_id, "running")
    h.openai.add_metrics_events(
        job_id, [{"step": s, "train_loss": 2.0 - s / 50, "total_steps": 90} for s in range(1, 31)]
    )
    response, key = h.command(f"report {job_id}")
    assert response.status_code == 200
    reply = h.reply(key, timeout=30)
    assert "Posted the report" in all_text(reply) and "thread" in all_text(reply)
    [upload] = h.slack.uploads
    assert upload.thread_ts == announcement.ts
    assert "so far" in (upload.initial_comment or "") and "<@U123>" in (upload.initial_comment or "")


def test_report_command_elsewhere_posts_in_the_channel_or_answers_privately(h: Harness) -> None:
    job = h.openai.add_job(status="running")
    h.openai.add_metrics_events(job["id"], [{"step": s, "train_loss": 1.0} for s in range(1, 5)])
    _, key = h.command(f"chart {job['id']}", channel_id="C777")
    assert "in this channel" in all_text(h.reply(key, timeout=30))
    [upload] = h.slack.uploads
    assert upload.channel == "C777" and upload.thread_ts is None
    # No metrics yet: nothing is posted; the asker alone hears what there is.
    quiet = h.openai.add_job(status="queued")
    _, key = h.command(f"report {quiet['id']}", channel_id="C777")
    text = all_text(h.reply(key, timeout=30))
    assert "No step metrics" in text and len(h.slack.uploads) == 1


def test_a_renderer_that_dies_leaves_the_numbers_alone_in_the_thread(
    fake_openai: FakeOpenAI, fake_slack: FakeSlack, tmp_path: Path
) -> None:
    """The chart worker process is SIGKILLed mid-render (FINETUNE_CRASH_AT=chart_worker): the bot
    lives on, and the thread gets the scorecard saying the chart could not be drawn."""
    bot = start_bot(
        fake_openai, fake_slack, tmp_path, POLL_INTERVAL_SECONDS="1", FINETUNE_CRASH_AT="chart_worker"
    )
    h = Harness(bot, fake_openai, fake_slack)
    try:
        job_id, announcement = start_job(h)
        succeed_with_metrics(h, job_id)
        [message] = fake_slack.wait_for(lambda s: report_messages(h, job_id), timeout=30)
        assert message.thread_ts == announcement.ts
        assert "could not be drawn" in (message.text or "") and "Training loss" in (message.text or "")
        assert fake_slack.uploads == [] and len(outcomes(h, job_id)) == 1
        assert bot.process is not None and bot.process.poll() is None
        # The next job's chart is tried again with a new worker (which dies the same way here).
        second, _ = start_job(h)
        succeed_with_metrics(h, second)
        fake_slack.wait_for(lambda s: report_messages(h, second), timeout=30)
    finally:
        assert bot.stop() == 0, bot.logs
    assert "Traceback" not in bot.logs


def test_a_huge_result_file_is_not_read_whole_and_the_events_stand_in(h: Harness) -> None:
    job_id, announcement = start_job(h)
    file_id = h.openai.add_result_file(job_id, result_csv())
    h.openai.serve_large_content(file_id, 50 * 1024 * 1024, content_length=False)
    h.openai.add_metrics_events(job_id, [{"step": s, "train_loss": 1.5 - s / 100} for s in range(1, 81)])
    h.openai.set_status(job_id, "succeeded", result_files=[file_id])
    h.slack.wait_for(lambda s: outcomes(h, job_id), timeout=15)
    [upload] = h.slack.wait_for(lambda s: s.uploads, timeout=30)
    assert upload.thread_ts == announcement.ts and "0.700" in (upload.initial_comment or "")
    assert "too large" in h.bot.logs


def test_a_channel_that_refuses_the_file_still_gets_the_numbers(h: Harness) -> None:
    """Sharing a file needs membership (chat:write.public is not enough): the numbers still go."""
    job_id, announcement = start_job(h)
    h.slack.fail_next("files.completeUploadExternal", error="not_in_channel")
    succeed_with_metrics(h, job_id)
    [message] = h.slack.wait_for(lambda s: report_messages(h, job_id), timeout=30)
    assert message.thread_ts == announcement.ts and "/invite" in (message.text or "")
    assert "Training loss" in (message.text or "") and h.slack.uploads == []


def test_openai_failing_while_the_report_is_made_delays_it_and_it_comes_later(h: Harness) -> None:
    """OpenAI 500s outlive the client's retries while the report gathers its numbers: the report
    is deferred (with backoff), never lost, and the outcome is not held up."""
    job_id, announcement = start_job(h)
    h.openai.fail_next(500, path=rf"/fine_tuning/jobs/{job_id}/checkpoints", method="GET", times=3)
    succeed_with_metrics(h, job_id)
    h.slack.wait_for(lambda s: outcomes(h, job_id), timeout=15)
    [upload] = h.slack.wait_for(lambda s: s.uploads, timeout=60, message="the report after the retry")
    assert upload.thread_ts == announcement.ts
    assert "will retry" in h.bot.logs
