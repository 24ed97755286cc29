"""In-process pieces of start-up: Socket Mode backoff, the workspace authorizer, log levels."""

from __future__ import annotations

import asyncio
import logging

from slack_bolt.context.async_context import AsyncBoltContext

from bot.config import Settings, load_settings
from bot.logs import configure_logging
from bot.slack_app import BotIdentity, WorkspaceAuthorizer, build_app, build_slack_client
from bot.socket_mode import SocketModeConnection
from tests.bot_process import APP_TOKEN, BOT_TOKEN, OPENAI_KEY, free_port
from tests.fakes import FakeSlack


def socket_settings(api_url: str) -> Settings:
    return Settings(
        slack_bot_token=BOT_TOKEN, openai_api_key=OPENAI_KEY, slack_app_token=APP_TOKEN, slack_api_url=api_url
    )


async def test_socket_mode_backoff_grows_and_is_capped() -> None:
    settings = socket_settings(f"http://127.0.0.1:{free_port()}/api/")  # nothing listens there
    delays: list[float] = []
    enough = asyncio.Event()

    async def sleep(seconds: float) -> None:
        delays.append(seconds)
        if len(delays) >= 8:
            enough.set()
            await asyncio.Event().wait()  # park here until close() cancels the loop

    app = build_app(settings, build_slack_client(settings))
    connection = SocketModeConnection(app, APP_TOKEN, api_url=settings.slack_api_url, sleep=sleep)
    connection.start()
    try:
        await asyncio.wait_for(enough.wait(), timeout=30)
        assert delays == [1, 2, 4, 8, 16, 32, 60, 60]
        assert connection.connected is False
    finally:
        await connection.close()


async def test_authorizer_answers_from_the_start_up_identity_without_calling_slack() -> None:
    with FakeSlack() as slack:
        settings = socket_settings(slack.api_url)
        identity = BotIdentity(team_id="T0001", user_id="U0BOT", bot_id="B0001")
        authorize = WorkspaceAuthorizer(BOT_TOKEN, identity, build_slack_client(settings))
        result = await authorize(context=AsyncBoltContext(), enterprise_id=None, team_id="T0001", user_id="U")
        assert (result.bot_token, result.bot_user_id, result.bot_id) == (BOT_TOKEN, "U0BOT", "B0001")
        assert slack.calls == []


async def test_authorizer_without_identity_answers_at_once_and_looks_it_up_in_the_background() -> None:
    with FakeSlack() as slack:
        settings = socket_settings(slack.api_url)
        authorize = WorkspaceAuthorizer(BOT_TOKEN, None, build_slack_client(settings))
        result = await authorize(context=AsyncBoltContext(), enterprise_id=None, team_id="T0001", user_id="U")
        assert result.bot_token == BOT_TOKEN and result.team_id == "T0001"
        await slack.wait_for_async(lambda s: s.calls_to("auth.test"), timeout=10)
        for _ in range(100):
            if authorize.identity is not None:
                break
            await asyncio.sleep(0.02)
        assert authorize.identity is not None and authorize.identity.user_id == "U0BOT"


def test_log_level_problem_echoes_what_was_typed() -> None:
    env = {"SLACK_BOT_TOKEN": BOT_TOKEN, "SLACK_APP_TOKEN": APP_TOKEN, "OPENAI_API_KEY": OPENAI_KEY}
    problems = load_settings({**env, "LOG_LEVEL": "verbose"})
    assert isinstance(problems, list)
    assert any("LOG_LEVEL" in p and "'verbose'" in p for p in problems), problems
    assert not any("VERBOSE" in p for p in problems)


def test_apscheduler_logs_only_warnings_unless_debug() -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging("INFO", [])
        assert not logging.getLogger("apscheduler.scheduler").isEnabledFor(logging.INFO)
        assert logging.getLogger("apscheduler.scheduler").isEnabledFor(logging.WARNING)
        assert logging.getLogger("bot").isEnabledFor(logging.INFO)
        configure_logging("DEBUG", [])
        assert logging.getLogger("apscheduler.scheduler").isEnabledFor(logging.DEBUG)
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        logging.getLogger("apscheduler").setLevel(logging.NOTSET)
