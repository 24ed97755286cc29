"""The completion-report benchmark's judgement (bench/reports.py) on plain values: what it calls
broken must be broken, and Slack's pace must not be counted as the bot's delay."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest

from bench.reports import Layout, Measured, Started, check, pace_removed
from tests.fakes.slack import RecordedMessage, RecordedUpload

FLIP = 1_000.0


def message(channel: str, ts: float, thread_ts: str | None = None, *, files: bool = False) -> RecordedMessage:
    return RecordedMessage(
        channel=channel,
        ts=f"{ts:.6f}",
        text="",
        blocks=None,
        thread_ts=thread_ts,
        reply_broadcast=False,
        params={},
        time=ts,
        files=[{"id": "F1"}] if files else None,
    )


def upload(job_id: str, channel: str, thread_ts: str, ts: float) -> RecordedUpload:
    return RecordedUpload(
        file_id=f"F{job_id}",
        filename=f"{job_id}-report.png",
        title="",
        alt_txt=None,
        data=b"",
        length=0,
        channel=channel,
        thread_ts=thread_ts,
        initial_comment=None,
        blocks=None,
        ts=f"{ts:.6f}",
        time=ts,
    )


def healthy(jobs: int = 4, channels: int = 2) -> Measured:
    """Each job: announced at 900 + i, outcome at FLIP + 5 + its rank in its channel, chart 2 s later."""
    started = [Started(f"ftjob-{i}", f"C{i % channels}", f"{900 + i:.6f}") for i in range(jobs)]
    outcomes, uploads, shares = {}, {}, {}
    for i, job in enumerate(started):
        at = FLIP + 5 + i // channels
        outcomes[job.job_id] = [message(job.channel, at + i / 1000, job.announcement_ts)]
        uploads[job.job_id] = [upload(job.job_id, job.channel, job.announcement_ts, at + 2 + i / 1000)]
        shares[job.job_id] = message(job.channel, at + 2 + i / 1000, job.announcement_ts, files=True)
    return Measured(
        layout=Layout(jobs, channels),
        interval=5.0,
        flipped=FLIP,
        flip_phase=0.01,
        started=started,
        outcomes=outcomes,
        uploads=uploads,
        shares=shares,
        text_reports={job.job_id: 0 for job in started},
        lists_after_flip=[FLIP + 4.9],
        skipped_ticks=0,
        slack_429=0,
        errors_logged=[],
        complete=True,
    )


def test_a_healthy_burst_has_no_problems() -> None:
    assert check(healthy()) == []


def test_slack_pace_is_taken_out_of_the_slowest_outcome() -> None:
    # Two per channel, the second 1 s after the first: 6 s (and a few ms) less 1 s of pace.
    assert pace_removed(healthy()) == pytest.approx(5.003)


@pytest.mark.parametrize(
    ("spoil", "expected"),
    [
        (lambda m: m.outcomes["ftjob-1"].append(m.outcomes["ftjob-1"][0]), "more than one outcome"),
        (lambda m: m.outcomes["ftjob-2"].clear(), "have no outcome"),
        (lambda m: m.uploads["ftjob-0"].append(m.uploads["ftjob-0"][0]), "more than one chart"),
        (lambda m: (m.uploads["ftjob-3"].clear(), m.shares.pop("ftjob-3")), "have no chart"),
        (lambda m: m.shares.pop("ftjob-3"), "never shared"),
        (lambda m: m.text_reports.update({"ftjob-0": 1}), "as text alone"),
        (
            lambda m: m.uploads.update({"ftjob-1": [upload("ftjob-1", "C1", "1.000000", FLIP + 9)]}),
            "outside their own thread",
        ),
        (
            lambda m: m.shares.update({"ftjob-2": message("C0", FLIP + 1, "902.000000", files=True)}),
            "before their outcome",
        ),
    ],
)
def test_each_kind_of_breakage_is_a_problem(spoil: Callable[[Measured], object], expected: str) -> None:
    measured = healthy()
    spoil(measured)
    [problem] = check(measured)
    assert expected in problem and "of 4 jobs" in problem


def test_an_incomplete_run_is_a_problem() -> None:
    measured = dataclasses.replace(healthy(), complete=False)
    assert any("in time" in p for p in check(measured))


def test_a_report_for_a_job_without_metrics_is_a_problem() -> None:
    measured = healthy()
    measured.layout = Layout(4, 2, with_metrics=False)
    measured.uploads, measured.shares = {}, {}
    assert check(measured) == []
    measured.text_reports["ftjob-0"] = 1
    assert check(measured) == [
        "4 jobs / 2 channels x 2, no metrics (control): a report was posted for jobs with no metrics at all"
    ]
