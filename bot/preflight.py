"""What start-up and `python -m bot --check` verify before serving: the Slack tokens, OpenAI, the
database. Every finding is one line naming the variable to fix; secrets never appear in it."""

from __future__ import annotations

import asyncio
import sys

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.config import Settings
from bot.database import DatabaseProblem, open_database
from bot.logs import RedactSecrets
from bot.openai_client import (
    AuthenticationError,
    FineTuningClient,
    OpenAIError,
    PermissionDeniedError,
    RetryPolicy,
    UnavailableError,
    build_http_client,
)
from bot.slack_app import BotIdentity
from bot.socket_mode import APP_TOKEN_REFUSED, app_token_refused, describe_error

# Slack's answers to auth.test that mean the bot token itself is wrong.
BOT_TOKEN_REFUSED = frozenset(
    {"invalid_auth", "not_authed", "account_inactive", "token_revoked", "token_expired"}
)


class Refused(Exception):
    """A configuration error: starting would not help. Its str is the line to show."""


class Unreachable(Exception):
    """Slack or OpenAI could not be asked (down, no network): worth retrying, not a config error."""


def _slack_client(settings: Settings, token: str | None) -> AsyncWebClient:
    # No retries: a check reports what it found, once (slack_sdk logs a line per retry).
    return AsyncWebClient(token=token, base_url=settings.slack_api_url, timeout=10, retry_handlers=[])


async def verify_bot_token(settings: Settings) -> BotIdentity:
    try:
        response = await _slack_client(settings, settings.slack_bot_token).auth_test()
    except SlackApiError as error:
        reason = str(error.response.get("error"))
        if reason in BOT_TOKEN_REFUSED:
            raise Refused(
                f"SLACK_BOT_TOKEN was refused by Slack ({reason}): copy the Bot User OAuth Token again"
            ) from None
        raise Unreachable(f"Slack answered auth.test with {reason}") from None
    except Exception as error:
        raise Unreachable(
            f"could not reach Slack at SLACK_API_URL ({settings.slack_api_url}): {describe_error(error)}"
        ) from None
    return BotIdentity.from_auth_test(
        response.data if isinstance(response.data, dict) else {}, response.headers
    )


# Scopes whose absence does not stop the bot but loses a feature: said once, at start and in --check.
OPTIONAL_SCOPES = {
    "files:write": "completion reports are posted without their chart",
    "files:read": "training files uploaded to the create form cannot be checked",
}


def scope_warnings(identity: BotIdentity) -> list[str]:
    return [
        f"the Slack app lacks the {scope} scope, so {effect}; reinstall it from manifest.yml"
        for scope, effect in OPTIONAL_SCOPES.items()
        if scope in identity.missing_scopes(OPTIONAL_SCOPES)
    ]


async def verify_app_token(settings: Settings) -> None:
    """Asks for a Socket Mode URL, the first thing a connection does (an unused URL just expires)."""
    try:
        await _slack_client(settings, None).apps_connections_open(app_token=settings.slack_app_token or "")
    except SlackApiError as error:
        reason = str(error.response.get("error"))
        if reason in APP_TOKEN_REFUSED:
            raise Refused(app_token_refused(reason)) from None
        raise Unreachable(f"Slack answered apps.connections.open with {reason}") from None
    except Exception as error:
        raise Unreachable(
            f"could not reach Slack at SLACK_API_URL ({settings.slack_api_url}): {describe_error(error)}"
        ) from None


async def verify_openai(settings: Settings) -> None:
    """Lists one fine-tuning job: proves OpenAI answers and the key may use fine-tuning."""
    async with build_http_client(max_connections=2, timeout=min(settings.openai_timeout_seconds, 10)) as http:
        client = FineTuningClient(
            http,
            api_key=settings.openai_api_key,
            base_url=settings.openai_base_url,
            organization=settings.openai_organization,
            project=settings.openai_project,
            retry=RetryPolicy(max_attempts=1, total_budget=15),
        )
        try:
            await client.list_jobs(limit=1)
        except AuthenticationError:
            # OpenAI's message quotes part of the key: say what to do instead.
            raise Refused(
                "OPENAI_API_KEY was refused by OpenAI (HTTP 401): create a key at "
                "https://platform.openai.com/api-keys"
            ) from None
        except PermissionDeniedError:
            raise Refused(
                "OPENAI_API_KEY may not list fine-tuning jobs (HTTP 403): check the key's permissions "
                "and OPENAI_ORGANIZATION / OPENAI_PROJECT"
            ) from None
        except UnavailableError as error:
            raise Unreachable(
                f"could not reach OpenAI at OPENAI_BASE_URL ({settings.openai_base_url}): "
                f"{error.message[:160]}"
            ) from None
        except OpenAIError as error:
            status = f"HTTP {error.status}" if error.status else "an error"
            raise Unreachable(
                f"OpenAI at OPENAI_BASE_URL ({settings.openai_base_url}) answered {status}: "
                f"{error.message[:160]}"
            ) from None


def verify_database(settings: Settings) -> str:
    # The same opening as at start, without waiting: --check reports what is true now.
    try:
        store = open_database(settings.database_url, wait_seconds=0)
    except DatabaseProblem as problem:
        raise Refused(str(problem)) from None
    dialect = store.engine.dialect.name
    store.close()
    return dialect


async def _check_all(settings: Settings) -> tuple[list[str], list[str]]:
    passed: list[str] = []
    problems: list[str] = []
    slack_reachable = True
    try:
        identity = await verify_bot_token(settings)
        passed.append(f"SLACK_BOT_TOKEN: bot user {identity.user_id} in workspace {identity.team}")
        passed.extend(f"warning: {line}" for line in scope_warnings(identity))
    except Refused as problem:
        problems.append(str(problem))
    except Unreachable as problem:
        problems.append(str(problem))
        slack_reachable = False  # the app token check would only repeat the same line
    if settings.socket_mode and slack_reachable:
        try:
            await verify_app_token(settings)
            passed.append("SLACK_APP_TOKEN: Socket Mode connections allowed")
        except (Refused, Unreachable) as problem:
            problems.append(str(problem))
    try:
        await verify_openai(settings)
        passed.append(f"OPENAI_API_KEY: fine-tuning jobs listed at {settings.openai_base_url}")
    except (Refused, Unreachable) as problem:
        problems.append(str(problem))
    try:
        dialect = await asyncio.to_thread(verify_database, settings)
        passed.append(f"DATABASE_URL: {dialect} database opened, schema up to date")
    except Refused as problem:
        problems.append(str(problem))
    return passed, problems


def run_check(settings: Settings) -> int:
    """`python -m bot --check`: 0 when everything answers, 2 with one line per problem."""
    passed, problems = asyncio.run(_check_all(settings))
    mask = RedactSecrets(settings.secrets()).redact
    for line in passed:
        print(mask(line) if line.startswith("warning: ") else f"ok: {mask(line)}")
    if not problems:
        print(f"finetune-bot configuration is good ({'socket' if settings.socket_mode else 'http'} mode)")
        return 0
    print("finetune-bot --check found problems:", file=sys.stderr)
    for line in problems:
        print(f"  - {mask(line)}", file=sys.stderr)
    return 2
