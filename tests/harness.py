"""Drive a running bot the way Slack does, and read what reached the fakes."""

from __future__ import annotations

import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import sqlalchemy as sa

from bot.store import normalise_url
from tests.bot_process import BOT_TOKEN, OPENAI_KEY, SIGNING_SECRET, BotProcess
from tests.fakes import FakeOpenAI, FakeSlack, sign_slack_request
from tests.fakes.openai import RecordedRequest

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll ``predicate()`` until it is truthy and return its value; fail saying `what` was awaited.

    For conditions the fakes cannot see (database rows, log lines); for traffic that reached a
    fake, use its own ``wait_for``.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def query_db(url: str, sql: str, **params: Any) -> list[sa.Row[Any]]:
    """Read the bot's database from the test (its own short-lived engine, so never a lock held)."""
    engine = sa.create_engine(normalise_url(url))
    try:
        with engine.connect() as conn:
            return list(conn.execute(sa.text(sql), params))
    finally:
        engine.dispose()


@dataclass(frozen=True)
class Control:
    """A valid command sent after the requests under test, and answered (see Harness.control)."""

    key: str
    job_id: str

    def owns(self, request: RecordedRequest) -> bool:
        return request.path == f"/fine_tuning/jobs/{self.job_id}"


def bot_env(openai: FakeOpenAI, slack: FakeSlack, **extra: str) -> dict[str, str]:
    return {
        "SLACK_BOT_TOKEN": BOT_TOKEN,
        "SLACK_SIGNING_SECRET": SIGNING_SECRET,
        "SLACK_API_URL": slack.api_url,
        "OPENAI_API_KEY": OPENAI_KEY,
        "OPENAI_BASE_URL": openai.base_url,
        # Most tests read jobs seeded straight into the fake OpenAI (not started from Slack), which
        # the default read policy hides; tests/test_read_access.py covers every policy and the default.
        "FINETUNE_READ_ACCESS": "org",
        **extra,
    }


def start_bot(openai: FakeOpenAI, slack: FakeSlack, workdir: Path, **extra: str) -> BotProcess:
    return BotProcess(bot_env(openai, slack, **extra), workdir).start()


@dataclass
class Harness:
    bot: BotProcess
    openai: FakeOpenAI
    slack: FakeSlack

    def command(
        self,
        text: str,
        *,
        user_id: str = "U123",
        channel_id: str = "C123",
        secret: str = SIGNING_SECRET,
        timestamp: int | None = None,
        skew: int = 0,
        tamper: bool = False,
    ) -> tuple[httpx.Response, str]:
        key = uuid.uuid4().hex
        fields = self.slack.slash_command_payload(
            text, user_id=user_id, channel_id=channel_id, response_url=self.slack.response_url(key)
        )
        body = urllib.parse.urlencode(fields)
        if skew:
            timestamp = (timestamp or int(time.time())) + skew
        headers = sign_slack_request(body, secret, timestamp)
        if tamper:
            body = body.replace("U123", "U999")
        response = httpx.post(f"{self.bot.url}/slack/events", content=body, headers=headers, timeout=10)
        return response, key

    def interact(self, payload: dict[str, Any], *, secret: str = SIGNING_SECRET) -> httpx.Response:
        """Any interaction (view_submission, block_suggestion, message_action, block_actions) as
        Slack posts it: form field ``payload=<json>``, signed, to /slack/events. The response is
        the ack: empty, or e.g. ``{"response_action": "errors", ...}`` / ``{"options": [...]}``."""
        body = FakeSlack.interactive_form(payload)
        headers = sign_slack_request(body, secret)
        return httpx.post(f"{self.bot.url}/slack/events", content=body, headers=headers, timeout=10)

    def reply(self, key: str, timeout: float = 10.0) -> dict[str, Any]:
        self.slack.wait_for(lambda s: s.responses_for(key), timeout=timeout)
        return self.slack.responses_for(key)[0].json

    @property
    def db_url(self) -> str:
        """The bot's database (the default SQLite file lives in its working directory)."""
        return self.bot.env.get("DATABASE_URL") or f"sqlite:///{self.bot.workdir / 'finetune-bot.db'}"

    def watch_status(self, job_id: str, channel_id: str = "C123") -> str | None:
        """The job's status as the poller last recorded it for this channel's watch."""
        rows = query_db(
            self.db_url,
            "SELECT last_status FROM finetune_watches WHERE job_id = :job AND channel_id = :channel",
            job=job_id,
            channel=channel_id,
        )
        return rows[0][0] if rows else None

    def wait_poll_cycles(self, count: int = 2, *, replicas: int = 1, timeout: float = 30.0) -> None:
        """Wait until `replicas` replicas have each started `count` poll cycles after this call.

        A cycle starts with a heartbeat (finetune_replicas) and cycles never overlap, so when the
        second has started the first has finished, delivery included: a "still exactly one" check
        made after this has seen at least one complete cycle, however slow the machine.
        """
        since = time.time()
        seen: dict[str, set[float]] = {}

        def enough() -> bool:
            for replica, beat in query_db(
                self.db_url, "SELECT id, heartbeat_at FROM finetune_replicas WHERE heartbeat_at > :t", t=since
            ):
                seen.setdefault(replica, set()).add(beat)
            return len([r for r, beats in seen.items() if len(beats) >= count]) >= replicas

        wait_until(enough, timeout, f"{count} poll cycles on {replicas} replica(s)")

    def control(self, *, channel_id: str = "CCONTROL", user_id: str = "UCONTROL") -> Control:
        """Positive control for a "nothing happened" check: send a valid command now and wait for
        its answer, which takes a round trip to OpenAI and one to Slack. Whatever work the requests
        sent before it had started would have shown by then too, so a slow bot cannot make the
        check pass vacuously. Its own traffic is recognisable: `Control.owns`, `Control.key`."""
        job_id = f"ftjob-control{uuid.uuid4().hex[:12]}"
        response, key = self.command(f"get {job_id}", channel_id=channel_id, user_id=user_id)
        assert response.status_code == 200, response.text
        assert job_id in all_text(self.reply(key)), "the control command was not answered"
        return Control(key, job_id)

    def openai_requests_besides(self, control: Control) -> list[RecordedRequest]:
        return [r for r in self.openai.requests if not control.owns(r)]

    def responses_besides(self, control: Control) -> list[Any]:
        return [r for r in self.slack.responses if r.key != control.key]

    def assert_no_secrets(self) -> None:
        everything = self.bot.logs + repr([c.params for c in self.slack.calls])
        everything += repr([r.json for r in self.slack.responses])
        for secret in (OPENAI_KEY, BOT_TOKEN, SIGNING_SECRET):
            assert secret not in everything


@contextmanager
def module_bot(workdir: Path, **env: str) -> Iterator[Harness]:
    """One bot with its own fakes for a whole test module (starting one per test would dominate the
    run); at the end it must stop cleanly on SIGTERM, with exit 0."""
    with FakeOpenAI() as openai, FakeSlack() as slack:
        bot = start_bot(openai, slack, workdir, **env)
        try:
            yield Harness(bot, openai, slack)
        finally:
            assert bot.stop() == 0, bot.logs


def fresh(harness: Harness) -> Iterator[Harness]:
    """One test's turn on a module's bot (`yield from fresh(harness)` in a fixture): the fakes start
    empty; afterwards the bot is still running, the fake OpenAI saw only spec-valid requests, and
    no secret reached a log or Slack."""
    harness.openai.reset()
    harness.slack.reset()
    yield harness
    assert harness.bot.process is not None and harness.bot.process.poll() is None, harness.bot.logs[-5000:]
    assert harness.openai.schema_errors == []
    harness.assert_no_secrets()


def all_text(message: dict[str, Any]) -> str:
    """Every string in a message, blocks included, joined: what a reader could see."""
    out: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, str):
            out.append(value)
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(message)
    return "\n".join(out)
