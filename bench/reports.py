"""7. Completion reports: twenty jobs finish in the same second.

Issue 13's goal: "Twenty jobs finishing in the same minute: every outcome still posted within one
poll cycle of the status change; reports follow."

Set-up, per variant: the real bot (SQLite, POLL_INTERVAL_SECONDS=5; 2 in quick mode) against the
fakes. N jobs are started from Slack with `/finetune create` (signed slash commands), spread over
C channels; each gets a realistic result file (bench/chart_data.py: 2,000 steps, validation every
50, ~52 KB of CSV; a different seed per job) and two checkpoints with the same numbers. Then the
fake Slack starts pacing chat.postMessage at 1 per second per channel (429 + Retry-After beyond,
like Slack), and all N jobs flip to `succeeded` in one step of the fake, right after a poll cycle
has listed them unfinished: the worst phase, where the change waits almost a whole interval to
be seen.

Measured per job, from the flip (the fake's lock released): the outcome message posted, and the
report's chart shared (the share message of files.completeUploadExternal) in the job's thread.
Goal: the slowest outcome within one poll interval (to be seen), plus Slack's pace in the busiest
channel ((jobs per channel - 1) x 1 s), plus 1 s for the cycle's own work and the first post.

Functional checks (any failure exits 1): exactly one outcome and exactly one chart per job, every
chart in its job's thread, every chart after its outcome, no report reduced to text.

Full run: 20 jobs over 4 channels (5 each); 20 jobs in one channel, plus one job in a channel of
its own started after them (its outcome and report are owed last: does the busy channel hold the
quiet one up?); and for comparison the 4 x 5 burst again with no metrics at all (no report is
made: what the outcomes cost without reports).
Quick run (CI): 6 jobs over 2 channels, nothing timed is enforced.
"""

from __future__ import annotations

import math
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.chart_data import synthetic_checkpoints, synthetic_result_csv
from bench.common import (
    Bot,
    FunctionalError,
    Result,
    Span,
    TimedFakeOpenAI,
    database,
    duplicates,
    fakes,
    log,
    outcome_messages,
    percentile,
    rate_limited_posts,
    running_bot,
    secs,
    skipped_cycles,
    wait_until,
)
from tests.bot_process import SIGNING_SECRET
from tests.fakes import FakeSlack, sign_slack_request
from tests.fakes.slack import RecordedMessage, RecordedUpload
from tests.harness import all_text

STEPS = 2_000
EPOCHS = 2  # one checkpoint at the end of each: two checkpoints
SLACK_PACE = 1.0  # seconds between posts in one channel: Slack's ~1/s, the fake's limit here
# Beyond one interval and Slack's pace: the cycle that sees the change (list, retrieves, outbox
# writes) and the first post.
WORK_ALLOWANCE = 1.0
BYSTANDER_CHANNEL = "CQUIET"
REPORT_EVENT = "finetune_report"  # metadata event_type of a report posted as text alone


@dataclass(frozen=True)
class Layout:
    jobs: int
    channels: int
    with_metrics: bool = True
    # One more job, in a channel of its own, started (so owed in the outbox) after all the others:
    # does a busy channel hold up a quiet one?
    bystander: bool = False

    @property
    def total(self) -> int:
        return self.jobs + (1 if self.bystander else 0)

    @property
    def per_channel(self) -> int:
        return math.ceil(self.jobs / self.channels)

    @property
    def pace_floor(self) -> float:
        """However fast the bot, the last outcome of the busiest channel goes this long after its first."""
        return (self.per_channel - 1) * SLACK_PACE

    @property
    def name(self) -> str:
        spread = f"{self.channels} channels x {self.per_channel}" if self.channels > 1 else "1 channel"
        extra = " + 1 in another" if self.bystander else ""
        return f"{self.jobs} jobs / {spread}{extra}" + ("" if self.with_metrics else ", no metrics (control)")


@dataclass(frozen=True)
class Started:
    job_id: str
    channel: str
    announcement_ts: str


@dataclass
class Measured:
    layout: Layout
    interval: float
    flipped: float
    flip_phase: float  # seconds after the list request of the cycle that just missed the change
    started: list[Started]
    outcomes: dict[str, list[RecordedMessage]]
    uploads: dict[str, list[RecordedUpload]]
    shares: dict[str, RecordedMessage]  # the message sharing each job's first chart
    text_reports: dict[str, int]
    lists_after_flip: list[float]  # cycles that listed jobs after the change (had open watches)
    skipped_ticks: int
    slack_429: int
    errors_logged: list[str]
    complete: bool


def poll_interval(quick: bool) -> float:
    return 2.0 if quick else 5.0


def layouts(quick: bool) -> list[Layout]:
    if quick:
        return [Layout(6, 2)]
    return [Layout(20, 4), Layout(20, 1, bystander=True), Layout(20, 4, with_metrics=False)]


# -- driving the bot -------------------------------------------------------------------------------


def send_command(
    client: httpx.Client, url: str, slack: FakeSlack, text: str, channel: str, user: str
) -> None:
    """A `/finetune` command as Slack sends it: signed form fields, acknowledged with 200."""
    fields = slack.slash_command_payload(
        text, user_id=user, channel_id=channel, response_url=slack.response_url(uuid.uuid4().hex)
    )
    body = urllib.parse.urlencode(fields)
    response = client.post(url, content=body, headers=sign_slack_request(body, SIGNING_SECRET))
    if response.status_code != 200:
        raise FunctionalError(f"`/finetune {text}` in {channel} answered HTTP {response.status_code}")


def announcement_of(slack: FakeSlack, channel: str, job_id: str) -> RecordedMessage | None:
    for message in slack.messages_in(channel):
        if message.thread_ts is None and job_id in all_text({"t": message.text, "b": message.blocks}):
            return message
    return None


def start_job(
    client: httpx.Client, url: str, openai: TimedFakeOpenAI, slack: FakeSlack, channel: str, n: int, bot: Bot
) -> Started:
    """`/finetune create` in `channel`; waits for the new job and its announcement there."""
    before = set(openai.jobs)
    send_command(client, url, slack, f"create file-abc123 suffix=bench-{n}", channel, f"U{100 + n}")
    new: set[str] = set()

    def created() -> bool:
        new.update(set(openai.jobs) - before)
        return len(new) == 1 and announcement_of(slack, channel, next(iter(new))) is not None

    if not wait_until(created, 30, bot=bot):
        raise FunctionalError(
            f"`/finetune create` #{n} in {channel}: {len(new)} jobs, no announcement in 30 s"
        )
    job_id = next(iter(new))
    announcement = announcement_of(slack, channel, job_id)
    assert announcement is not None
    return Started(job_id, channel, announcement.ts)


def start_jobs(
    client: httpx.Client, url: str, openai: TimedFakeOpenAI, slack: FakeSlack, layout: Layout, bot: Bot
) -> list[Started]:
    """N jobs started from Slack, round-robin over the layout's channels (then the bystander)."""
    channels = [f"CREP{i:02d}" for i in range(layout.channels)]
    started = [
        start_job(client, url, openai, slack, channels[n % len(channels)], n, bot) for n in range(layout.jobs)
    ]
    if layout.bystander:
        started.append(start_job(client, url, openai, slack, BYSTANDER_CHANNEL, layout.jobs, bot))
    return started


def give_metrics(openai: TimedFakeOpenAI, started: Sequence[Started]) -> int:
    """Each job its result file and two checkpoints (same seed, same numbers); returns CSV bytes."""
    size = 0
    for seed, job in enumerate(started, start=1):
        csv = synthetic_result_csv(STEPS, seed=seed, epochs=EPOCHS)
        size = len(csv)
        openai.add_result_file(job.job_id, csv)
        for checkpoint in synthetic_checkpoints(STEPS, seed=seed, epochs=EPOCHS):
            metrics = checkpoint["metrics"]
            assert isinstance(metrics, dict)
            openai.add_checkpoint(job.job_id, int(str(checkpoint["step_number"])), metrics=metrics)
    return size


def cycle_lists(openai: TimedFakeOpenAI) -> list[Span]:
    """Each poll cycle's first request: the list of jobs without `after` (nor a metadata filter:
    that one is a half-done create being looked for)."""
    return [
        span
        for span in openai.spans
        if span.method == "GET"
        and span.path == "/fine_tuning/jobs"
        and not any(name == "after" or name.startswith("metadata") for name in span.query)
    ]


def flip_after_a_cycle_looked(
    openai: TimedFakeOpenAI, job_ids: Sequence[str], bot: Bot
) -> tuple[float, float]:
    """Wait for a poll cycle to list the jobs (not finished yet), then make them all succeed at once:
    the change is missed by that cycle and waits for the next. Returns (flip time, its phase)."""
    seen = len(cycle_lists(openai))
    # A span is recorded once its response is ready: the jobs were listed as running.
    if not wait_until(lambda: len(cycle_lists(openai)) > seen, 60, bot=bot, interval=0.002):
        raise FunctionalError("no poll cycle listed the jobs within 60 s")
    with openai.lock:
        for job_id in job_ids:
            openai.set_status(job_id, "succeeded")
        flipped = time.time()
    return flipped, flipped - cycle_lists(openai)[-1].end


# -- one burst -------------------------------------------------------------------------------------


def burst(layout: Layout, interval: float, quick: bool) -> Measured:
    timeout = 120.0 if quick else 180.0
    with (
        fakes() as (openai, slack),
        tempfile.TemporaryDirectory(prefix="bench-reports-") as tmp,
        database("sqlite", Path(tmp)) as db_url,
        running_bot(
            openai, slack, Path(tmp), DATABASE_URL=db_url, POLL_INTERVAL_SECONDS=f"{interval:g}"
        ) as bot,
        httpx.Client(timeout=10) as client,
    ):
        log(f"reports: {layout.name}: starting the jobs with /finetune create")
        started = start_jobs(client, f"{bot.url}/slack/events", openai, slack, layout, bot)
        if layout.with_metrics:
            size = give_metrics(openai, started)
            log(f"reports: each job has a {STEPS:,}-step result file ({size / 1024:.0f} KB), 2 checkpoints")
        # Set-up over: from now on Slack paces each channel as it does in production.
        slack.rate_limit_per_channel = 1.0 / SLACK_PACE
        flipped, phase = flip_after_a_cycle_looked(openai, [s.job_id for s in started], bot)
        log(f"reports: {layout.total} jobs succeeded {phase:.2f} s after a poll listed them; waiting")

        def done() -> bool:
            keys = {k.split(":", 1)[0] for k, _ in outcome_messages(slack)}
            if len(keys) < layout.total:
                return False
            if not layout.with_metrics:
                return True
            return len({u.filename for u in slack.uploads if u.ts is not None}) >= layout.total

        complete = wait_until(done, timeout, bot=bot, interval=0.05)
        # Two more cycles: a duplicate or a late report, if any, would show up now.
        time.sleep(2 * interval + 1)
        bot.check_alive()
        logs = bot.logs
        messages = slack.messages
        posted = outcome_messages(slack)
        uploads = slack.uploads
        slack_429 = rate_limited_posts(slack)
        lists_after = [span.start for span in cycle_lists(openai) if span.start > flipped]

    ids = [s.job_id for s in started]
    outcomes: dict[str, list[RecordedMessage]] = {job_id: [] for job_id in ids}
    for key, message in posted:
        job_id = key.split(":", 1)[0]
        if job_id in outcomes:
            outcomes[job_id].append(message)
    by_job: dict[str, list[RecordedUpload]] = {job_id: [] for job_id in ids}
    for upload in uploads:
        job_id = upload.filename.removesuffix("-report.png")
        by_job.setdefault(job_id, []).append(upload)
    shares: dict[str, RecordedMessage] = {}
    for job_id, mine in by_job.items():
        if mine and mine[0].ts is not None:
            share = next((m for m in messages if m.files and m.ts == mine[0].ts), None)
            if share is not None:
                shares[job_id] = share
    text_reports = {job_id: 0 for job_id in ids}
    for message in messages:
        metadata = message.params.get("metadata")
        if isinstance(metadata, dict) and metadata.get("event_type") == REPORT_EVENT:
            job_id = str((metadata.get("event_payload") or {}).get("key", "")).split(":", 1)[0]
            text_reports[job_id] = text_reports.get(job_id, 0) + 1
    return Measured(
        layout=layout,
        interval=interval,
        flipped=flipped,
        flip_phase=phase,
        started=started,
        outcomes=outcomes,
        uploads=by_job,
        shares=shares,
        text_reports=text_reports,
        lists_after_flip=lists_after,
        skipped_ticks=skipped_cycles(logs),
        slack_429=slack_429,
        errors_logged=[line for line in logs.splitlines() if " ERROR " in line or "Traceback" in line],
        complete=complete,
    )


# -- judging and reporting -------------------------------------------------------------------------


def check(measured: Measured) -> list[str]:
    """Functional problems: each one fails the run, whatever the timings."""
    problems: list[str] = []
    layout = measured.layout
    name = layout.name

    def tell(what: str, jobs: list[str]) -> None:
        if jobs:
            problems.append(f"{name}: {len(jobs)} of {layout.total} jobs {what} (e.g. {', '.join(jobs[:3])})")

    tell("have no outcome", [j for j, m in measured.outcomes.items() if not m])
    tell("have more than one outcome", [j for j, m in measured.outcomes.items() if len(m) > 1])
    if layout.with_metrics:
        tell("have no chart", [s.job_id for s in measured.started if not measured.uploads.get(s.job_id)])
        tell("have more than one chart", [j for j, u in measured.uploads.items() if len(u) > 1])
        tell(
            "have a chart never shared in Slack",
            [
                s.job_id
                for s in measured.started
                if (measured.uploads.get(s.job_id) and s.job_id not in measured.shares)
            ],
        )
        tell("have their report as text alone (no chart)", [j for j, n in measured.text_reports.items() if n])
        elsewhere, early = [], []
        for job in measured.started:
            mine = measured.uploads.get(job.job_id) or []
            if any(u.channel != job.channel or u.thread_ts != job.announcement_ts for u in mine):
                elsewhere.append(job.job_id)
            share, outcome = measured.shares.get(job.job_id), measured.outcomes.get(job.job_id)
            if share is not None and outcome and float(share.ts) <= float(outcome[0].ts):
                early.append(job.job_id)
        tell("have a chart outside their own thread", elsewhere)
        tell("have a chart before their outcome", early)
    else:
        uploads = sum(len(u) for u in measured.uploads.values())
        if uploads or any(measured.text_reports.values()):
            problems.append(f"{name}: a report was posted for jobs with no metrics at all")
    if not measured.complete:
        what = "outcome and chart" if layout.with_metrics else "outcome"
        problems.append(f"{name}: not every {what} arrived in time")
    return problems


def p50_max(values: Sequence[float]) -> str:
    if not values:
        return "n/a"
    return f"{secs(percentile(values, 50))} / {secs(max(values))}"


def pace_removed(measured: Measured) -> float | None:
    """The slowest outcome once Slack's pace is taken out: the k-th post in a channel cannot go out
    sooner than (k - 1) x 1 s after that channel's first. What remains is the bot's own delay."""
    channel_of = {s.job_id: s.channel for s in measured.started}
    by_channel: dict[str, list[float]] = {}
    for job_id, messages in measured.outcomes.items():
        if messages:
            by_channel.setdefault(channel_of[job_id], []).append(messages[0].time - measured.flipped)
    delays = [
        latency - rank * SLACK_PACE
        for latencies in by_channel.values()
        for rank, latency in enumerate(sorted(latencies))
    ]
    return max(delays) if delays else None


def report(measured: Measured, result: Result) -> None:
    layout, interval, flipped = measured.layout, measured.interval, measured.flipped
    outcome_at = {j: m[0].time - flipped for j, m in measured.outcomes.items() if m}
    chart_at = {j: m.time - flipped for j, m in measured.shares.items()}
    # The bystander is reported apart: the figures below are the burst's own.
    quiet = {s.job_id for s in measured.started if s.channel == BYSTANDER_CHANNEL}
    outcome_latency = [t for j, t in outcome_at.items() if j not in quiet]
    chart_latency = [t for j, t in chart_at.items() if j not in quiet]
    gaps = [chart_at[j] - outcome_at[j] for j in chart_at if j in outcome_at and j not in quiet]
    after = sum(
        1
        for j, share in measured.shares.items()
        if measured.outcomes.get(j) and float(share.ts) > float(measured.outcomes[j][0].ts)
    )
    slowest = max(outcome_latency) if outcome_latency else None
    goal = interval + layout.pace_floor + WORK_ALLOWANCE
    beyond_pace = pace_removed(measured)
    # A cycle lists jobs only while it has open watches: one list after the change means the first
    # cycle to look saw every change and wrote every outcome; the rest of the wait is Slack's pace.
    looks = len(measured.lists_after_flip)
    variant = f"{layout.name}, poll {interval:g} s"
    key = f"{layout.jobs}x{layout.channels}" + ("" if layout.with_metrics else "_control")
    result.figures[key] = {
        "jobs": layout.jobs,
        "channels": layout.channels,
        "bystander": None
        if not quiet
        else {
            "outcome_seconds": [outcome_at.get(j) for j in quiet],
            "chart_seconds": [chart_at.get(j) for j in quiet],
        },
        "jobs_per_channel": layout.per_channel,
        "with_metrics": layout.with_metrics,
        "poll_interval_s": interval,
        "flip_phase_s": measured.flip_phase,
        "outcome_seconds": sorted(outcome_latency),
        "chart_seconds": sorted(chart_latency),
        "outcome_to_chart_seconds": sorted(gaps),
        "charts_after_outcome": after,
        "slowest_outcome_in_intervals": None if slowest is None else slowest / interval,
        "slowest_outcome_less_slack_pace_seconds": beyond_pace,
        "poll_cycles_that_listed_jobs_after_the_change": looks,
        "goal_seconds": goal,
        "slack_pace_floor_seconds": layout.pace_floor,
        "skipped_poll_ticks": measured.skipped_ticks,
        "slack_429": measured.slack_429,
        "duplicates_outcomes": duplicates([j for j, m in measured.outcomes.items() for _ in m]),
        "errors_logged": measured.errors_logged[:20],
    }
    result.row(
        variant,
        "status change → outcome posted, p50 / max",
        p50_max(outcome_latency),
        f"max ≤ {goal:g} s (1 interval + Slack's pace {layout.pace_floor:g} s + {WORK_ALLOWANCE:g} s)",
        slowest is not None and slowest <= goal,
    )
    result.row(
        variant,
        "slowest outcome in poll intervals: all / less Slack's pace",
        "n/a"
        if slowest is None or beyond_pace is None
        else f"{slowest / interval:.2f} / {beyond_pace / interval:.2f} (change {measured.flip_phase:.2f} s "
        "after a cycle listed the jobs)",
    )
    result.row(
        variant,
        "poll cycles that had to look after the change",
        f"{looks}" + (f" (all {layout.total} outcomes owed after the first)" if looks == 1 else ""),
        "1",
        looks == 1,
    )
    if layout.with_metrics:
        result.row(variant, "status change → chart shared in the thread, p50 / max", p50_max(chart_latency))
        result.row(variant, "outcome → its chart, p50 / max", p50_max(gaps))
        result.row(
            variant,
            "charts after their outcome / in their thread, one each",
            f"{after} of {layout.total}",
            "all",
            after == layout.total and not check(measured),
        )
        for job_id in sorted(quiet):
            result.row(
                variant,
                "the job in another channel, owed last: outcome / chart after",
                f"{secs(outcome_at.get(job_id))} / {secs(chart_at.get(job_id))}",
            )
    result.row(
        variant,
        "poll ticks skipped (a cycle still running) / Slack 429s",
        f"{measured.skipped_ticks} / {measured.slack_429}",
    )
    if measured.errors_logged:
        result.notes.append(
            f"{layout.name}: the bot logged {len(measured.errors_logged)} ERROR lines, "
            f"first: {measured.errors_logged[0][:200]}"
        )


def run(quick: bool) -> Result:
    interval = poll_interval(quick)
    plan = layouts(quick)
    result = Result(
        "reports",
        "7. Completion reports",
        params={
            "layouts": [{"jobs": p.jobs, "channels": p.channels, "metrics": p.with_metrics} for p in plan],
            "poll_interval_s": interval,
            "result_file_steps": STEPS,
            "checkpoints_per_job": EPOCHS,
            "slack_rate_limit_per_channel_per_s": 1.0 / SLACK_PACE,
            "store": "sqlite",
            "flip_phase": "right after a poll cycle listed the jobs (worst case)",
        },
    )
    for layout in plan:
        measured = burst(layout, interval, quick)
        report(measured, result)
        for problem in check(measured):
            result.fail(problem)
    return result
