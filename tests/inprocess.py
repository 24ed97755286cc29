"""The bot's parts in this test's own event loop, around a fake clock: no process, no scheduler.

`InProcessBot` builds the production parts (bot.wiring.build_components) and the production ASGI
app (bot.server.build_asgi, without its lifespan, so the scheduler never starts) from the same
settings a real process reads. Slack's requests go through the real signature check and Bolt
listeners (httpx's ASGI transport); the bot's own calls go over real HTTP to the fake OpenAI and
fake Slack on 127.0.0.1, exactly as in the end-to-end tests. What differs is time: the test runs
a poll cycle when it wants one (`cycle`), and moves the clock (`clock.advance`) instead of
waiting for intervals, leases and backoffs. A restart is a second set of parts on the same
database; two replicas are two sets on one PostgreSQL database.

What only a real process shows (SIGKILL at a crash point, signals and the shutdown window, the
start-up sequence, uvicorn's limits) stays in the end-to-end tests (tests/harness.py).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import sys
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from bot import crash
from bot.chart_renderer import ChartRenderer
from bot.config import Settings, load_settings
from bot.server import build_asgi
from bot.store import Store
from bot.wiring import Components, build_components
from tests.bot_process import SIGNING_SECRET
from tests.fakes import FakeOpenAI, FakeSlack, sign_slack_request
from tests.fakes.clock import FakeClock
from tests.harness import Control, all_text, bot_env

WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"in-process-webhook-secret-0123").decode()


def sign_webhook(secret: str, webhook_id: str, timestamp: int, body: str) -> str:
    key = base64.b64decode(secret.removeprefix("whsec_"))
    digest = hmac.new(key, f"{webhook_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


class SimulatedCrash(BaseException):
    """Raised at a crash point by `crashing_at`. A BaseException, so that no `except Exception`
    on the way up turns the death into a handled error."""


@contextlib.contextmanager
def crashing_at(point: str) -> Iterator[None]:
    """Within the block, the work that reaches the crash point `point` (bot/crash.py: where
    FINETUNE_CRASH_AT would SIGKILL a real process) stops there, as if the process had died:
    what it had not yet written down stays unwritten. Only that task stops, so follow it with
    `InProcessBot.restart` (the next process) before relying on what the bot does next; a crash
    point that must stop the whole process at once belongs in the end-to-end tests."""

    def crash_point(name: str) -> None:
        if name == point:
            raise SimulatedCrash(name)

    # Every bot module imports the function by name: replace it where it is used.
    real = crash.crash_point
    users = [
        module
        for name, module in list(sys.modules.items())
        if name.startswith("bot.") and module is not crash and getattr(module, "crash_point", None) is real
    ]
    for module in users:
        module.crash_point = crash_point  # type: ignore[attr-defined]
    try:
        yield
    finally:
        for module in users:
            module.crash_point = real  # type: ignore[attr-defined]


class InProcessBot:
    def __init__(
        self,
        openai: FakeOpenAI,
        slack: FakeSlack,
        workdir: Path,
        *,
        clock: FakeClock | None = None,
        owner: str = "replica-a",
        renderer: ChartRenderer | None = None,
        **env: str,
    ) -> None:
        self.openai = openai
        self.slack = slack
        self.workdir = workdir
        self.clock = clock or FakeClock()
        slack.record_clock = self.clock.time  # what reached Slack, stamped on the bot's clock
        self.owner = owner
        self.renderer = renderer  # None: a chart worker of its own, as a process has
        self.env = {"DATABASE_URL": f"sqlite:///{workdir / 'finetune-bot.db'}", **env}
        settings = load_settings(bot_env(openai, slack, **self.env))
        assert isinstance(settings, Settings), settings
        self.settings = settings
        self.store = Store.from_url(settings.database_url, clock=self.clock)
        self.parts: Components = build_components(
            settings, self.store, owner=owner, clock=self.clock, renderer=renderer
        )
        self.asgi = build_asgi(settings, self.store, parts=self.parts)
        self.http = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.asgi), base_url="http://bot")

    # -- what Slack and OpenAI send ---------------------------------------------------------------

    async def command(
        self, text: str, *, user_id: str = "U123", channel_id: str = "C123"
    ) -> tuple[httpx.Response, str]:
        """`/finetune <text>` as Slack posts it (signed); returns the acknowledgement and the key
        of its response_url (see `reply`)."""
        key = uuid.uuid4().hex
        fields = self.slack.slash_command_payload(
            text, user_id=user_id, channel_id=channel_id, response_url=self.slack.response_url(key)
        )
        body = urllib.parse.urlencode(fields)
        response = await self.http.post(
            "/slack/events", content=body, headers=sign_slack_request(body, SIGNING_SECRET)
        )
        return response, key

    async def interact(self, payload: dict[str, Any]) -> httpx.Response:
        """Any interaction (block_actions, view_submission, …) as Slack posts it, signed."""
        body = FakeSlack.interactive_form(payload)
        return await self.http.post(
            "/slack/events", content=body, headers=sign_slack_request(body, SIGNING_SECRET)
        )

    async def click(self, action_id: str, value: str, **payload_args: Any) -> str:
        """A button click (block_actions) as Slack posts it, acknowledged with 200; returns the key
        of its response_url, once what it set going has settled."""
        key = uuid.uuid4().hex
        payload = self.slack.block_actions_payload(
            action_id, value, response_url=self.slack.response_url(key), **payload_args
        )
        response = await self.interact(payload)
        assert response.status_code == 200, response.text
        await self.settle()
        return key

    async def webhook(
        self, job_id: str, event_type: str | None = None, *, webhook_id: str | None = None
    ) -> httpx.Response:
        """OpenAI's webhook for this job (the fake's spec-checked payload), signed with
        WEBHOOK_SECRET (start the bot with OPENAI_WEBHOOK_SECRET=WEBHOOK_SECRET)."""
        body = json.dumps(self.openai.webhook_payload(job_id, event_type))
        webhook_id = webhook_id or f"msg_{uuid.uuid4().hex}"
        # Real time, not the fake clock's: the standardwebhooks library checks the 5-minute
        # tolerance against the real clock (OpenAI's clock against ours, in production).
        timestamp = int(time.time())
        headers = {
            "webhook-id": webhook_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign_webhook(WEBHOOK_SECRET, webhook_id, timestamp, body),
            "content-type": "application/json",
        }
        return await self.http.post("/openai/webhook", content=body, headers=headers)

    # -- driving time -----------------------------------------------------------------------------

    async def cycle(self, count: int = 1) -> None:
        """`count` poll cycles, each followed by everything it set going (posts, edits, reports)."""
        for _ in range(count):
            await self.parts.poller.cycle()
            await self.settle()

    async def settle(self, timeout: float = 20.0) -> None:
        """Until every task this bot started (lazy listeners, notifier workers, reports, card
        edits) has finished, or waits for the fake clock to move: the state the test then reads is
        the one they left."""
        me = asyncio.current_task()
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            await asyncio.sleep(0)
            parked = self.clock.parked_tasks()  # waiting for the test to move the clock
            pending = [t for t in asyncio.all_tasks() if t is not me and not t.done() and t not in parked]
            if not pending:
                return
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise AssertionError(f"tasks still running after {timeout:g}s: {pending[:3]}")
            parks = self.clock.next_park()
            try:
                await asyncio.wait([*pending, parks], timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
            finally:
                parks.cancel()

    async def reply(self, key: str, timeout: float = 10.0) -> dict[str, Any]:
        """The first reply sent to a command's response_url."""
        await self.settle()
        await self.slack.wait_for_async(lambda s: s.responses_for(key), timeout=timeout)
        return self.slack.responses_for(key)[0].json

    # -- life and death ---------------------------------------------------------------------------

    async def stop(self) -> None:
        """Let what is under way finish, then close the connections (not the shared database)."""
        await self.settle()
        await self.http.aclose()
        await self.parts.close()
        self.store.close()

    async def restart(self, *, owner: str | None = None, **env: str) -> InProcessBot:
        """Stop, and start a new process' worth of parts on the same database and clock. `owner`:
        the new process' name on leases and pending creates (a real restart's differs: host:port:pid,
        which matters on PostgreSQL, where another owner's rows are taken over only once stale);
        by default the same."""
        await self.stop()
        return InProcessBot(
            self.openai,
            self.slack,
            self.workdir,
            clock=self.clock,
            owner=owner or self.owner,
            renderer=self.renderer,
            **{**self.env, **env},
        )

    def replica(self, owner: str, **env: str) -> InProcessBot:
        """Another replica on the same database and clock (PostgreSQL: DATABASE_URL in env)."""
        return InProcessBot(
            self.openai,
            self.slack,
            self.workdir,
            clock=self.clock,
            owner=owner,
            renderer=self.renderer,
            **{**self.env, **env},
        )

    async def kill(self) -> None:
        """Die the way SIGKILL leaves things: no hand-over, so this replica's heartbeat, leases and
        outbox leases stay in the database until they lapse. Call it settled (after `cycle` or
        `settle`): only the test's own connections are closed. A successor is `replica(...)` under
        a new owner, as a new process would be (its owner names a new pid)."""
        await self.http.aclose()
        await self.parts.close()
        self.store.close()

    async def shut_down(self) -> None:
        """Stop the way SIGTERM does once the window's work is done (bot.server's shut_down):
        hand this replica's watches over and stop counting it as alive (store.retire), release the
        notifications it leased, then stop."""
        await self.settle()
        self.store.retire(self.owner)
        self.store.release_outbox(self.owner)
        await self.stop()

    # -- positive controls ------------------------------------------------------------------------

    async def control(self, *, channel_id: str = "CCONTROL", user_id: str = "UCONTROL") -> Control:
        """Positive control for a "nothing happened" check, as Harness.control: a valid command,
        answered (a round trip to OpenAI and one to Slack), after everything sent before it has
        settled. Its own traffic is recognisable: `Control.owns`, `Control.key`."""
        job_id = f"ftjob-control{uuid.uuid4().hex[:12]}"
        response, key = await self.command(f"get {job_id}", channel_id=channel_id, user_id=user_id)
        assert response.status_code == 200, response.text
        assert job_id in all_text(await self.reply(key)), "the control command was not answered"
        return Control(key, job_id)
