"""5. Memory and start-up: the bot's resident memory (RSS, from /proc/<pid>/status) and the time
from launching `python -m bot` to `/healthz` answering 200.

Idle: empty SQLite database, a few seconds after start. Many watches: 10,000 running jobs watched
(1,000 in quick mode), measured while the bot polls them all twice (the peak is what a container
limit must allow) and after. RSS during a burst of outcomes is measured by the burst benchmark.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from bench.common import (
    FunctionalError,
    Result,
    RssSampler,
    cycle_starts,
    fakes,
    log,
    poll_cycles,
    running_bot,
    secs,
    seed_jobs,
    seed_watches,
    wait_until,
)

GOAL_RSS_MB = 150.0


def run(quick: bool) -> Result:
    starts = 1 if quick else 3
    watches = 1000 if quick else 10_000
    interval = "1" if quick else "2"
    result = Result(
        "memory",
        "5. Memory and start-up",
        params={
            "startups_timed": starts,
            "watches": watches,
            "store": "sqlite",
            "poll_interval_s": int(interval),
        },
    )
    startup: list[float] = []
    idle_rss: float | None = None
    for attempt in range(starts):
        with (
            fakes() as (openai, slack),
            tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp,
            running_bot(openai, slack, Path(tmp), POLL_INTERVAL_SECONDS=interval) as bot,
        ):
            assert bot.startup_seconds is not None
            startup.append(bot.startup_seconds)
            if attempt == starts - 1:
                time.sleep(1.0 if quick else 4.5)  # past the first poll cycles: what an idle bot holds
                idle_rss = bot.rss_mb()

    with fakes() as (openai, slack), tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        log(f"memory: seeding {watches} running jobs and watches")
        db_url = f"sqlite:///{Path(tmp) / 'finetune-bot.db'}"
        seed_watches(db_url, seed_jobs(openai, watches), ["C0001"])
        with (
            running_bot(openai, slack, Path(tmp), POLL_INTERVAL_SECONDS=interval) as bot,
            RssSampler(bot) as rss,
        ):
            loaded_startup = bot.startup_seconds
            # Cycle starts: the next one begins only after the previous cycle over every watch is done.
            cycles = 2 if quick else 3
            if not wait_until(lambda: cycle_starts(openai) >= cycles, 120, bot=bot, interval=0.1):
                raise FunctionalError(f"fewer than {cycles - 1} poll cycles over {watches} watches in 120 s")
            time.sleep(1)
            after = bot.rss_mb()
            hwm = bot.peak_rss_mb()
        big_cycle = poll_cycles(openai.spans)[-1]

    result.figures = {
        "startup_seconds": startup,
        "startup_seconds_median": statistics.median(startup),
        "startup_seconds_with_watches": loaded_startup,
        "rss_mb_idle": idle_rss,
        "rss_mb_watches_max_sampled": rss.max_mb,
        "rss_mb_watches_after_cycles": after,
        "rss_mb_watches_peak_hwm": hwm,
        "poll_cycle_with_watches": {
            "requests": big_cycle.requests,
            "seconds": big_cycle.end - big_cycle.start,
        },
    }
    result.row(
        "empty database", "start → /healthz 200", f"{secs(statistics.median(startup))} (median of {starts})"
    )
    result.row(
        "empty database",
        "RSS idle",
        f"{idle_rss or 0:.0f} MB",
        f"< {GOAL_RSS_MB:g} MB",
        (idle_rss or 0) < GOAL_RSS_MB,
    )
    result.row(f"{watches:,} watches", "start → /healthz 200", secs(loaded_startup))
    result.row(
        f"{watches:,} watches",
        "one poll cycle over all of them",
        f"{big_cycle.requests} requests, {secs(big_cycle.end - big_cycle.start)}",
    )
    peak = max(v for v in (rss.max_mb, hwm) if v is not None) if (rss.max_mb or hwm) else 0.0
    result.row(
        f"{watches:,} watches",
        "RSS while polling (peak) / after",
        f"{peak:.0f} MB / {after or 0:.0f} MB",
        f"< {GOAL_RSS_MB:g} MB",
        peak < GOAL_RSS_MB,
    )
    return result
