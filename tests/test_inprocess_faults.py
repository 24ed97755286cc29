"""Fault matrix: every way OpenAI or Slack can fail, against every command and the poller, in this
test's event loop on a fake clock (tests/inprocess.py).

What must hold: the user gets a clear message (OpenAI's own for 400/409, "credentials" for
401/403, "No fine-tuning job" for 404, "unavailable" for 429/5xx/timeouts/garbage), retries happen
exactly where they should and wait what they should (Retry-After honoured, on the bot's clock), the
poller rides out the fault and still announces exactly once, a Slack refusal is retried or
redirected to a DM, and nothing is left half-done.

Each test has a bot of its own: poll cycles run when the test says (`cycle`), and retry waits,
backoffs and deferrals pass on the fake clock, so only a hung OpenAI costs wall time (its socket
timeout is real: OPENAI_TIMEOUT_SECONDS=1, the least the settings allow). That the real process
survives all of this, with real sleeps and real poll intervals, is tests/test_fault_matrix.py.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.bot_process import BOT_TOKEN, OPENAI_KEY, SIGNING_SECRET, free_port
from tests.fakes import FakeOpenAI, FakeSlack
from tests.fakes.slack import RecordedMessage
from tests.harness import all_text
from tests.inprocess import InProcessBot

USER = "U123"  # an admin here (FINETUNE_ADMINS), so `cancel` reaches OpenAI for any job
CMD_CHANNEL = "C123"
POLL_CHANNEL = "CPOLL"
SLACK_CHANNEL = "CSLACK"
LIST_OR_RETRIEVE = r"/fine_tuning/jobs(/ftjob-[A-Za-z0-9_-]+)?"
REPLY_FAILED = re.compile(r"could not reply to .* through response_url: HTTP 404")
# Requests that are answered in milliseconds get a generous timeout (a busy machine must not turn
# them into timeouts); hung ones the least the settings allow, as each costs it in wall time.
ANSWERED_TIMEOUT = "10"
HUNG_TIMEOUT = "1"


def not_a_lookup(query: Mapping[str, str]) -> bool:
    """Not the bot's own background lookup of an unconfirmed create (a list filtered by its
    `slack_trigger` metadata, bot/pending.py): such a lookup must neither take a fault meant for a
    command or the poller nor count as its attempt."""
    return not any(name.startswith("metadata[") for name in query)


MakeBot = Callable[..., InProcessBot]


@pytest.fixture
async def make_bot(
    fake_openai: FakeOpenAI, fake_slack: FakeSlack, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> AsyncIterator[MakeBot]:
    """A bot (FINETUNE_ADMINS=U123) on this test's fakes; afterwards no secret reached Slack or a
    log line (the records themselves, before any masking)."""
    caplog.set_level(logging.INFO)
    bots: list[InProcessBot] = []

    def make(*, hung: bool = False, **env: str) -> InProcessBot:
        timeout = HUNG_TIMEOUT if hung else ANSWERED_TIMEOUT
        workdir = tmp_path / f"bot{len(bots)}"
        workdir.mkdir()
        bot = InProcessBot(
            fake_openai,
            fake_slack,
            workdir,
            OPENAI_TIMEOUT_SECONDS=timeout,
            FINETUNE_ADMINS=USER,
            **env,
        )
        bots.append(bot)
        return bot

    yield make
    for bot in bots:
        await bot.stop()
    everything = caplog.text + repr([c.params for c in fake_slack.calls])
    everything += repr([r.json for r in fake_slack.responses])
    for secret in (OPENAI_KEY, BOT_TOKEN, SIGNING_SECRET):
        assert secret not in everything


def text_of(message: RecordedMessage) -> str:
    return all_text({"t": message.text, "b": message.blocks})


def outcomes(slack: FakeSlack, job_id: str) -> list[RecordedMessage]:
    return [
        m
        for m in slack.messages
        if str(((m.params.get("metadata") or {}).get("event_payload") or {}).get("key", "")).startswith(
            job_id + ":"
        )
    ]


async def start_job(bot: InProcessBot, channel: str) -> tuple[str, RecordedMessage]:
    before = set(bot.openai.jobs)
    response, _ = await bot.command("create file-abc123", channel_id=channel)
    assert response.status_code == 200
    await bot.settle()
    [job_id] = set(bot.openai.jobs) - before
    [announcement] = bot.slack.messages_in(channel)
    return job_id, announcement


async def still_single(bot: InProcessBot, job_id: str) -> RecordedMessage:
    """Two more complete poll/outbox cycles after the post: still exactly one."""
    await bot.cycle(2)
    found = outcomes(bot.slack, job_id)
    assert len(found) == 1, [(m.channel, m.text) for m in found]
    return found[0]


# ============================================================================ OpenAI x commands


def error_body(message: str, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}}


@dataclass(frozen=True)
class OpenAIFault:
    name: str
    kwargs: dict[str, Any]  # for FakeOpenAI.fail_next, without path/method/times
    attempts: int  # requests the bot makes before it gives up
    expect: str  # rejected | credentials | not_found | unavailable | quota
    fragments: tuple[str, ...] = field(default=())

    @property
    def hung(self) -> bool:
        return self.kwargs.get("kind") == "hang"

    @property
    def retry_after(self) -> float | None:
        return self.kwargs.get("retry_after")


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
    OpenAIFault("429-retry-after-1s", {"status": 429, "retry_after": 1}, 3, "unavailable"),
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


def attempts_at(openai: FakeOpenAI, cmd: Cmd) -> list[Any]:
    return [r for r in openai.requests_to(re.escape(cmd.path), cmd.method) if not_a_lookup(r.query)]


@pytest.mark.parametrize("fault", FAULTS, ids=[f.name for f in FAULTS])
async def test_openai_fault_on_every_command(make_bot: MakeBot, fault: OpenAIFault) -> None:
    bot = make_bot(hung=fault.hung)
    cmds = commands()
    for cmd in cmds.values():
        if cmd.job_id is not None:
            bot.openai.add_job(id=cmd.job_id, status="running")
        bot.openai.fail_next(
            **fault.kwargs, path=re.escape(cmd.path), method=cmd.method, times=3, query=not_a_lookup
        )
    waits_before = len(bot.clock.sleeps)
    keys: dict[str, str] = {}
    for name, cmd in cmds.items():  # all six at once, each with its own fault
        response, keys[name] = await bot.command(cmd.text)
        assert response.status_code == 200, name
    await bot.settle()
    problems: list[str] = []
    for name, cmd in cmds.items():
        [answer] = bot.slack.responses_for(keys[name])  # one reply, no more
        reply = answer.json
        text = all_text(reply)
        for fragment in expected_fragments(fault, cmd):
            if fragment not in text:
                problems.append(f"{name}: {fragment!r} not in reply {text!r}")
        if reply.get("response_type") != "ephemeral" or "Something went wrong" in text:
            problems.append(f"{name}: unexpected reply {reply!r}")
        attempts = attempts_at(bot.openai, cmd)
        if len(attempts) != fault.attempts:
            problems.append(f"{name}: {len(attempts)} attempts, expected {fault.attempts}")
        if cmd.method == "POST":
            keys_sent = {r.headers.get("idempotency-key") for r in attempts}
            if len(keys_sent) != 1 or None in keys_sent:
                problems.append(f"{name}: retries carried idempotency keys {keys_sent}")
    assert not problems, "\n".join(problems) + "\n" + bot.openai.describe()
    # Every retry waited first, on the bot's clock: exactly Retry-After when OpenAI named a time
    # (honoured), else a jittered backoff of at most 0.5 s * 2**attempt.
    waits = bot.clock.sleeps[waits_before:]
    assert len(waits) == len(cmds) * (fault.attempts - 1), waits
    if fault.retry_after is not None:
        assert waits == [fault.retry_after] * len(waits), waits
    else:
        assert all(0 <= wait <= 2.0 for wait in waits), waits
    # Nothing half-done: no job started, none cancelled, nothing announced, nothing followed.
    assert set(bot.openai.jobs) == {c.job_id for c in cmds.values() if c.job_id}
    assert bot.openai.jobs["ftjob-faultCancel"]["status"] == "running"
    assert bot.slack.messages == []
    assert bot.store.channel_watches(CMD_CHANNEL) == [] and bot.store.outbox_items() == []


async def test_refused_connection_on_every_command(make_bot: MakeBot) -> None:
    """OpenAI's address refuses connections (nothing listens there)."""
    port = free_port()  # bound and released: connecting to it is refused
    bot = make_bot(OPENAI_BASE_URL=f"http://127.0.0.1:{port}/v1")
    keys = {name: (await bot.command(cmd.text))[1] for name, cmd in commands().items()}
    await bot.settle()
    for name, key in keys.items():
        [answer] = bot.slack.responses_for(key)
        assert "unavailable" in all_text(answer.json), (name, answer.json)
    response, _ = await bot.command("help")
    assert response.status_code == 200 and "create" in all_text(response.json())
    assert bot.slack.messages == []
    assert bot.openai.requests == []


# ============================================================================ OpenAI x poller


@dataclass(frozen=True)
class PollFault:
    name: str
    kwargs: dict[str, Any]
    times: int
    announced_in: int  # the poll cycle that gets through and announces
    path: str = LIST_OR_RETRIEVE


POLL_FAULTS = [
    # A failing list skips the cycle. Not retried within a call: each cycle's list fails once, until
    # the faults run out and a later cycle gets through.
    PollFault("400", {"status": 400}, 2, 3),
    PollFault("401", {"status": 401}, 2, 3),
    PollFault("403", {"status": 403}, 2, 3),
    # A 404 on the list is a failed cycle like any other (on a retrieve it means "deleted").
    PollFault("404-on-list", {"status": 404}, 2, 3, path="/fine_tuning/jobs"),
    # Retried within a call: the first cycle's list gives up after 3 attempts, the next cycle's list
    # gets through on its 2nd.
    PollFault("409", {"status": 409}, 4, 2),
    PollFault("429-retry-after-1s", {"status": 429, "retry_after": 1}, 4, 2),
    PollFault("429-without-retry-after", {"status": 429}, 4, 2),
    PollFault("500", {"status": 500}, 4, 2),
    PollFault("502", {"status": 502}, 4, 2),
    PollFault("503", {"status": 503}, 4, 2),
    # Two timeouts, then the third attempt of the first cycle's list gets through.
    PollFault("read-timeout", {"kind": "hang"}, 2, 1),
    PollFault("connection-dropped", {"kind": "close"}, 4, 2),
    PollFault("invalid-json-200", {"kind": "invalid_json"}, 2, 3),
    PollFault("html-error-page-502", {"kind": "html"}, 4, 2),
]


async def cycles_until_announced(bot: InProcessBot, job_id: str, announced_in: int) -> None:
    """Poll cycles one by one: nothing announced before cycle `announced_in`, one after it."""
    for cycle in range(1, announced_in + 1):
        assert outcomes(bot.slack, job_id) == [], f"announced before cycle {cycle}"
        await bot.cycle()
    assert len(outcomes(bot.slack, job_id)) == 1, f"not announced in cycle {announced_in}"


@pytest.mark.parametrize("fault", POLL_FAULTS, ids=[f.name for f in POLL_FAULTS])
async def test_poller_rides_out_openai_fault_and_announces_once(make_bot: MakeBot, fault: PollFault) -> None:
    bot = make_bot(hung=fault.kwargs.get("kind") == "hang")
    job_id, announcement = await start_job(bot, POLL_CHANNEL)
    bot.openai.fail_next(**fault.kwargs, path=fault.path, method="GET", times=fault.times, query=not_a_lookup)
    bot.openai.set_status(job_id, "succeeded")
    await cycles_until_announced(bot, job_id, fault.announced_in)
    outcome = await still_single(bot, job_id)
    assert outcome.channel == POLL_CHANNEL and outcome.thread_ts == announcement.ts
    text = text_of(outcome)
    assert "succeeded" in text and "no longer" not in text
    # The fault really stood in the way: every injected failure was served to the poller.
    assert not bot.openai.pending_faults
    assert len([r for r in bot.openai.requests if r.fault]) == fault.times


RETRIEVE_FAULTS = [
    PollFault("401", {"status": 401}, 2, 3),
    PollFault("503", {"status": 503}, 4, 2),
    PollFault("read-timeout", {"kind": "hang"}, 2, 1),
]


@pytest.mark.parametrize("fault", RETRIEVE_FAULTS, ids=[f.name for f in RETRIEVE_FAULTS])
async def test_poller_rides_out_a_fault_on_the_one_by_one_retrieve(
    make_bot: MakeBot, fault: PollFault
) -> None:
    """A watched job older than two list pages is retrieved on its own; that request fails."""
    bot = make_bot(hung=fault.kwargs.get("kind") == "hang")
    now = int(bot.clock.time())
    job = bot.openai.add_job(created_at=now - 1000, status="running")
    # Newer jobs nobody follows push it past the two pages the poller reads.
    for i in range(201):
        bot.openai.add_job(created_at=now - 500 + i, status="running")
    response, _ = await bot.command(f"watch {job['id']}", channel_id=POLL_CHANNEL)
    assert response.status_code == 200
    await bot.settle()
    [announcement] = bot.slack.messages_in(POLL_CHANNEL)
    path = re.escape(f"/fine_tuning/jobs/{job['id']}")
    bot.openai.fail_next(**fault.kwargs, path=path, method="GET", times=fault.times)
    bot.openai.set_status(job["id"], "succeeded")
    await cycles_until_announced(bot, job["id"], fault.announced_in)
    outcome = await still_single(bot, job["id"])
    assert outcome.thread_ts == announcement.ts and "succeeded" in text_of(outcome)
    assert not bot.openai.pending_faults, bot.openai.describe()
    assert len([r for r in bot.openai.requests_to(path, "GET") if r.fault]) == fault.times


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
async def test_slack_fault_on_the_announcement(
    make_bot: MakeBot, name: str, fault: dict[str, Any], posted: bool
) -> None:
    bot = make_bot()
    bot.slack.fail_next("chat.postMessage", channel=SLACK_CHANNEL, **fault)
    waits_before = len(bot.clock.sleeps)
    response, key = await bot.command("create file-abc123", channel_id=SLACK_CHANNEL)
    assert response.status_code == 200
    await bot.settle()
    [job_id] = bot.openai.jobs
    if posted:
        [announcement] = bot.slack.messages_in(SLACK_CHANNEL)
        thread = announcement.ts
        # The retry waited what Slack asked (slack_sdk adds up to a second), on the bot's clock.
        assert [w for w in bot.clock.sleeps[waits_before:] if 1.0 <= w < 2.0], bot.clock.sleeps
    else:
        # The job exists whatever Slack said: the person who started it is told, privately.
        text = all_text(await bot.reply(key))
        assert job_id in text and name in text, text
        assert bot.slack.messages_in(SLACK_CHANNEL) == []
        thread = None
    bot.openai.set_status(job_id, "succeeded")
    await cycles_until_announced(bot, job_id, 1)
    outcome = await still_single(bot, job_id)
    assert outcome.channel == SLACK_CHANNEL and outcome.thread_ts == thread
    if posted:
        assert bot.slack.responses_for(key) == []  # the announcement said it all


@pytest.mark.parametrize("reason", ["not_in_channel", "channel_not_found", "is_archived"])
async def test_channel_refusing_the_bot_gets_outcome_by_dm(make_bot: MakeBot, reason: str) -> None:
    bot = make_bot()
    bot.slack.fail_next("chat.postMessage", channel=SLACK_CHANNEL, error=reason, times=1000)
    response, key = await bot.command("create file-abc123", channel_id=SLACK_CHANNEL)
    assert response.status_code == 200
    text = all_text(await bot.reply(key))
    [job_id] = bot.openai.jobs
    assert job_id in text and "/invite" in text
    bot.openai.set_status(job_id, "succeeded")
    await cycles_until_announced(bot, job_id, 1)
    outcome = await still_single(bot, job_id)
    assert outcome.channel == f"D{USER}"
    assert "/invite" in text_of(outcome) and "succeeded" in text_of(outcome)
    assert bot.slack.messages_in(SLACK_CHANNEL) == []


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
async def test_slack_fault_on_the_outcome_post(
    make_bot: MakeBot, caplog: pytest.LogCaptureFixture, fault: dict[str, Any], times: int, where: str
) -> None:
    bot = make_bot()
    job_id, announcement = await start_job(bot, SLACK_CHANNEL)
    bot.slack.fail_next("chat.postMessage", channel=SLACK_CHANNEL, times=times, **fault)
    bot.openai.set_status(job_id, "succeeded")
    # A 5xx or a refused token defers the post (a 429 is waited out within the call, a refusing
    # channel redirected at once): nothing this cycle, and nothing before its backoff has run out.
    deferred = fault.get("status") == 500 or fault.get("error") == "invalid_auth"
    await bot.cycle()
    if deferred:
        assert outcomes(bot.slack, job_id) == []
        await bot.cycle()
        assert outcomes(bot.slack, job_id) == []
        bot.clock.advance(300)  # the longest backoff there is
        await bot.cycle()
    outcome = await still_single(bot, job_id)
    if where == "thread":
        assert outcome.channel == SLACK_CHANNEL and outcome.thread_ts == announcement.ts
    else:
        assert outcome.channel == f"D{USER}" and "/invite" in text_of(outcome)
        assert bot.slack.messages_in(SLACK_CHANNEL) == [announcement]
    if fault.get("status") == 500:
        # A 5xx may hide a post that landed: the thread was checked before posting again.
        assert bot.slack.calls_to("conversations.replies")
    if fault.get("error") == "invalid_auth":
        assert "invalid_auth" in caplog.text


# ============================================================================ Slack x response_url


async def test_hung_response_url_blocks_nothing_and_is_retried(make_bot: MakeBot) -> None:
    bot = make_bot()
    bot.slack.latency = 60.0  # every Slack request now hangs; nothing but response_url is used here
    _, hung = await bot.command("list")
    await bot.slack.wait_for_async(
        lambda s: s.responses_for(hung), message="the reply to reach the hung response_url"
    )
    # The bot is stuck in that POST, yet acknowledges and works on other commands (it answers
    # before the hung POST ends, which is only when the test ends it).
    response, _ = await bot.command("help")
    assert response.status_code == 200
    assert "create" in all_text(response.json())
    _, second = await bot.command("get ftjob-elsewhere")
    await bot.openai.wait_for_async(
        lambda f: [r for r in f.requests_to(r"/fine_tuning/jobs/ftjob-elsewhere", "GET") if r.status]
    )
    assert (await bot.http.get("/healthz")).status_code == 200
    # The hung connections drop: each reply is sent again, once.
    bot.slack.latency = 0.0
    bot.slack.cancel_inflight()
    await bot.settle()  # every task done: a duplicate would be here by now
    assert len([r for r in bot.slack.responses_for(hung) if r.status == 200]) == 1
    assert len([r for r in bot.slack.responses_for(second) if r.status == 200]) == 1
    assert "No fine-tuning jobs" in all_text(bot.slack.responses_for(hung)[-1].json)
    assert "No fine-tuning job `ftjob-elsewhere`" in all_text(bot.slack.responses_for(second)[-1].json)


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
async def test_failed_response_url_is_retried_or_reported(
    make_bot: MakeBot, caplog: pytest.LogCaptureFixture, fault: dict[str, Any], retried: bool
) -> None:
    bot = make_bot()
    bot.slack.fail_next("response_url", **fault)
    waits_before = len(bot.clock.sleeps)
    _, key = await bot.command("list")
    await bot.settle()
    statuses = [r.status for r in bot.slack.responses_for(key)]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    if retried:
        # Delivered on the second attempt, once, and no warning about it; the wait before it is
        # Slack's Retry-After when given, on the bot's clock.
        assert statuses == [fault["status"], 200], statuses
        assert not [w for w in warnings if "could not reply" in w], warnings
        assert bot.clock.sleeps[waits_before:] == [fault.get("retry_after", 0.5)]
    else:
        # Not retried: reported in the log.
        assert statuses == [404], statuses
        assert [w for w in warnings if REPLY_FAILED.search(w)], warnings
        assert bot.clock.sleeps[waits_before:] == []


async def test_response_url_failures_never_crash(make_bot: MakeBot) -> None:
    bot = make_bot()
    for fault in ({"status": 500}, {"error": "expired_url"}, {"status": 429, "retry_after": 1}):
        bot.slack.fail_next("response_url", **fault)
        _, key = await bot.command("list")
        await bot.settle()
        assert bot.slack.responses_for(key)
    _, key = await bot.command("list")
    assert "No fine-tuning jobs" in all_text(await bot.reply(key))
    assert (await bot.http.get("/healthz")).status_code == 200
