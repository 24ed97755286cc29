"""1b. Reply latency users feel at a realistic rate (issue 15).

`/finetune get ftjob-…` commands arrive at a steady 20 a second for a minute (quick mode: 3 s),
open loop: each is sent at its scheduled time whether or not earlier ones were answered, on a
connection of its own, as Slack sends them. Every OpenAI call takes 500 ms. The figure is the time
from sending a command to its reply reaching `response_url`, what the user waits for; the goal is
p99 ≤ 700 ms (500 ms of OpenAI plus 200 ms of ours), reported, not enforced.

The ack benchmark's reply figure (p50 several seconds) comes from 25 commands in flight at once
on top of a backlog, which queues on the OpenAI connection cap: an overload, not this rate.
The load generator runs in its own process, for the same reason as the ack benchmark's.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import multiprocessing
import tempfile
import time
import urllib.parse
from pathlib import Path

from bench.ack import _read_response, get_commands
from bench.common import (
    FunctionalError,
    Result,
    fakes,
    log,
    ms,
    running_bot,
    seed_jobs,
    summary,
    wait_until,
)
from tests.bot_process import SIGNING_SECRET
from tests.fakes import sign_slack_request
from tests.harness import all_text

RATE = 20.0
LATENCY = 0.5
GOAL_P99 = 0.700


def fire_at_rate(
    url: str, requests: list[tuple[str, str]], rate: float
) -> list[tuple[str, float, float, int]]:
    """In a child process: send request i at start + i / rate, each on a new connection.
    Returns (key, wall-clock send time, seconds to the HTTP response, status)."""
    return asyncio.run(_fire_at_rate(url, requests, rate))


async def _fire_at_rate(
    url: str, requests: list[tuple[str, str]], rate: float
) -> list[tuple[str, float, float, int]]:
    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    results: list[tuple[str, float, float, int]] = []
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.1

    async def one(i: int, key: str, body: str) -> None:
        await asyncio.sleep(max(0.0, start + i / rate - loop.time()))
        headers = sign_slack_request(body, SIGNING_SECRET)
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        raw = body.encode()
        message = (
            f"POST {parts.path} HTTP/1.1\r\nHost: {host}:{port}\r\n{head}"
            f"Content-Length: {len(raw)}\r\nConnection: close\r\n\r\n"
        ).encode() + raw
        sent_at = time.time()
        started = time.perf_counter()
        try:
            reader, writer = await asyncio.open_connection(host, port)
            try:
                writer.write(message)
                await writer.drain()
                status, _ = await _read_response(reader)
            finally:
                writer.close()
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
            status = 0
        results.append((key, sent_at, time.perf_counter() - started, status))

    await asyncio.gather(*(one(i, key, body) for i, (key, body) in enumerate(requests)))
    return results


def run(quick: bool) -> Result:
    seconds = 3 if quick else 60
    commands = int(RATE * seconds)
    warmup = 5
    result = Result(
        "reply",
        "1b. Reply latency at 20 commands/s",
        params={
            "rate_per_s": RATE,
            "seconds": seconds,
            "commands": commands,
            "warmup_commands": warmup,
            "openai_latency_s": LATENCY,
            "command": "get ftjob-…",
            "store": "sqlite",
        },
    )
    with fakes() as (openai, slack), tempfile.TemporaryDirectory(prefix="bench-reply-") as tmp:
        jobs = [job["id"] for job in seed_jobs(openai, 25)]
        openai.latency = LATENCY
        with running_bot(openai, slack, Path(tmp)) as bot:
            url = f"{bot.url}/slack/events"

            def batch(n: int) -> list[tuple[str, str]]:
                return get_commands(slack, jobs, n)

            context = multiprocessing.get_context("spawn")
            with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
                # Warm-up: the first requests pay for lazy imports and new connections.
                warm = batch(warmup)
                pool.submit(fire_at_rate, url, warm, RATE).result(120)
                wait_until(lambda: all(slack.responses_for(k) for k, _ in warm), 60, bot=bot)
                log(f"reply: {commands} commands at {RATE:g}/s for {seconds} s, OpenAI latency {LATENCY}s")
                work = batch(commands)
                sent = pool.submit(fire_at_rate, url, work, RATE).result(seconds + 300)
            keys = {key: sent_at for key, sent_at, _, _ in sent}
            got_all = wait_until(lambda: all(slack.responses_for(k) for k in keys), 120, bot=bot)
            delays, errors = [], 0
            for key, sent_at in keys.items():
                response = slack.responses_for(key)
                if not response:
                    continue
                delays.append(response[0].time - sent_at)
                if ":warning:" in all_text(response[0].json or {}):
                    errors += 1
            retrieves = len(openai.requests_to(r"/fine_tuning/jobs/[^/]+", "GET"))

    acks = summary([s for _, _, s, _ in sent])
    replies = summary(delays)
    bad_status = [status for *_, status in sent if status != 200]
    result.figures = {
        "reply_seconds": replies,
        "ack_seconds": acks,
        "replies_with_error": errors,
        "non_200": len(bad_status),
        "openai_retrieve_requests": retrieves,
    }
    variant = f"{RATE:g} cmds/s for {seconds} s, OpenAI {LATENCY * 1000:.0f} ms"
    p99 = replies["p99"]
    result.row(variant, "reply p50 / p95", f"{ms(replies['p50'])} / {ms(replies['p95'])}")
    result.row(
        variant, "reply p99", ms(p99), f"≤ {GOAL_P99 * 1000:.0f} ms", p99 is not None and p99 <= GOAL_P99
    )
    result.row(variant, "reply max", ms(replies["max"]))
    result.row(variant, "ack p50 / p99", f"{ms(acks['p50'])} / {ms(acks['p99'])}")
    result.row(variant, "replies via response_url", f"{len(delays)} of {commands} ({errors} errors)")
    if bad_status:
        result.fail(
            f"{len(bad_status)} commands were not acknowledged with 200 (statuses {sorted(set(bad_status))})"
        )
    if not got_all:
        result.fail(f"only {len(delays)} of {commands} replies reached response_url within 120 s")
    if errors:
        result.notes.append(f"{errors} replies said OpenAI was unavailable")
    if commands + warmup > retrieves:
        raise FunctionalError(f"only {retrieves} OpenAI retrieve requests for {commands + warmup} commands")
    return result
