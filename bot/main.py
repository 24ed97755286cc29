"""Start-up: read configuration, refuse clearly if it is wrong, then serve."""

from __future__ import annotations

import asyncio
import logging
import os
import sys

from dotenv import load_dotenv

from bot.config import Settings, load_settings
from bot.logs import configure_logging

log = logging.getLogger("bot")

# Slack's answers that mean the token itself is wrong (not that Slack is having a bad minute).
_TOKEN_REFUSED = frozenset(
    {"invalid_auth", "not_authed", "account_inactive", "token_revoked", "token_expired"}
)


def refuse(problems: list[str]) -> int:
    print("finetune-bot cannot start; fix the configuration:", file=sys.stderr)
    for problem in problems:
        print(f"  - {problem}", file=sys.stderr)
    return 2


async def check_slack_token(settings: Settings) -> str | None:
    """A refused bot token is a configuration error worth stopping for; an unreachable Slack is
    not (the bot retries as it runs)."""
    from slack_sdk.errors import SlackApiError
    from slack_sdk.web.async_client import AsyncWebClient

    client = AsyncWebClient(token=settings.slack_bot_token, base_url=settings.slack_api_url, timeout=10)
    try:
        identity = await client.auth_test()
    except SlackApiError as error:
        reason = str(error.response.get("error"))
        if reason in _TOKEN_REFUSED:
            return f"SLACK_BOT_TOKEN was refused by Slack ({reason}): copy the Bot User OAuth Token again"
        log.warning("Slack auth.test failed (%s); starting anyway", reason)
        return None
    except Exception as error:
        log.warning("could not reach Slack to check the token (%s); starting anyway", type(error).__name__)
        return None
    log.info("Slack bot user %s in workspace %s", identity.get("user_id"), identity.get("team"))
    return None


def main() -> int:
    # A .env in the working directory fills in what the environment does not set.
    load_dotenv(os.path.join(os.getcwd(), ".env"), override=False)
    settings = load_settings(os.environ)
    if isinstance(settings, list):
        return refuse(settings)
    configure_logging(settings.log_level, settings.secrets())
    problem = asyncio.run(check_slack_token(settings))
    if problem:
        return refuse([problem])
    from bot.database import DatabaseProblem, open_database

    try:
        store = open_database(settings.database_url, wait_seconds=settings.database_wait_seconds)
    except DatabaseProblem as error:
        return refuse([str(error)])
    from bot.server import serve  # heavy imports only once the configuration is known good

    serve(settings, store)
    return 0
