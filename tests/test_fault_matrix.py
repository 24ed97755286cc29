"""Faults against a real bot process: a condensed run of the fault matrix, end to end.

The matrix itself — every way OpenAI or Slack can fail, against every command, the poller, the
announcements, the outcome posts and response_url — is tests/test_inprocess_faults.py, where the
production parts run in the test's event loop on a fake clock. What only a real process shows
stays here, in one run of one bot through a fault of every kind, one group after another:

- the process never dies and stops cleanly afterwards (SIGTERM, exit 0), with no secret in its
  logs or anything that reached Slack;
- its waits are real: Retry-After honoured in wall time between the requests (OpenAI, Slack's API
  and response_url), a hung OpenAI cut off by the real socket timeout (OPENAI_TIMEOUT_SECONDS);
- its real scheduler (POLL_INTERVAL_SECONDS=1) rides out a failing list and a Slack outage
  and still announces each outcome exactly once.
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Any

import httpx

from tests.fakes import FakeOpenAI, FakeSlack
from tests.fakes.openai import RecordedRequest
from tests.fakes.slack import RecordedMessage
from tests.harness import Harness, all_text, start_bot, wait_until
from tests.test_inprocess_faults import (
    FAULTS,
    LIST_OR_RETRIEVE,
    POLL_CHANNEL,
    SLACK_CHANNEL,
    USER,
    Cmd,
    expected_fragments,
    not_a_lookup,
    text_of,
)

# The process' own log format: "<time> WARNING <logger> … message".
REPLY_FAILED = re.compile(r" WARNING .*could not reply to .* through response_url: HTTP 404")


def alive(h: Harness) -> bool:
    return h.bot.process is not None and h.bot.process.poll() is None


def carries_outcome(params: dict[str, Any], job_id: str) -> bool:
    key = ((params.get("metadata") or {}).get("event_payload") or {}).get("key", "")
    return str(key).startswith(job_id + ":")


def outcomes(h: Harness, job_id: str) -> list[RecordedMessage]:
    return [m for m in h.slack.messages if carries_outcome(m.params, job_id)]


def wait_single_outcome(h: Harness, job_id: str, timeout: float = 30.0) -> RecordedMessage:
    h.slack.wait_for(lambda s: outcomes(h, job_id), timeout=timeout, message=f"the outcome of {job_id}")
    h.wait_poll_cycles(2)  # a complete poll/outbox cycle after the post: still exactly one
    found = outcomes(h, job_id)
    assert len(found) == 1, [(m.channel, m.text) for m in found]
    return found[0]


def start_job(h: Harness, channel: str) -> tuple[str, RecordedMessage]:
    before = set(h.openai.jobs)
    response, _ = h.command("create file-abc123", channel_id=channel)
    assert response.status_code == 200
    h.slack.wait_for(lambda s: s.messages_in(channel), message=f"an announcement in {channel}")
    [job_id] = set(h.openai.jobs) - before
    return job_id, h.slack.messages_in(channel)[-1]


def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]


def test_the_process_rides_out_a_fault_of_every_kind(tmp_path: Path) -> None:
    with FakeOpenAI() as openai, FakeSlack() as slack:
        bot = start_bot(
            openai,
            slack,
            tmp_path,
            POLL_INTERVAL_SECONDS="1",
            OPENAI_TIMEOUT_SECONDS="2",
            FINETUNE_ADMINS=USER,
        )
        try:
            h = Harness(bot, openai, slack)
            openai_faults_on_commands(h)
            poller_rides_out_a_failing_list(h)
            slack_outage_on_an_outcome(h)
            response_url_faults(h)
            # Still serving: an acknowledgement, a health check, a command answered.
            response, _ = h.command("help")
            assert response.status_code == 200 and "create" in all_text(response.json())
            assert httpx.get(f"{bot.url}/healthz", timeout=5).status_code == 200
            h.control()
            assert alive(h), bot.logs[-5000:]
            assert openai.schema_errors == []
            h.assert_no_secrets()
        finally:
            assert bot.stop() == 0, bot.logs[-5000:]


def openai_faults_on_commands(h: Harness) -> None:
    """Every OpenAI fault at once, each on a `get` of its own job: the reply, the attempts, and
    the real wait between them (Retry-After; the socket timeout of a hung request)."""
    cmds: dict[str, Cmd] = {}
    for fault in FAULTS:
        job_id = f"ftjob-e2e-{fault.name}"
        cmds[fault.name] = Cmd(f"get {job_id}", "GET", f"/fine_tuning/jobs/{job_id}", job_id)
        h.openai.add_job(id=job_id, status="running")
        h.openai.fail_next(**fault.kwargs, path=re.escape(cmds[fault.name].path), method="GET", times=3)
    keys = {name: h.command(cmd.text)[1] for name, cmd in cmds.items()}
    problems: list[str] = []
    for fault in FAULTS:
        cmd = cmds[fault.name]
        text = all_text(h.reply(keys[fault.name], timeout=30))
        problems += [
            f"{fault.name}: {f!r} not in {text!r}" for f in expected_fragments(fault, cmd) if f not in text
        ]
        attempts: list[RecordedRequest] = h.openai.requests_to(re.escape(cmd.path), "GET")
        if len(attempts) != fault.attempts:
            problems.append(f"{fault.name}: {len(attempts)} attempts, expected {fault.attempts}")
        waited = gaps([r.time for r in attempts])
        if fault.retry_after is not None and any(gap < fault.retry_after - 0.05 for gap in waited):
            problems.append(f"{fault.name}: Retry-After not honoured, gaps {waited}")
        if fault.hung and any(gap < 1.9 for gap in waited):  # each given up after the 2 s timeout
            problems.append(f"{fault.name}: a hung attempt given up too soon, gaps {waited}")
    assert not problems, "\n".join(problems) + "\n" + h.openai.describe()
    assert h.slack.messages == []
    assert alive(h), h.bot.logs[-5000:]
    h.openai.clear_faults()  # three of each were set; those that gave up at once left two


def poller_rides_out_a_failing_list(h: Harness) -> None:
    """The real scheduler's cycles: the first one's list hangs, then fails twice; the next gets
    through on its second attempt and announces, once."""
    job_id, announcement = start_job(h, POLL_CHANNEL)
    h.openai.fail_next(kind="hang", path=LIST_OR_RETRIEVE, method="GET", query=not_a_lookup)
    h.openai.fail_next(503, path=LIST_OR_RETRIEVE, method="GET", times=3, query=not_a_lookup)
    h.openai.set_status(job_id, "succeeded")
    outcome = wait_single_outcome(h, job_id, timeout=40)
    assert outcome.channel == POLL_CHANNEL and outcome.thread_ts == announcement.ts
    assert "succeeded" in text_of(outcome)
    assert not h.openai.pending_faults
    assert alive(h), h.bot.logs[-5000:]


def slack_outage_on_an_outcome(h: Harness) -> None:
    """The outcome post gets a 500 (deferred; its next attempt checks the thread first), then a
    429 (waited out in wall time): posted once, in the thread."""
    job_id, announcement = start_job(h, SLACK_CHANNEL)
    h.slack.fail_next("chat.postMessage", channel=SLACK_CHANNEL, status=500)
    h.slack.fail_next("chat.postMessage", channel=SLACK_CHANNEL, retry_after=1)
    h.openai.set_status(job_id, "succeeded")
    outcome = wait_single_outcome(h, job_id)
    assert outcome.channel == SLACK_CHANNEL and outcome.thread_ts == announcement.ts
    assert h.slack.calls_to("conversations.replies")
    posts = [c for c in h.slack.calls_to("chat.postMessage") if carries_outcome(c.params, job_id)]
    assert [c.status for c in posts] == [500, 429, 200], [c.status for c in posts]
    assert posts[2].time - posts[1].time >= 1.0  # slack_sdk waited Retry-After
    assert alive(h), h.bot.logs[-5000:]


def response_url_faults(h: Harness) -> None:
    """A 500 and a 429 on response_url are retried (the 429 after Retry-After, in wall time); an
    expired URL (404) is reported in the process' log, not retried."""
    for fault, first in (({"status": 500}, 500), ({"status": 429, "retry_after": 1}, 429)):
        h.slack.fail_next("response_url", **fault)
        _, key = h.command("list")
        h.slack.wait_for(lambda s, key=key: [r for r in s.responses_for(key) if r.status == 200], timeout=15)
        responses = h.slack.responses_for(key)
        assert [r.status for r in responses] == [first, 200]
        if "retry_after" in fault:
            assert responses[1].time - responses[0].time >= 0.95
    log_start = len(h.bot.logs)
    h.slack.fail_next("response_url", error="expired_url")
    _, key = h.command("list")
    wait_until(lambda: REPLY_FAILED.search(h.bot.logs[log_start:]), 15, "the failed reply to be logged")
    assert [r.status for r in h.slack.responses_for(key)] == [404]
    assert "could not reply" not in h.bot.logs[:log_start]  # the retried ones went through
    assert alive(h), h.bot.logs[-5000:]
