"""1. Acknowledgement latency: Slack drops a slash command that is not answered within 3 s.

N Slack-signed `/finetune get ftjob-…` commands (valid, so each one really calls OpenAI after the
acknowledgement) go to `POST /slack/events` at a fixed concurrency while every OpenAI call takes
500 ms. The figure is the time to the HTTP response (the acknowledgement); the replies that follow
through `response_url` are counted too, so an ack that skipped the work would not look fast.

The load generator runs in its own process: in this one the fakes' threads validate every
response against the OpenAPI spec, and their share of the GIL would otherwise be timed as the
bot's latency.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import multiprocessing
import tempfile
import time
import urllib.parse
import uuid
from pathlib import Path

from bench.common import (
    FunctionalError,
    Result,
    fakes,
    log,
    ms,
    percentile,
    running_bot,
    secs,
    seed_jobs,
    summary,
    wait_until,
)
from tests.bot_process import SIGNING_SECRET
from tests.fakes import FakeSlack, sign_slack_request
from tests.harness import all_text

SLACK_DEADLINE = 3.0
GOAL_P99 = 0.100


def get_commands(slack: FakeSlack, jobs: list[str], n: int) -> list[tuple[str, str]]:
    """`n` `/finetune get` command bodies (form-encoded, not yet signed) over `jobs`, each with its
    own response_url key, as (key, body). Shared by the benchmarks that send commands."""
    out = []
    for i in range(n):
        key = uuid.uuid4().hex
        fields = slack.slash_command_payload(
            f"get {jobs[i % len(jobs)]}", response_url=slack.response_url(key)
        )
        out.append((key, urllib.parse.urlencode(fields)))
    return out


def fire(url: str, requests: list[tuple[str, str]], concurrency: int) -> list[tuple[str, float, float, int]]:
    """In a child process: send every (key, body) signed, `concurrency` at a time.
    Returns (key, wall-clock send time, seconds to the HTTP response, status)."""
    answered = fire_read(url, requests, concurrency)
    return [(key, sent_at, seconds, status) for key, sent_at, seconds, status, _ in answered]


def fire_read(
    url: str, requests: list[tuple[str, str]], concurrency: int
) -> list[tuple[str, float, float, int, bytes]]:
    """`fire`, keeping each response's body too (an options request's answer is in it)."""
    return asyncio.run(_fire(url, requests, concurrency))


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """Read one HTTP/1.1 response off a keep-alive connection; returns its status and body."""
    status = int((await reader.readline()).split()[1])
    length, chunked = 0, False
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
        elif name.strip().lower() == "transfer-encoding" and "chunked" in value.lower():
            chunked = True
    if not chunked:
        return status, await reader.readexactly(length)
    body = b""
    while (size := int((await reader.readline()).split(b";")[0], 16)) > 0:
        body += (await reader.readexactly(size + 2))[:-2]
    await reader.readline()
    return status, body


async def _fire(
    url: str, requests: list[tuple[str, str]], concurrency: int
) -> list[tuple[str, float, float, int, bytes]]:
    # A bare HTTP/1.1 client on asyncio streams: httpx's own per-request CPU cost (several ms)
    # made the load generator, not the bot, the bottleneck at this concurrency.
    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    results: list[tuple[str, float, float, int, bytes]] = []
    queue = list(reversed(requests))

    async def worker() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while queue:
                key, body = queue.pop()
                # Signed at send time, as Slack does (the bot refuses timestamps 5 minutes old).
                headers = sign_slack_request(body, SIGNING_SECRET)
                head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
                raw = body.encode()
                message = (
                    f"POST {parts.path} HTTP/1.1\r\nHost: {host}:{port}\r\n{head}"
                    f"Content-Length: {len(raw)}\r\n\r\n"
                ).encode() + raw
                sent_at = time.time()
                started = time.perf_counter()
                try:
                    writer.write(message)
                    await writer.drain()
                    status, body = await _read_response(reader)
                except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
                    status, body = 0, b""
                results.append((key, sent_at, time.perf_counter() - started, status, body))
                if status == 0:  # the connection is in an unknown state: start a new one
                    writer.close()
                    reader, writer = await asyncio.open_connection(host, port)
        finally:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results


def run(quick: bool) -> Result:
    commands, concurrency, warmup = (50, 25, 5) if quick else (500, 25, 10)
    baseline = 10 if quick else 50
    latency = 0.5
    result = Result(
        "ack",
        "1. Ack latency",
        params={
            "commands": commands,
            "concurrency": concurrency,
            "warmup_commands": warmup,
            "baseline_commands_sequential": baseline,
            "openai_latency_s": latency,
            "command": "get ftjob-…",
            "store": "sqlite",
        },
    )
    with fakes() as (openai, slack), tempfile.TemporaryDirectory(prefix="bench-ack-") as tmp:
        jobs = [job["id"] for job in seed_jobs(openai, 25)]
        openai.latency = latency
        with running_bot(openai, slack, Path(tmp)) as bot:
            url = f"{bot.url}/slack/events"

            def batch(n: int) -> list[tuple[str, str]]:
                return get_commands(slack, jobs, n)

            context = multiprocessing.get_context("spawn")
            with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
                # Warm-up: the first requests pay for lazy imports and new connections.
                log(f"ack: {warmup} warm-up commands")
                warm = batch(warmup)
                pool.submit(fire, url, warm, concurrency).result(120)
                wait_until(lambda: all(slack.responses_for(k) for k, _ in warm), 60, bot=bot)
                # Baseline: one command at a time, so no ack waits behind another's work.
                log(f"ack: {baseline} commands one at a time (baseline)")
                alone = pool.submit(fire, url, batch(baseline), 1).result(120)
                wait_until(lambda: len(slack.responses) >= warmup + baseline, 60, bot=bot)
                log(f"ack: {commands} commands at concurrency {concurrency}, OpenAI latency {latency}s")
                work = batch(commands)
                cpu_before = bot.cpu_seconds()
                sent = pool.submit(fire, url, work, concurrency).result(600)

            acks = [seconds for _, _, seconds, _ in sent]
            bad_status = [status for *_, status in sent if status != 200]
            keys = {key: sent_at for key, sent_at, _, _ in sent}
            # The replies come after OpenAI answered; wait for all of them (or say how many are lost).
            got_all = wait_until(lambda: all(slack.responses_for(k) for k in keys), 120, bot=bot)
            replies, error_replies, reply_delays = 0, 0, []
            for key, sent_at in keys.items():
                response = slack.responses_for(key)
                if not response:
                    continue
                replies += 1
                reply_delays.append(response[0].time - sent_at)
                if ":warning:" in all_text(response[0].json or {}):
                    error_replies += 1
            retrieves = len(openai.requests_to(r"/fine_tuning/jobs/[^/]+", "GET"))
            cpu_after = bot.cpu_seconds()
            # The bot's CPU per command (ack and the work after it): at this concurrency the one
            # event loop is the bottleneck, so this is what sets the ack latency.
            cpu_per_command = (
                (cpu_after - cpu_before) / commands
                if cpu_after is not None and cpu_before is not None
                else None
            )

    stats = summary(acks)
    base = summary([seconds for _, _, seconds, _ in alone])
    over = sum(1 for a in acks if a > SLACK_DEADLINE)
    result.figures = {
        "ack_seconds": stats,
        "ack_over_3s": over,
        "ack_over_3s_share": over / len(acks) if acks else None,
        "non_200": len(bad_status),
        "replies_received": replies,
        "replies_with_error": error_replies,
        "reply_seconds": summary(reply_delays),
        "openai_retrieve_requests": retrieves,
        "bot_startup_seconds": bot.startup_seconds,
        "bot_cpu_seconds_per_command": cpu_per_command,
        "baseline_sequential_ack_seconds": base,
    }
    variant = f"{commands} cmds, conc {concurrency}, OpenAI {latency * 1000:.0f} ms"
    p99 = stats["p99"]
    result.row(variant, "ack p50 / p95", f"{ms(stats['p50'])} / {ms(stats['p95'])}")
    result.row(variant, "ack p99", ms(p99), "< 100 ms", p99 is not None and p99 < GOAL_P99)
    result.row(variant, "ack max", ms(stats["max"]))
    result.row(variant, "bot CPU per command (ack + reply)", ms(cpu_per_command))
    result.row(
        variant,
        "acks over 3 s",
        f"{over} of {len(acks)} ({100 * over / max(1, len(acks)):.1f} %)",
        "0",
        over == 0,
    )
    result.row(
        variant,
        "replies via response_url",
        f"{replies} of {commands} ({error_replies} errors); p50 {secs(percentile(reply_delays, 50))}, "
        f"max {secs(max(reply_delays) if reply_delays else None)}",
    )
    result.row(f"{baseline} cmds one at a time", "ack p50 / max", f"{ms(base['p50'])} / {ms(base['max'])}")
    if bad_status:
        result.fail(
            f"{len(bad_status)} commands were not acknowledged with 200 (statuses {sorted(set(bad_status))})"
        )
    if not got_all:
        result.fail(f"only {replies} of {commands} replies reached response_url within 120 s")
    if error_replies:
        result.notes.append(
            f"{error_replies} replies said OpenAI was unavailable (pool or retry budget exhausted)"
        )
    if commands + warmup > retrieves:
        raise FunctionalError(f"only {retrieves} OpenAI retrieve requests for {commands + warmup} commands")
    return result
