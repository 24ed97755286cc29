"""Fault matrix: every way OpenAI or Slack can fail, against every command and the poller.

One bot serves the whole module (POLL_INTERVAL_SECONDS=1, OPENAI_TIMEOUT_SECONDS=2 so a hung
OpenAI resolves in seconds); the fakes are reset between tests and every test leaves no job
followed. For OpenAI faults the six commands of one fault run concurrently (each on its own path,
each with its own injected fault), which keeps the module under three minutes.

What must hold: the user gets a clear message (OpenAI's own for 400/409, "credentials" for
401/403, "No fine-tuning job" for 404, "unavailable" for 429/5xx/timeouts/garbage), retries happen
exactly where they should, the poller rides out the fault and still announces exactly once, a
Slack refusal is retried or redirected to a DM, and the process never dies.
"""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.bot_process import free_port
from tests.fakes import FakeOpenAI, FakeSlack
from tests.fakes.slack import RecordedMessage
from tests.harness import Harness, all_text, start_bot, wait_until

USER = "U123"  # an admin here (FINETUNE_ADMINS), so `cancel` reaches OpenAI for any job
CMD_CHANNEL = "C123"
POLL_CHANNEL = "CPOLL"
SLACK_CHANNEL = "CSLACK"
CHANNELS = (CMD_CHANNEL, POLL_CHANNEL, SLACK_CHANNEL)
REPLY_FAILED = re.compile(r" WARNING .*could not reply to .* through response_url: HTTP 404")
LIST_OR_RETRIEVE = r"/fine_tuning/jobs(/ftjob-[A-Za-z0-9_-]+)?"


def not_a_lookup(query: Mapping[str, str]) -> bool:
    """Not the bot's own background lookup of an unconfirmed create (a list filtered by its
    `slack_trigger` metadata, bot/pending.py): such lookups run on their own schedule during this
    module and must neither take a fault meant for a command or the poller nor count as its attempt."""
    return not any(name.startswith("metadata[") for name in query)


def alive(h: Harness) -> bool:
    return h.bot.process is not None and h.bot.process.poll() is None


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    with FakeOpenAI() as openai, FakeSlack() as slack:
        workdir: Path = tmp_path_factory.mktemp("faults")
        bot = start_bot(
            openai,
            slack,
            workdir,
            POLL_INTERVAL_SECONDS="1",
            OPENAI_TIMEOUT_SECONDS="2",
            FINETUNE_ADMINS=USER,
            # Creates answered 5xx/timeout here are looked up on the real early schedule (those
            # lookups are kept out of the faults, see not_a_lookup), but given up only after any run
            # of this module: the "retry is safe" note must not take a response_url fault.
            FINETUNE_TEST_UNCONFIRMED_LOOKUPS="90,180,360,7200",
        )
        try:
            yield Harness(bot, openai, slack)
        finally:
            assert bot.stop() == 0, bot.logs[-5000:]


@pytest.fixture
def h(harness: Harness) -> Iterator[Harness]:
    harness.openai.reset()
    harness.slack.reset()
    yield harness
    assert alive(harness), harness.bot.logs[-5000:]
    # Whatever a failed test left behind must not leak into the next one.
    harness.openai.clear_faults()
    harness.slack.clear_faults()
    harness.slack.latency = harness.openai.latency = 0.0
    unwatch_everything(harness)
    assert harness.openai.schema_errors == []
    harness.assert_no_secrets()


def unwatch_everything(h: Harness) -> None:
    for channel in CHANNELS:
        _, key = h.command("watch", channel_id=channel)
        for job_id in set(re.findall(r"ftjob-[A-Za-z0-9_-]+", all_text(h.reply(key)))):
            _, key = h.command(f"unwatch {job_id}", channel_id=channel)
            h.reply(key)


def text_of(message: RecordedMessage) -> str:
    return all_text({"t": message.text, "b": message.blocks})


def outcomes(h: Harness, job_id: str) -> list[RecordedMessage]:
    return [
        m
        for m in h.slack.messages
        if str(((m.params.get("metadata") or {}).get("event_payload") or {}).get("key", "")).startswith(
            job_id + ":"
        )
    ]


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


# ============================================================================ OpenAI x commands


def error_body(message: str, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}}


@dataclass(frozen=True)
class OpenAIFault:
    name: str
    kwargs: dict[str, Any]  # for FakeOpenAI.fail_next, without path/method/times
    attempts: int  # requests the bot makes before it gives up
    expect: str  # rejected | credentials | not_found | unavailable | quota
    min_gap: float = 0.0  # least seconds between attempts (Retry-After honoured)
    fragments: tuple[str, ...] = field(default=())


REJECT_400 = "Injected 400: hyperparameters.n_epochs is out of range"
REJECT_409 = "Injected 409: another request with this idempotency key is in progress"

FAULTS = [
    OpenAIFault(
        "400",
        {"status": 400, "body": error_body(REJECT_400, "invalid_value", "n_epochs")},
        1,
        "rejected",
        fragments=(REJECT_400, "(parameter `n_epochs`)"),
    ),
    OpenAIFault("401", {"status": 401}, 1, "credentials"),
    OpenAIFault("403", {"status": 403}, 1, "credentials"),
    OpenAIFault("404", {"status": 404}, 1, "not_found"),
    OpenAIFault(
        "409", {"status": 409, "body": error_body(REJECT_409)}, 3, "rejected", fragments=(REJECT_409,)
    ),
    OpenAIFault("429-retry-after-1s", {"status": 429, "retry_after": 1}, 3, "unavailable", min_gap=0.95),
    # Waiting a minute would break the ~20 s budget: give up at once, honestly.
    OpenAIFault("429-retry-after-60s", {"status": 429, "retry_after": 60}, 1, "unavailable"),
    OpenAIFault("429-without-retry-after", {"status": 429}, 3, "unavailable"),
    OpenAIFault(
        "429-insufficient-quota",
        {"status": 429, "body": error_body("You exceeded your current quota.", "insufficient_quota")},
        1,
        "quota",
    ),
    OpenAIFault("500", {"status": 500}, 3, "unavailable"),
    OpenAIFault("502", {"status": 502}, 3, "unavailable"),
    OpenAIFault("503", {"status": 503}, 3, "unavailable"),
    OpenAIFault("read-timeout", {"kind": "hang"}, 3, "unavailable"),
    OpenAIFault("connection-dropped", {"kind": "close"}, 3, "unavailable"),
    OpenAIFault("invalid-json-200", {"kind": "invalid_json"}, 1, "unavailable"),
    OpenAIFault("invalid-json-500", {"kind": "invalid_json", "status": 500}, 3, "unavailable"),
    OpenAIFault("html-error-page-502", {"kind": "html"}, 3, "unavailable"),
    OpenAIFault("html-page-200-from-a-proxy", {"kind": "html", "status": 200}, 1, "unavailable"),
]

EXPECTED = {
    "rejected": "OpenAI rejected this",
    "credentials": "credentials",
    "unavailable": "unavailable",
    "quota": "quota",
}


@dataclass(frozen=True)
class Cmd:
    text: str
    method: str
    path: str
    job_id: str | None


def commands() -> dict[str, Cmd]:
    """Each command on a path of its own, so one fault per command can be injected at once."""
    get, events, cancel, watch = (
        "ftjob-faultGet",
        "ftjob-faultEvents",
        "ftjob-faultCancel",
        "ftjob-faultWatch",
    )
    return {
        "list": Cmd("list", "GET", "/fine_tuning/jobs", None),
        "get": Cmd(f"get {get}", "GET", f"/fine_tuning/jobs/{get}", get),
        "events": Cmd(f"events {events}", "GET", f"/fine_tuning/jobs/{events}/events", events),
        "cancel": Cmd(f"cancel {cancel}", "POST", f"/fine_tuning/jobs/{cancel}/cancel", cancel),
        "create": Cmd("create file-abc123", "POST", "/fine_tuning/jobs", None),
        "watch": Cmd(f"watch {watch}", "GET", f"/fine_tuning/jobs/{watch}", watch),
    }


def expected_fragments(fault: OpenAIFault, cmd: Cmd) -> list[str]:
    if fault.expect == "not_found":
        if cmd.job_id is None:  # list/create: there is no job to name
            return ["could not find"]
        return [f"No fine-tuning job `{cmd.job_id}`"]
    if cmd.text.startswith("create") and fault.expect == "unavailable" and not fault.name.startswith("429"):
        # The answer was lost, not refused: OpenAI may have made the job (bot/pending.py looks).
        return [EXPECTED[fault.expect], "may or may not have started", "don't run `create`"]
    return [EXPECTED[fault.expect], *fault.fragments]


@pytest.mark.parametrize("fault", FAULTS, ids=[f.name for f in FAULTS])
def test_openai_fault_on_every_command(h: Harness, fault: OpenAIFault) -> None:
    cmds = commands()
    for cmd in cmds.values():
        if cmd.job_id is not None:
            h.openai.add_job(id=cmd.job_id, status="running")
        h.openai.fail_next(
            **fault.kwargs, path=re.escape(cmd.path), method=cmd.method, times=3, query=not_a_lookup
        )
    keys: dict[str, str] = {}
    for name, cmd in cmds.items():
        response, keys[name] = h.command(cmd.text)
        assert response.status_code == 200, name
    problems: list[str] = []
    for name, cmd in cmds.items():
        reply = h.reply(keys[name], timeout=30)
        text = all_text(reply)
        for fragment in expected_fragments(fault, cmd):
            if fragment not in text:
                problems.append(f"{name}: {fragment!r} not in reply {text!r}")
        if reply.get("response_type") != "ephemeral" or "Something went wrong" in text:
            problems.append(f"{name}: unexpected reply {reply!r}")
        attempts = [r for r in h.openai.requests_to(re.escape(cmd.path), cmd.method) if not_a_lookup(r.query)]
        if len(attempts) != fault.attempts:
            problems.append(f"{name}: {len(attempts)} attempts, expected {fault.attempts}")
        gaps = [b.time - a.time for a, b in itertools.pairwise(attempts)]
        if any(gap < fault.min_gap for gap in gaps):
            problems.append(f"{name}: Retry-After not honoured, gaps {gaps}")
        if cmd.method == "POST":
            keys_sent = {r.headers.get("idempotency-key") for r in attempts}
            if len(keys_sent) != 1 or None in keys_sent:
                problems.append(f"{name}: retries carried idempotency keys {keys_sent}")
    assert not problems, "\n".join(problems) + "\n" + h.openai.describe()
    # Nothing half-done: no job started, none cancelled, nothing announced, nothing followed.
    assert set(h.openai.jobs) == {c.job_id for c in cmds.values() if c.job_id}
    assert h.openai.jobs["ftjob-faultCancel"]["status"] == "running"
    assert h.slack.messages == []
    assert alive(h)


def test_refused_connection_on_every_command(harness: Harness, tmp_path: Path) -> None:
    """OpenAI's address refuses connections (nothing listens there)."""
    port = free_port()  # bound and released: connecting to it is refused
    bot = start_bot(
        harness.openai,
        harness.slack,
        tmp_path,
        OPENAI_BASE_URL=f"http://127.0.0.1:{port}/v1",
        OPENAI_TIMEOUT_SECONDS="2",
        POLL_INTERVAL_SECONDS="1",
        FINETUNE_ADMINS=USER,
    )
    try:
        h = Harness(bot, harness.openai, harness.slack)
        h.slack.reset()
        keys = {name: h.command(cmd.text)[1] for name, cmd in commands().items()}
        for name, key in keys.items():
            text = all_text(h.reply(key, timeout=25))
            assert "unavailable" in text, (name, text)
        response, _ = h.command("help")
        assert response.status_code == 200 and "create" in all_text(response.json())
        assert h.slack.messages == []
        assert bot.process is not None and bot.process.poll() is None
    finally:
        assert bot.stop() == 0, bot.logs[-5000:]


# ============================================================================ OpenAI x poller


@dataclass(frozen=True)
class PollFault:
    name: str
    kwargs: dict[str, Any]
    times: int
    path: str = LIST_OR_RETRIEVE


POLL_FAULTS = [
    # A failing list skips the cycle. Not retried within a call: each cycle's list fails once, until
    # the faults run out and a later cycle gets through.
    PollFault("400", {"status": 400}, 2),
    PollFault("401", {"status": 401}, 2),
    PollFault("403", {"status": 403}, 2),
    # A 404 on the list is a failed cycle like any other (on a retrieve it means "deleted").
    PollFault("404-on-list", {"status": 404}, 2, path="/fine_tuning/jobs"),
    # Retried within a call: the first cycle's list gives up after 3 attempts, the next cycle's list
    # gets through on its 2nd.
    PollFault("409", {"status": 409}, 4),
    PollFault("429-retry-after-1s", {"status": 429, "retry_after": 1}, 4),
    PollFault("429-without-retry-after", {"status": 429}, 4),
    PollFault("500", {"status": 500}, 4),
    PollFault("502", {"status": 502}, 4),
    PollFault("503", {"status": 503}, 4),
    PollFault("read-timeout", {"kind": "hang"}, 2),
    PollFault("connection-dropped", {"kind": "close"}, 4),
    PollFault("invalid-json-200", {"kind": "invalid_json"}, 2),
    PollFault("html-error-page-502", {"kind": "html"}, 4),
]


@pytest.mark.parametrize("fault", POLL_FAULTS, ids=[f.name for f in POLL_FAULTS])
def test_poller_rides_out_openai_fault_and_announces_once(h: Harness, fault: PollFault) -> None:
    job_id, announcement = start_job(h, POLL_CHANNEL)
    h.openai.fail_next(**fault.kwargs, path=fault.path, method="GET", times=fault.times, query=not_a_lookup)
    h.openai.set_status(job_id, "succeeded")
    outcome = wait_single_outcome(h, job_id, timeout=40)
    assert outcome.channel == POLL_CHANNEL and outcome.thread_ts == announcement.ts
    text = text_of(outcome)
    assert "succeeded" in text and "no longer" not in text
    # The fault really stood in the way: every injected failure was served to the poller.
    assert not h.openai.pending_faults
    assert len([r for r in h.openai.requests if r.fault]) == fault.times
    assert alive(h)


RETRIEVE_FAULTS = [
    PollFault("401", {"status": 401}, 2),
    PollFault("503", {"status": 503}, 4),
    PollFault("read-timeout", {"kind": "hang"}, 2),
]


@pytest.mark.parametrize("fault", RETRIEVE_FAULTS, ids=[f.name for f in RETRIEVE_FAULTS])
def test_poller_rides_out_a_fault_on_the_one_by_one_retrieve(h: Harness, fault: PollFault) -> None:
    """A watched job older than two list pages is retrieved on its own; that request fails."""
    now = int(time.time())
    job = h.openai.add_job(created_at=now - 1000, status="running")
    # Newer jobs nobody follows push it past the two pages the poller reads. All in place before
    # the watch exists: jobs added while the poller pages would shift its cursor.
    for i in range(201):
        h.openai.add_job(created_at=now - 500 + i, status="running")
    response, _ = h.command(f"watch {job['id']}", channel_id=POLL_CHANNEL)
    assert response.status_code == 200
    [announcement] = h.slack.wait_for(lambda s: s.messages_in(POLL_CHANNEL))
    path = re.escape(f"/fine_tuning/jobs/{job['id']}")
    h.openai.fail_next(**fault.kwargs, path=path, method="GET", times=fault.times)
    h.openai.set_status(job["id"], "succeeded")
    outcome = wait_single_outcome(h, job["id"], timeout=40)
    assert outcome.thread_ts == announcement.ts and "succeeded" in text_of(outcome)
    assert not h.openai.pending_faults, h.openai.describe()
    assert len([r for r in h.openai.requests_to(path, "GET") if r.fault]) == fault.times
    assert alive(h)


# ============================================================================ Slack x announcements


@pytest.mark.parametrize(
    ("name", "fault", "posted"),
    [
        ("429", {"status": 429, "retry_after": 1}, True),  # slack_sdk waits Retry-After and retries
        # A 5xx may have posted anyway, so it is not retried blindly (that could post twice):
        # the starter is told privately and the outcome still reaches the channel.
        ("internal_error", {"status": 500}, False),
        ("invalid_auth", {"error": "invalid_auth"}, False),
    ],
    ids=["429", "500", "invalid_auth"],
)
def test_slack_fault_on_the_announcement(h: Harness, name: str, fault: dict[str, Any], posted: bool) -> None:
    h.slack.fail_next("chat.postMessage", channel=SLACK_CHANNEL, **fault)
    response, key = h.command("create file-abc123", channel_id=SLACK_CHANNEL)
    assert response.status_code == 200
    h.openai.wait_for(lambda f: f.jobs, message="the job to be created")
    [job_id] = h.openai.jobs
    if posted:
        [announcement] = h.slack.wait_for(lambda s: s.messages_in(SLACK_CHANNEL), timeout=10)
        thread = announcement.ts
    else:
        # The job exists whatever Slack said: the person who started it is told, privately.
        text = all_text(h.reply(key))
        assert job_id in text and name in text, text
        assert h.slack.messages_in(SLACK_CHANNEL) == []
        thread = None
    h.openai.set_status(job_id, "succeeded")
    outcome = wait_single_outcome(h, job_id)
    assert outcome.channel == SLACK_CHANNEL and outcome.thread_ts == thread
    if posted:
        assert h.slack.responses_for(key) == []  # the announcement said it all
    assert alive(h)


@pytest.mark.parametrize("reason", ["not_in_channel", "channel_not_found", "is_archived"])
def test_channel_refusing_the_bot_gets_outcome_by_dm(h: Harness, reason: str) -> None:
    h.slack.fail_next("chat.postMessage", channel=SLACK_CHANNEL, error=reason, times=1000)
    response, key = h.command("create file-abc123", channel_id=SLACK_CHANNEL)
    assert response.status_code == 200
    text = all_text(h.reply(key))
    [job_id] = h.openai.jobs
    assert job_id in text and "/invite" in text
    h.openai.set_status(job_id, "succeeded")
    outcome = wait_single_outcome(h, job_id)
    assert outcome.channel == f"D{USER}"
    assert "/invite" in text_of(outcome) and "succeeded" in text_of(outcome)
    assert h.slack.messages_in(SLACK_CHANNEL) == []
    assert alive(h)


# ============================================================================ Slack x outcome posts


@pytest.mark.parametrize(
    ("fault", "times", "where"),
    [
        ({"status": 429, "retry_after": 1}, 1, "thread"),
        ({"status": 500}, 1, "thread"),
        ({"error": "invalid_auth"}, 1, "thread"),
        ({"error": "not_in_channel"}, 1000, "dm"),
        ({"error": "channel_not_found"}, 1000, "dm"),
        ({"error": "is_archived"}, 1000, "dm"),
    ],
    ids=["429", "500", "invalid_auth", "not_in_channel", "channel_not_found", "is_archived"],
)
def test_slack_fault_on_the_outcome_post(h: Harness, fault: dict[str, Any], times: int, where: str) -> None:
    job_id, announcement = start_job(h, SLACK_CHANNEL)
    h.slack.fail_next("chat.postMessage", channel=SLACK_CHANNEL, times=times, **fault)
    h.openai.set_status(job_id, "succeeded")
    outcome = wait_single_outcome(h, job_id, timeout=30)
    if where == "thread":
        assert outcome.channel == SLACK_CHANNEL and outcome.thread_ts == announcement.ts
    else:
        assert outcome.channel == f"D{USER}" and "/invite" in text_of(outcome)
        assert h.slack.messages_in(SLACK_CHANNEL) == [announcement]
    if fault.get("status") == 500:
        # A 5xx may hide a post that landed: the thread was checked before posting again.
        assert h.slack.calls_to("conversations.replies")
    if fault.get("error") == "invalid_auth":
        assert "invalid_auth" in h.bot.logs
    assert alive(h)


# ============================================================================ Slack x response_url


def test_hung_response_url_blocks_nothing_and_is_retried(h: Harness) -> None:
    h.slack.latency = 60.0  # every Slack request now hangs; nothing but response_url is used here
    _, hung = h.command("list")
    h.slack.wait_for(lambda s: s.responses_for(hung), message="the reply to reach the hung response_url")
    # The bot is stuck in that POST, yet acknowledges and works on other commands (it answers
    # before the hung POST ends, which is only when the test ends it).
    response, _ = h.command("help")
    assert response.status_code == 200
    assert "create" in all_text(response.json())
    _, second = h.command("get ftjob-elsewhere")
    h.openai.wait_for_request(r"/fine_tuning/jobs/ftjob-elsewhere", "GET")
    assert httpx.get(f"{h.bot.url}/healthz", timeout=5).status_code == 200
    # The hung connection drops: the reply is sent again, once.
    h.slack.latency = 0.0
    h.slack.cancel_inflight()
    h.slack.wait_for(lambda s: [r for r in s.responses_for(hung) if r.status == 200], timeout=10)
    h.slack.wait_for(lambda s: [r for r in s.responses_for(second) if r.status == 200], timeout=10)
    h.control()  # a later command answered: a duplicate reply would have come by now
    assert len([r for r in h.slack.responses_for(hung) if r.status == 200]) == 1
    assert len([r for r in h.slack.responses_for(second) if r.status == 200]) == 1
    assert "No fine-tuning jobs" in all_text(h.slack.responses_for(hung)[-1].json)
    assert "No fine-tuning job `ftjob-elsewhere`" in all_text(h.slack.responses_for(second)[-1].json)
    assert alive(h)


@pytest.mark.parametrize(
    ("fault", "retried"),
    [
        ({"status": 500}, True),
        ({"status": 429, "retry_after": 1}, True),
        # Slack's 404 means the URL is gone for good (expired, used up): retrying cannot help.
        ({"error": "expired_url"}, False),
    ],
    ids=["500", "429", "404-expired_url"],
)
def test_failed_response_url_is_retried_or_reported(h: Harness, fault: dict[str, Any], retried: bool) -> None:
    log_start = len(h.bot.logs)
    h.slack.fail_next("response_url", **fault)
    _, key = h.command("list")
    if retried:
        # Delivered on the second attempt, once, and no warning about it.
        h.slack.wait_for(lambda s: [r for r in s.responses_for(key) if r.status == 200], timeout=15)
        statuses = [r.status for r in h.slack.responses_for(key)]
        assert statuses == [statuses[0], 200] and statuses[0] != 200, statuses
        assert "could not reply" not in h.bot.logs[log_start:]
    else:
        # Not retried: reported in the log, which is written after the decision not to retry.
        wait_until(lambda: REPLY_FAILED.search(h.bot.logs[log_start:]), 15, "the failed reply to be logged")
        assert [r.status for r in h.slack.responses_for(key)] == [404]
    assert alive(h)


def test_response_url_failures_never_crash(h: Harness) -> None:
    for fault in ({"status": 500}, {"error": "expired_url"}, {"status": 429, "retry_after": 1}):
        h.slack.fail_next("response_url", **fault)
        _, key = h.command("list")
        h.slack.wait_for(lambda s, key=key: s.responses_for(key))
    _, key = h.command("list")
    assert "No fine-tuning jobs" in all_text(h.reply(key))
    assert alive(h)
