"""4. Notification latency: from the moment OpenAI says `succeeded` to the Slack post.

Polling: POLL_INTERVAL_SECONDS=2; each sample first waits a different fraction of an interval
after the previous announcement (evenly spread, in shuffled order), so the flips land at every
phase of the poll cycle, as real jobs do, and ten samples already give an unbiased picture.
Webhook: OPENAI_WEBHOOK_SECRET set (polling becomes an hourly reconciliation) and the signed
event is delivered right after the flip, as OpenAI would. The clock starts just before the fake
changes the job's status and stops when the fake Slack records the post.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import random
import tempfile
import time
import uuid
from pathlib import Path

import httpx

from bench.common import (
    FunctionalError,
    Result,
    cycle_starts,
    fakes,
    log,
    outcome_messages,
    percentile,
    running_bot,
    secs,
    seed_jobs,
    seed_watches,
    summary,
    wait_until,
)

POLL_INTERVAL = 2.0
GOAL_WEBHOOK = 1.0
WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"finetune-bot-bench-webhook-key-32").decode()


def signed_webhook(payload: dict[str, object]) -> tuple[bytes, dict[str, str]]:
    """Standard Webhooks signing, as OpenAI does it: HMAC-SHA256 of `{id}.{timestamp}.{body}`."""
    body = json.dumps(payload)
    webhook_id = f"wh_{uuid.uuid4().hex}"
    timestamp = str(int(time.time()))
    key = base64.b64decode(WEBHOOK_SECRET.removeprefix("whsec_"))
    digest = hmac.new(key, f"{webhook_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    headers = {
        "webhook-id": webhook_id,
        "webhook-timestamp": timestamp,
        "webhook-signature": "v1," + base64.b64encode(digest).decode(),
        "content-type": "application/json",
    }
    return body.encode(), headers


def measure(samples: int, *, webhook: bool) -> tuple[list[float], list[float]]:
    """(latencies, webhook HTTP response times)."""
    env = (
        {"OPENAI_WEBHOOK_SECRET": WEBHOOK_SECRET, "RECONCILE_INTERVAL_SECONDS": "3600"}
        if webhook
        else {"POLL_INTERVAL_SECONDS": f"{POLL_INTERVAL:g}"}
    )
    # Stratified phases: a few random draws can all land late in the interval and flatter polling.
    phases = [(i + 0.5) / samples * POLL_INTERVAL for i in range(samples)]
    random.Random(5).shuffle(phases)
    latencies: list[float] = []
    responses: list[float] = []
    with fakes() as (openai, slack), tempfile.TemporaryDirectory(prefix="bench-latency-") as tmp:
        db_url = f"sqlite:///{Path(tmp) / 'finetune-bot.db'}"
        jobs = seed_jobs(openai, samples)
        # One channel per job: no sample waits behind another's rate limit.
        for i, job in enumerate(jobs):
            seed_watches(db_url, [job], [f"C{i:04d}"])
        with running_bot(openai, slack, Path(tmp), **env) as bot, httpx.Client(timeout=10) as client:
            # The start-up cycle (with webhooks, the only one for an hour) must be over first.
            if not wait_until(lambda: cycle_starts(openai) >= 1, 30, bot=bot):
                raise FunctionalError("no poll cycle at start-up")
            time.sleep(0.5)
            for job, phase in zip(jobs, phases, strict=True):
                if not webhook:
                    time.sleep(phase)
                flipped = time.time()
                openai.set_status(job["id"], "succeeded")
                if webhook:
                    body, headers = signed_webhook(openai.webhook_payload(job["id"]))
                    sent = time.perf_counter()
                    response = client.post(f"{bot.url}/openai/webhook", content=body, headers=headers)
                    responses.append(time.perf_counter() - sent)
                    if response.status_code != 200:
                        raise FunctionalError(
                            f"webhook answered {response.status_code}: {response.text[:200]}"
                        )

                def posted(job_id: str = job["id"]) -> list[float]:
                    return [m.time for k, m in outcome_messages(slack) if k.startswith(job_id + ":")]

                if not wait_until(posted, 30, bot=bot, interval=0.005):
                    raise FunctionalError(
                        f"{job['id']} was never announced ({'webhook' if webhook else 'polling'})"
                    )
                latencies.append(posted()[0] - flipped)
            keys = [k for k, _ in outcome_messages(slack)]
            if len(keys) != len(set(keys)):
                raise FunctionalError(f"{len(keys) - len(set(keys))} duplicate announcements")
    return latencies, responses


def run(quick: bool) -> Result:
    samples = 2 if quick else 10
    result = Result(
        "latency",
        "4. Notification latency",
        params={"samples_each": samples, "poll_interval_s": POLL_INTERVAL, "reconcile_interval_s": 3600},
    )
    log(f"latency: {samples} samples with polling every {POLL_INTERVAL:g} s")
    polled, _ = measure(samples, webhook=False)
    log(f"latency: {samples} samples with webhooks")
    hooked, responses = measure(samples, webhook=True)
    result.figures = {
        "polling_seconds": summary(polled),
        "polling_samples": polled,
        "webhook_seconds": summary(hooked),
        "webhook_samples": hooked,
        "webhook_http_response_seconds": summary(responses),
    }
    result.row(
        f"polling, interval {POLL_INTERVAL:g} s",
        "flip → post, median / max",
        f"{secs(percentile(polled, 50))} / {secs(max(polled))} (mean {secs(sum(polled) / len(polled))})",
    )
    result.row(
        "webhook",
        "flip → post, median / max",
        f"{secs(percentile(hooked, 50))} / {secs(max(hooked))}",
        f"< {GOAL_WEBHOOK:g} s",
        max(hooked) < GOAL_WEBHOOK,
    )
    result.row("webhook", "webhook answered (HTTP 200) after, median", secs(percentile(responses, 50)))
    return result
