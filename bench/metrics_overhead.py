"""Metrics on vs off: acknowledgement latency and poll cycle time, side by side (issue 15).

"Off" is the bot as configured by default (no METRICS_TOKEN or METRICS_PORT: the edges still
count, nothing is served). "On" sets METRICS_TOKEN and scrapes /metrics once a second while the
load runs, far more often than a Prometheus would (15-60 s), so a scrape's own cost shows. Each
side runs the same scenario on a fresh bot: the ack benchmark's commands (`get ftjob-…`, OpenAI
answering in 500 ms, 25 at a time), then 1,000 watched running jobs polled every second. The goal,
within 5 %, is reported, not enforced: on a shared 2-core machine the run-to-run noise is of the
same order.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import statistics
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from bench.ack import fire, get_commands
from bench.common import (
    Bot,
    Result,
    cycle_starts,
    database,
    fakes,
    log,
    ms,
    percentile,
    poll_cycles,
    running_bot,
    seed_jobs,
    seed_watches,
    wait_until,
)

TOKEN = "bench-metrics-token-0123456789abcdef"
SCRAPE_SECONDS = 1.0
GOAL_RATIO = 1.05


@contextmanager
def scraping(bot: Bot, enabled: bool) -> Iterator[list[float]]:
    """Scrape /metrics every SCRAPE_SECONDS while the block runs; yields the scrape durations."""
    durations: list[float] = []
    stop = threading.Event()

    def loop() -> None:
        with httpx.Client(timeout=10) as client:
            while not stop.wait(SCRAPE_SECONDS):
                response = client.get(f"{bot.url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
                if response.status_code == 200:
                    durations.append(response.elapsed.total_seconds())

    thread = threading.Thread(target=loop, daemon=True) if enabled else None
    if thread is not None:
        thread.start()
    try:
        yield durations
    finally:
        stop.set()
        if thread is not None:
            thread.join()


def ack_side(on: bool, commands: int) -> tuple[list[float], list[float]]:
    """(ack seconds, scrape seconds) for one bot."""
    env = {"METRICS_TOKEN": TOKEN} if on else {}
    with fakes() as (openai, slack), tempfile.TemporaryDirectory(prefix="bench-metrics-ack-") as tmp:
        jobs = [job["id"] for job in seed_jobs(openai, 25)]
        openai.latency = 0.5
        with running_bot(openai, slack, Path(tmp), **env) as bot:

            def batch(n: int) -> list[tuple[str, str]]:
                return get_commands(slack, jobs, n)

            url = f"{bot.url}/slack/events"
            context = multiprocessing.get_context("spawn")
            with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
                warm = batch(10)
                pool.submit(fire, url, warm, 25).result(120)
                wait_until(lambda: all(slack.responses_for(k) for k, _ in warm), 60, bot=bot)
                with scraping(bot, on) as scrapes:
                    sent = pool.submit(fire, url, batch(commands), 25).result(600)
                    wait_until(lambda: len(slack.responses) >= 10 + commands, 120, bot=bot)
    return [seconds for _, _, seconds, _ in sent], scrapes


def poll_side(on: bool, jobs_count: int, cycles_wanted: int) -> tuple[list[float], list[float]]:
    """(steady cycle wall seconds, scrape seconds) for one bot."""
    env = {"METRICS_TOKEN": TOKEN} if on else {}
    with (
        fakes() as (openai, slack),
        tempfile.TemporaryDirectory(prefix="bench-metrics-poll-") as tmp,
        database("sqlite", Path(tmp)) as db_url,
    ):
        jobs = seed_jobs(openai, jobs_count)
        seed_watches(db_url, jobs, ["C0001"])
        openai.latency = 0.05
        settings = {"DATABASE_URL": db_url, "POLL_INTERVAL_SECONDS": "1", **env}
        with running_bot(openai, slack, Path(tmp), **settings) as bot, scraping(bot, on) as scrapes:
            wait_until(lambda: cycle_starts(openai) > cycles_wanted, 30 + 5 * cycles_wanted, bot=bot)
        cycles = poll_cycles(openai.spans)[1:cycles_wanted]
    return [c.end - c.start for c in cycles], scrapes


def run(quick: bool) -> Result:
    commands, jobs_count, cycles_wanted = (50, 100, 3) if quick else (500, 1000, 6)
    result = Result(
        "metrics",
        "Metrics on vs off",
        params={
            "ack_commands": commands,
            "ack_concurrency": 25,
            "openai_latency_ack_s": 0.5,
            "poll_watched_jobs": jobs_count,
            "scrape_interval_s": SCRAPE_SECONDS,
        },
    )
    acks: dict[str, list[float]] = {}
    walls: dict[str, list[float]] = {}
    scrapes: list[float] = []
    for side in ("off", "on"):
        log(f"metrics/{side}: {commands} commands")
        acks[side], scraped = ack_side(side == "on", commands)
        scrapes += scraped
        log(f"metrics/{side}: {jobs_count} watched jobs, {cycles_wanted} poll cycles")
        walls[side], scraped = poll_side(side == "on", jobs_count, cycles_wanted)
        scrapes += scraped
    for label, p in (("p50", 50), ("p99", 99)):
        off, on = percentile(acks["off"], p), percentile(acks["on"], p)
        ratio = on / off if off and on is not None else None
        result.row(
            "ack latency",
            f"{label} off / on",
            f"{ms(off)} / {ms(on)}" + (f" (x{ratio:.3f})" if ratio else ""),
            f"on ≤ x{GOAL_RATIO} (reported)",
        )
    off_wall, on_wall = statistics.median(walls["off"]), statistics.median(walls["on"])
    result.row(
        f"poll cycle, {jobs_count} watched",
        "median wall off / on",
        f"{ms(off_wall)} / {ms(on_wall)} (x{on_wall / off_wall:.3f})",
        f"on ≤ x{GOAL_RATIO} (reported)",
    )
    if scrapes:
        scraped = f"{ms(statistics.median(scrapes))} / {ms(max(scrapes))}"
        result.row("GET /metrics", "scrape time, median / max", scraped)
    result.figures = {
        "ack_seconds": {
            side: {"p50": percentile(v, 50), "p99": percentile(v, 99)} for side, v in acks.items()
        },
        "poll_cycle_seconds": walls,
        "scrape_seconds": scrapes,
    }
    return result
