"""2. Poll cost: what one poll cycle costs OpenAI (requests) and the bot (wall time).

N watched jobs, all running and staying so; every OpenAI call takes 50 ms. The bot runs with
POLL_INTERVAL_SECONDS=1 so cycles follow one another; each cycle is read from the fake's request
log (it starts with `GET /fine_tuning/jobs` without `after`). The first cycle also claims every
lease, so it is reported apart from the steady state.

Cards: N watched jobs of which 20 are running, each with a card (an announcement). A running job
costs one more request per cycle (the newest page of its events, for its card); the others none.
The goal is ceil(N/100) + 1 + 20 requests per cycle.

For comparison, in the same run and against the same fake, the naive strategy: for each job, one
after another, retrieve it and list its events (what a bot without list pagination does).
"""

from __future__ import annotations

import math
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from bench.common import (
    Bot,
    FunctionalError,
    Result,
    TimedFakeOpenAI,
    cycle_starts,
    database,
    fakes,
    log,
    logged_cycle_seconds,
    ms,
    outcome_messages,
    poll_cycles,
    running_bot,
    secs,
    seed_jobs,
    seed_watches,
    skipped_cycles,
    store_unavailable,
    wait_until,
)

GOAL_CYCLE = 2.0
GOAL_OWN_PER_PAGE = 0.010
METRICS_TOKEN = "bench-poll-metrics-token-0123456789"
LATENCY = 0.05
CARD_RUNNING = 20
CARD_WATCHED = 1000


def naive_cycle(openai: TimedFakeOpenAI, job_ids: list[str]) -> tuple[int, float]:
    """Retrieve each job and list its events, one after another: (requests, seconds)."""
    before = len(openai.requests)
    headers = {"Authorization": f"Bearer {openai.api_key}"}
    started = time.perf_counter()
    with httpx.Client(base_url=openai.base_url, headers=headers, timeout=30) as client:
        for job_id in job_ids:
            client.get(f"/fine_tuning/jobs/{job_id}").raise_for_status()
            client.get(f"/fine_tuning/jobs/{job_id}/events").raise_for_status()
    return len(openai.requests) - before, time.perf_counter() - started


def cycle_histogram(bot: Bot) -> tuple[float, int]:
    """(sum of seconds, count) of the bot's own poll-cycle histogram: whole cycles, database,
    outbox and cards included, timed inside the bot."""
    response = httpx.get(
        f"{bot.url}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}, timeout=10
    )
    response.raise_for_status()
    total, count = 0.0, 0
    for family in text_string_to_metric_families(response.text):
        if family.name == "finetune_poll_cycle_seconds":
            for sample in family.samples:
                if sample.name.endswith("_sum"):
                    total = sample.value
                elif sample.name.endswith("_count"):
                    count = int(sample.value)
    return total, count


def run(quick: bool, stores: list[str]) -> Result:
    jobs_count = 100 if quick else 1000
    cycles_wanted = 2 if quick else 6  # the first (lease claiming) plus steady ones
    # The naive strategy costs about 2 requests of 55 ms per job; quick mode times a sample of
    # it and scales it up.
    naive_sample = 10 if quick else jobs_count
    goal_requests = math.ceil(jobs_count / 100) + 1
    result = Result(
        "poll",
        "2. Poll cost",
        params={
            "watched_running_jobs": jobs_count,
            "openai_latency_s": LATENCY,
            "poll_interval_s": 1,
            "poll_concurrency": 8,
            "cycles_measured": cycles_wanted,
            "naive_jobs_timed": naive_sample,
        },
    )
    job_ids: list[str] = []
    for kind in stores:
        reason = store_unavailable(kind)
        if reason:
            result.skip(f"{kind}: {reason}")
            continue
        with (
            fakes() as (openai, slack),
            tempfile.TemporaryDirectory(prefix=f"bench-poll-{kind}-") as tmp,
            database(kind, Path(tmp)) as db_url,
        ):
            log(f"poll/{kind}: seeding {jobs_count} running jobs and watches")
            jobs = seed_jobs(openai, jobs_count)
            job_ids = [job["id"] for job in jobs]
            seed_watches(db_url, jobs, ["C0001"])
            openai.latency = LATENCY
            with running_bot(
                openai,
                slack,
                Path(tmp),
                DATABASE_URL=db_url,
                POLL_INTERVAL_SECONDS="1",
                METRICS_TOKEN=METRICS_TOKEN,
            ) as bot:
                log(f"poll/{kind}: waiting for {cycles_wanted} complete cycles")
                # The bot's own histogram, read once the first (lease-claiming) cycle is in it and
                # again at the end: the difference is the steady cycles, timed whole.
                wait_until(lambda: cycle_histogram(bot)[1] >= 1, 30, bot=bot)
                first_sum, first_count = cycle_histogram(bot)
                cpu_first = bot.cpu_seconds()
                done = wait_until(
                    lambda: cycle_starts(openai) > cycles_wanted, 30 + 5 * cycles_wanted, bot=bot
                )
                # CPU first: the scrape's own work stays out of the window.
                cpu_last = bot.cpu_seconds()
                last_sum, last_count = cycle_histogram(bot)
                logs = bot.logs
            if not done:
                raise FunctionalError(f"poll/{kind}: fewer than {cycles_wanted} poll cycles in time")
            cycles = poll_cycles(openai.spans)[:cycles_wanted]
            if outcome_messages(slack) or slack.messages:
                result.fail(f"{kind}: nothing changed, yet {len(slack.messages)} messages were posted")
            kinds = {(s.method, s.path) for s in openai.spans}
            first, steady = cycles[0], cycles[1:]
            requests = [c.requests for c in steady]
            walls = [c.end - c.start for c in steady]
            own = [c.end - c.start - c.openai_seconds for c in steady]
            logged = logged_cycle_seconds(logs)[1:cycles_wanted]
            whole = (last_sum - first_sum) / max(1, last_count - first_count)
            openai_median = statistics.median(c.openai_seconds for c in steady)
            pages = statistics.median(requests)
            # Everything the bot does in a cycle but wait for OpenAI, per 100-job page.
            own_per_page = (whole - openai_median) / pages
            # The same, as CPU time: wall-clock gaps on a shared 2-core machine carry the fake's
            # and other processes' turns on the CPU; the bot's CPU seconds do not (10 ms ticks).
            timed = last_count - first_count
            cpu_per_page = (
                (cpu_last - cpu_first) / (timed * pages)
                # 10 ms clock ticks: a cycle or two (quick mode) cannot resolve a few ms a page.
                if cpu_first is not None and cpu_last is not None and timed >= 3
                else None
            )
            result.figures[kind] = {
                "first_cycle": {"requests": first.requests, "seconds": first.end - first.start},
                "steady_requests_per_cycle": requests,
                "steady_cycle_seconds": walls,
                "steady_cycle_seconds_median": statistics.median(walls),
                "steady_cycle_seconds_max": max(walls),
                "openai_seconds_per_cycle_median": openai_median,
                "bot_cycle_seconds_mean": whole,
                "bot_cycles_timed": last_count - first_count,
                "bot_own_seconds_per_page": own_per_page,
                "bot_cpu_seconds_per_page": cpu_per_page,
                "bot_seconds_between_requests_median": statistics.median(own),
                # What the fake adds to the configured 50 ms (JSON of 100 jobs, sorting): small.
                "fake_serving_seconds_per_request_median": openai.serving_seconds(),
                "logged_cycle_seconds": logged,
                "skipped_ticks": skipped_cycles(logs),
                "request_kinds": sorted(f"{m} {p}" for m, p in kinds),
            }
            variant = f"bot, {kind}"
            result.row(
                variant,
                "OpenAI requests per cycle",
                f"{max(requests)} (first cycle {first.requests})",
                f"≤ {goal_requests}",
                max(requests) <= goal_requests,
            )
            result.row(
                variant,
                "cycle wall time, median / max",
                f"{secs(statistics.median(walls))} / {secs(max(walls))}"
                f" (first {secs(first.end - first.start)})",
                f"< {GOAL_CYCLE:g} s",
                max(walls) < GOAL_CYCLE,
            )
            result.row(
                variant,
                "bot's own time between requests / fake's per request (median)",
                f"{ms(statistics.median(own))} / {ms(openai.serving_seconds())}"
                + (f"; whole cycle incl. DB (bot log) {secs(statistics.median(logged))}" if logged else ""),
            )
            result.row(
                variant,
                "bot's own time per 100-job page, whole cycle (DB, outbox, cards; its histogram)",
                f"{ms(own_per_page)} (cycle {ms(whole)} of which OpenAI {ms(openai_median)})",
                f"< {GOAL_OWN_PER_PAGE * 1000:.0f} ms",
                own_per_page < GOAL_OWN_PER_PAGE,
            )
            result.row(
                variant,
                "bot's CPU time per 100-job page, whole cycle",
                f"{ms(cpu_per_page)} over {timed} cycles",
                f"< {GOAL_OWN_PER_PAGE * 1000:.0f} ms",
                None if cpu_per_page is None else cpu_per_page < GOAL_OWN_PER_PAGE,
            )

        # The figure (1,000 watched, 20 running) even in quick mode: it takes seconds.
        card_cycles(result, kind, CARD_WATCHED, cycles_wanted)

    if job_ids:
        # Same fake state and latency, the bot stopped so the two do not compete for the CPU.
        with fakes() as (openai, _slack):
            jobs = seed_jobs(openai, naive_sample)
            openai.latency = LATENCY
            log(f"poll/naive: retrieve + list events for {naive_sample} jobs, one after another")
            count, seconds = naive_cycle(openai, [job["id"] for job in jobs])
        scale = jobs_count / naive_sample
        result.figures["naive"] = {
            "jobs_timed": naive_sample,
            "requests": count,
            "seconds": seconds,
            "requests_per_cycle": round(count * scale),
            "cycle_seconds": seconds * scale,
        }
        note = "" if scale == 1 else f" (timed on {naive_sample} jobs, scaled up {scale:g} times)"
        result.row(
            "naive (retrieve + events, sequential)",
            "OpenAI requests per cycle",
            f"{round(count * scale)}{note}",
            f"≤ {goal_requests}",
            round(count * scale) <= goal_requests,
            baseline=True,
        )
        result.row(
            "naive (retrieve + events, sequential)",
            "cycle wall time",
            f"{secs(seconds * scale)}{note}",
            f"< {GOAL_CYCLE:g} s",
            seconds * scale < GOAL_CYCLE,
            baseline=True,
        )
    return result


def card_cycles(result: Result, kind: str, jobs_count: int, cycles_wanted: int) -> None:
    """Requests per cycle with `jobs_count` watched jobs with cards, CARD_RUNNING of them running."""
    goal = math.ceil(jobs_count / 100) + 1 + CARD_RUNNING
    with (
        fakes() as (openai, slack),
        tempfile.TemporaryDirectory(prefix=f"bench-cards-{kind}-") as tmp,
        database(kind, Path(tmp)) as db_url,
    ):
        log(f"poll/{kind}: {jobs_count} watched jobs with cards, {CARD_RUNNING} running")
        jobs = seed_jobs(openai, jobs_count - CARD_RUNNING, status="queued")
        jobs += seed_jobs(openai, CARD_RUNNING, status="running")
        for step, job in enumerate(jobs[-CARD_RUNNING:], start=1):
            data = {"step": step, "total_steps": 100, "train_loss": 1.0}
            openai.add_event(job["id"], f"Step {step}/100", type="metrics", data=data)
        seed_watches(db_url, jobs, ["C0001"])
        # Each watch has a card (its announcement), a message the fake Slack has, so editing it
        # works and the running jobs' cards are followed every cycle, as in production.
        cards = [{"job": j["id"], "ts": slack.seed_message("C0001", f"card of {j['id']}")} for j in jobs]
        engine = sa.create_engine(db_url.replace("postgresql://", "postgresql+psycopg://"))
        with engine.begin() as conn:
            conn.execute(
                sa.text("UPDATE finetune_watches SET announcement_ts = :ts WHERE job_id = :job"), cards
            )
        engine.dispose()
        openai.latency = LATENCY
        with running_bot(openai, slack, Path(tmp), DATABASE_URL=db_url, POLL_INTERVAL_SECONDS="1") as bot:
            done = wait_until(lambda: cycle_starts(openai) > cycles_wanted, 30 + 5 * cycles_wanted, bot=bot)
        if not done:
            raise FunctionalError(f"poll/{kind}: fewer than {cycles_wanted} poll cycles with cards in time")
        cycles = poll_cycles(openai.spans)[:cycles_wanted]
        events = [s for s in openai.spans if s.path.endswith("/events")]
        running = {j["id"] for j in jobs[-CARD_RUNNING:]}
        strays = {s.path.split("/")[3] for s in events} - running
        requests = [c.requests for c in cycles]
        result.figures[f"{kind}_cards"] = {
            "watched": jobs_count,
            "running": CARD_RUNNING,
            "requests_per_cycle": requests,
            "events_requests": len(events),
        }
        result.row(
            f"bot with cards, {kind}",
            f"OpenAI requests per cycle ({jobs_count} watched, {CARD_RUNNING} running)",
            str(max(requests)),
            f"≤ {goal}",
            max(requests) <= goal,
        )
        if max(requests) > goal:
            result.fail(f"{kind}: {max(requests)} OpenAI requests in a cycle with cards, more than {goal}")
        if strays:
            result.fail(f"{kind}: events were read for {len(strays)} jobs that are not running")
        if not events:
            result.fail(f"{kind}: no events request: the running jobs' cards were not followed")
