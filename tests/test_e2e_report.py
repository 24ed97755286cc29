"""End to end: the completion report (chart and scorecard) lands in the job's thread, after the
outcome, exactly once, from a real `python -m bot` process — also across a SIGKILL between the
upload and the share.

The rest of the report's behaviour (where the numbers come from, degrading to the numbers alone,
retries, `/finetune report`, a renderer that dies) is shown in-process on a fake clock, in
tests/test_inprocess_report.py: only what needs a real process is here.

The fake OpenAI serves result files and checkpoints as the spec says; the fake Slack implements the
three-step upload (files.getUploadURLExternal → POST the bytes → files.completeUploadExternal) and
records the bytes, so the PNG checked here is the one Slack would have shown.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakes import FakeOpenAI, FakeSlack
from tests.harness import Harness, start_bot, wait_until
from tests.test_e2e_exactly_once import wait_killed
from tests.test_e2e_notifications import outcomes, start_job
from tests.test_inprocess_report import png_size, report_messages, succeed_with_metrics


@pytest.fixture
def h(fake_openai: FakeOpenAI, fake_slack: FakeSlack, tmp_path: Path) -> Iterator[Harness]:
    bot = start_bot(fake_openai, fake_slack, tmp_path, POLL_INTERVAL_SECONDS="1")
    harness = Harness(bot, fake_openai, fake_slack)
    try:
        yield harness
    finally:
        assert bot.stop() == 0, bot.logs
    harness.assert_no_secrets()


def test_success_posts_one_chart_with_its_scorecard_in_the_thread_after_the_outcome(h: Harness) -> None:
    """The happy path in a real process: its scheduler's poll cycles, its own chart worker."""
    job_id, announcement = start_job(h, user_id="U42")
    succeed_with_metrics(h.openai, job_id)
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
    assert report_messages(h.slack, job_id) == []


@pytest.mark.parametrize("crash_at", ["report_before_share", "report_after_share"])
def test_killed_between_upload_and_share_reports_exactly_once(
    fake_openai: FakeOpenAI, fake_slack: FakeSlack, tmp_path: Path, crash_at: str
) -> None:
    """Stays end to end: the bot is SIGKILLed at the crash point (nothing in-process can stop at a
    precise line and lose everything in memory), and a new process finishes the report."""
    bot = start_bot(fake_openai, fake_slack, tmp_path, POLL_INTERVAL_SECONDS="1", FINETUNE_CRASH_AT=crash_at)
    h = Harness(bot, fake_openai, fake_slack)
    job_id, announcement = start_job(h)
    succeed_with_metrics(h.openai, job_id)
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
        assert len(outcomes(h, job_id)) == 1 and report_messages(h.slack, job_id) == []
    finally:
        assert restarted.stop() == 0, restarted.logs
