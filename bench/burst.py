"""3. Burst of outcomes: many watched jobs finish at the same moment.

Spread: N jobs over 50 channels (no rate limit), all flipped to `succeeded` in one step (the fake's
lock is held, so no poll sees half of them). Measured: time until every outcome is posted,
duplicates (by the outbox key each post carries in its metadata), and the bot's RSS meanwhile.

Shared channel: Slack allows about one message per second per channel, so a burst into one
channel is bounded by Slack, not by the bot. Posting 1,000 that way would take over 16 minutes,
so this variant uses fewer jobs (60; 5 in quick mode) in one channel under the fake's strict
1 message/s limit (429 + Retry-After). Measured: throughput, 429s, duplicates, a snapshot after a
fixed window showing that what is not yet posted is owed in the outbox (not lost), and the
notification latency of one job in another channel that finishes a few seconds into the burst.
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path

from bench.common import (
    FunctionalError,
    Result,
    RssSampler,
    cycle_starts,
    database,
    duplicates,
    fakes,
    log,
    outbox_counts,
    outcome_messages,
    rate_limited_posts,
    running_bot,
    secs,
    seed_jobs,
    seed_watches,
    skipped_cycles,
    store_unavailable,
    wait_until,
)
from tests.fakes import FakeOpenAI

CHANNELS = 50


def poll_interval(quick: bool) -> int:
    # 1 s keeps the smoke test short; the full run uses 2 s, like the latency benchmark.
    return 1 if quick else 2


def flip_all(openai: FakeOpenAI, job_ids: list[str]) -> float:
    """All jobs succeed at once; returns the moment they became visible (the lock's release)."""
    with openai.lock:
        for job_id in job_ids:
            openai.set_status(job_id, "succeeded")
        return time.time()


def timeline(times: list[float]) -> list[int]:
    """How many were posted by the end of each second after the flip."""
    if not times:
        return []
    return [sum(1 for t in times if t <= second) for second in range(1, math.ceil(max(times)) + 1)]


def spread(quick: bool, kind: str, result: Result) -> None:
    count = 100 if quick else 1000
    timeout = 60 if quick else 180
    interval = poll_interval(quick)
    with (
        fakes() as (openai, slack),
        tempfile.TemporaryDirectory(prefix=f"bench-burst-{kind}-") as tmp,
        database(kind, Path(tmp)) as db_url,
    ):
        log(f"burst/{kind}: seeding {count} running jobs over {CHANNELS} channels")
        jobs = seed_jobs(openai, count)
        channels = [f"C{i:04d}" for i in range(CHANNELS)]
        seed_watches(db_url, jobs, channels)
        with running_bot(
            openai, slack, Path(tmp), DATABASE_URL=db_url, POLL_INTERVAL_SECONDS=str(interval)
        ) as bot:
            # A second cycle start means the first one has seen every job running and holds the leases.
            if not wait_until(lambda: cycle_starts(openai) >= 2, 30, bot=bot):
                raise FunctionalError(f"burst/{kind}: the first poll cycle did not finish")
            idle_rss = bot.rss_mb()
            with RssSampler(bot) as rss:
                flipped = flip_all(openai, [job["id"] for job in jobs])
                log(f"burst/{kind}: {count} jobs succeeded; waiting for the announcements")
                complete = wait_until(
                    lambda: len({k for k, _ in outcome_messages(slack)}) >= count,
                    timeout,
                    bot=bot,
                    interval=0.05,
                )
                # A few more cycles: a duplicate, if any, would show up now.
                time.sleep(1 if quick else 2 * interval + 1)
            posted = outcome_messages(slack)
            hwm = bot.peak_rss_mb()
            logs = bot.logs
        counts = outbox_counts(db_url)

    keys = [k for k, _ in posted]
    times = sorted(m.time - flipped for _, m in posted)
    dup = duplicates(keys)
    last = times[-1] if complete and times else None
    rate = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else None
    result.figures[f"spread_{kind}"] = {
        "jobs": count,
        "channels": CHANNELS,
        "poll_interval_s": interval,
        "all_posted_seconds": last,
        "first_posted_seconds": times[0] if times else None,
        "posting_rate_per_second": rate,
        "slack_pace_floor_seconds": math.ceil(count / CHANNELS) - 1,
        # Cumulative posts at each whole second after the flip: shows whether they come in batches.
        "posted_by_second": timeline(times),
        "skipped_poll_ticks": skipped_cycles(logs),
        "posted_unique": len(set(keys)),
        "duplicates": dup,
        "slack_429": rate_limited_posts(slack),
        "outbox_after": counts,
        "rss_mb_before": idle_rss,
        "rss_mb_max_during": rss.max_mb,
        "rss_mb_peak_hwm": hwm,
    }
    variant = f"{count} jobs / {CHANNELS} channels, {kind}"
    result.row(
        variant,
        "all announcements posted after",
        f"{secs(last)} (first {secs(times[0] if times else None)}; {len(set(keys))}/{count})",
    )
    # Slack takes about one message per second per channel: the last of a channel's share cannot go
    # out sooner than this after the first, however fast the bot is.
    floor = math.ceil(count / CHANNELS) - 1
    result.row(
        variant,
        "posting rate, first → last post",
        f"{rate or 0:.0f} msg/s (Slack's 1 msg/s per channel allows {CHANNELS} msg/s: ≥ {floor} s)",
    )
    result.row(variant, "duplicates", str(dup), "0", dup == 0)
    result.row(
        variant,
        "bot RSS during burst (max)",
        f"{rss.max_mb or 0:.0f} MB",
        "< 150 MB",
        (rss.max_mb or 0) < 150,
    )
    if dup:
        result.fail(f"{kind}: {dup} duplicate announcements")
    if not complete:
        result.fail(f"{kind}: only {len(set(keys))} of {count} announcements within {timeout} s")


def shared_channel(quick: bool, result: Result) -> None:
    count = 2 if quick else 60
    window = 2 if quick else 20
    bystander_after = 1 if quick else 5
    interval = poll_interval(quick)
    with (
        fakes(rate_limit_per_channel=1.0) as (openai, slack),
        tempfile.TemporaryDirectory(prefix="bench-burst-shared-") as tmp,
        database("sqlite", Path(tmp)) as db_url,
    ):
        log(f"burst/shared: {count} jobs in one channel, Slack allows 1 message/s there")
        jobs = seed_jobs(openai, count + 1)
        burst_jobs, bystander = jobs[:count], jobs[count]
        seed_watches(db_url, burst_jobs, ["CSHARED"])
        seed_watches(db_url, [bystander], ["COTHER"])
        with running_bot(
            openai, slack, Path(tmp), DATABASE_URL=db_url, POLL_INTERVAL_SECONDS=str(interval)
        ) as bot:
            if not wait_until(lambda: cycle_starts(openai) >= 2, 30, bot=bot):
                raise FunctionalError("burst/shared: the first poll cycle did not finish")
            flipped = flip_all(openai, [job["id"] for job in burst_jobs])
            time.sleep(bystander_after)
            bystander_flipped = flip_all(openai, [bystander["id"]])
            time.sleep(max(0.0, flipped + window - time.time()))
            # Mid-burst: every announcement not yet posted must be owed in the outbox, or its job
            # not yet seen by a poll (watch still open). The database is read first, so a post
            # landing between the two reads is counted twice, never missed: posted + owed + open
            # >= all means none was lost.
            snapshot = outbox_counts(db_url, channel="CSHARED")
            snapshot["posted_in_window"] = len(
                {k for k, m in outcome_messages(slack) if m.channel == "CSHARED"}
            )
            complete = wait_until(
                lambda: len({k for k, _ in outcome_messages(slack)}) >= count + 1, 6 * count + 60, bot=bot
            )
            time.sleep(1 if quick else 2 * interval + 1)
            posted = outcome_messages(slack)
            limited = rate_limited_posts(slack)
            skipped = skipped_cycles(bot.logs)
            redeliveries_checked = len(slack.calls_to("conversations.history"))

    keys = [k for k, _ in posted]
    dup = duplicates(keys)
    shared = sorted(m.time - flipped for _, m in posted if m.channel == "CSHARED")
    other = [m.time - bystander_flipped for _, m in posted if m.channel == "COTHER"]
    last = shared[-1] if complete and shared else None
    throughput = (len(shared) - 1) / (shared[-1] - shared[0]) if len(shared) > 1 else None
    accounted = snapshot["posted_in_window"] + snapshot["owed"] + snapshot["open_watches"]
    result.figures["shared_channel_sqlite"] = {
        "jobs": count,
        "rate_limit_per_channel": 1.0,
        "all_posted_seconds": last,
        "throughput_per_second": throughput,
        "slack_429": limited,
        "duplicates": dup,
        "window_seconds": window,
        "snapshot_at_window": snapshot,
        "bystander_flipped_after_s": bystander_after,
        "bystander_latency_seconds": other[0] if other else None,
        "history_checks": redeliveries_checked,
        "posted_by_second": timeline(shared),
        # Ticks APScheduler dropped while one cycle was still delivering the backlog: no polling then.
        "skipped_poll_ticks": skipped,
    }
    variant = f"{count} jobs / 1 channel at 1 msg/s, sqlite"
    result.row(
        variant,
        "all posted after / throughput",
        f"{secs(last)} / {throughput or 0:.2f} msg/s; {limited} answers were 429",
    )
    result.row(
        variant,
        f"after {window} s: posted / owed in outbox / not yet seen",
        f"{snapshot['posted_in_window']} / {snapshot['owed']} / {snapshot['open_watches']}"
        f" ({'none lost' if accounted >= count else f'{count - accounted} UNACCOUNTED'})",
    )
    result.row(variant, "duplicates", str(dup), "0", dup == 0)
    result.row(
        variant,
        f"another channel's job, finished {bystander_after} s into the burst, posted after",
        f"{secs(other[0] if other else None)} ({skipped} poll ticks skipped during the burst)",
    )
    if dup:
        result.fail(f"shared channel: {dup} duplicate announcements")
    if accounted < count:
        result.fail(f"shared channel: {count - accounted} announcements neither posted nor owed mid-burst")
    if not complete:
        result.fail(f"shared channel: only {len(set(keys))} of {count + 1} announcements arrived")


def run(quick: bool, stores: list[str]) -> Result:
    result = Result(
        "burst",
        "3. Burst of outcomes",
        params={
            "jobs": 100 if quick else 1000,
            "channels": CHANNELS,
            "poll_interval_s": poll_interval(quick),
            "shared_channel_jobs": 2 if quick else 60,
            "shared_channel_rate_limit_per_s": 1.0,
        },
    )
    # The smoke test bursts on SQLite only, to stay under a minute; PostgreSQL's exactly-once path
    # is covered by the test suite, and its poll path by the quick poll benchmark.
    for kind in stores if not quick else [s for s in stores if s == "sqlite"]:
        reason = store_unavailable(kind)
        if reason:
            result.skip(f"{kind}: {reason}")
            continue
        spread(quick, kind, result)
    shared_channel(quick, result)
    return result
