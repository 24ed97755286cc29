"""The Bolt `AsyncApp` and its Web API client, built from settings."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from slack_bolt.async_app import AsyncApp
from slack_bolt.authorization import AuthorizeResult
from slack_bolt.authorization.async_authorize import AsyncAuthorize
from slack_bolt.context.async_context import AsyncBoltContext
from slack_sdk.http_retry.async_handler import AsyncRetryHandler
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
    AsyncServerErrorRetryHandler,
)
from slack_sdk.web.async_client import AsyncWebClient

from bot.clock import SYSTEM_CLOCK, Clock
from bot.config import Settings
from bot.metrics import MeteredWebClient, Metrics, metered_retry_handlers

log = logging.getLogger(__name__)

# How long a failed identity lookup is trusted before another request may try again.
IDENTITY_RETRY_SECONDS = 60.0


@dataclass(frozen=True)
class BotIdentity:
    """Who the bot token belongs to, as `auth.test` said."""

    team_id: str | None
    user_id: str | None
    bot_id: str | None
    enterprise_id: str | None = None
    team: str | None = None
    # The token's scopes (Slack's `X-OAuth-Scopes` response header); None when not sent.
    scopes: frozenset[str] | None = None

    @classmethod
    def from_auth_test(cls, data: Mapping[str, Any], headers: Mapping[str, Any] | None = None) -> BotIdentity:
        def get(key: str) -> str | None:
            value = data.get(key)
            return str(value) if value else None

        scopes = None
        for name, value in (headers or {}).items():
            if str(name).lower() == "x-oauth-scopes":
                raw = value[0] if isinstance(value, list | tuple) and value else value
                scopes = frozenset(s.strip() for s in str(raw).split(",") if s.strip())
        return cls(get("team_id"), get("user_id"), get("bot_id"), get("enterprise_id"), get("team"), scopes)

    def missing_scopes(self, wanted: Iterable[str]) -> list[str]:
        """Scopes the token lacks; none known to be missing when Slack did not list them."""
        return [] if self.scopes is None else [s for s in wanted if s not in self.scopes]


def build_slack_client(
    settings: Settings,
    *,
    posting: bool = False,
    with_token: bool = True,
    metrics: Metrics | None = None,
    clock: Clock = SYSTEM_CLOCK,
) -> AsyncWebClient:
    """slack_sdk retries nothing but connection errors by default; a 429 (`Retry-After`) or a 5xx
    from Slack should delay a message, not lose it.

    The client that posts messages (announcements, outcomes) retries only 429s, which Slack
    answers without posting. After a 5xx or a dropped connection the post may have landed, so a
    blind retry could post twice; the notifier instead defers the row, and its next attempt first
    asks Slack whether the message is there.

    With `metrics`, every call is counted by method and result, and every 429 and its wait; that
    wait is then taken on `clock`.
    """
    handlers: list[AsyncRetryHandler] = [AsyncRateLimitErrorRetryHandler(max_retry_count=3)]
    if not posting:
        handlers += [
            AsyncConnectionErrorRetryHandler(max_retry_count=2),
            AsyncServerErrorRetryHandler(max_retry_count=2),
        ]
    token = settings.slack_bot_token if with_token else None
    if metrics is not None:
        return MeteredWebClient(
            token=token,
            base_url=settings.slack_api_url,
            timeout=10,
            retry_handlers=metered_retry_handlers(handlers, metrics, clock.sleep),
            metrics=metrics,
        )
    return AsyncWebClient(token=token, base_url=settings.slack_api_url, timeout=10, retry_handlers=handlers)


class WorkspaceAuthorizer(AsyncAuthorize):
    """Authorizes every request with the one bot token, using what `auth.test` said at start.

    Bolt's built-in single-workspace mode calls `auth.test` on each request until one succeeds,
    and answers 500 with a traceback while Slack's Web API cannot be reached, even though
    commands reply through `response_url` and never need it. The token was checked at start;
    when Slack could not be reached then, the identity is looked up again in the background
    (never delaying an acknowledgement), quietly, at most once a minute.
    """

    def __init__(self, token: str, identity: BotIdentity | None, lookup_client: AsyncWebClient) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # slack_bolt leaves it unannotated
        self._token = token
        self._identity = identity
        self._client = lookup_client
        self._lookup: asyncio.Task[None] | None = None
        self._next_lookup = 0.0

    @property
    def identity(self) -> BotIdentity | None:
        return self._identity

    async def __call__(
        self,
        *,
        context: AsyncBoltContext,
        enterprise_id: str | None,
        team_id: str | None,
        user_id: str | None,
        actor_enterprise_id: str | None = None,
        actor_team_id: str | None = None,
        actor_user_id: str | None = None,
    ) -> AuthorizeResult:
        identity = self._identity
        if identity is None:
            self._start_lookup()
            identity = BotIdentity(team_id=team_id, user_id=None, bot_id=None, enterprise_id=enterprise_id)
        return AuthorizeResult(
            enterprise_id=identity.enterprise_id,
            team_id=identity.team_id,
            team=identity.team,
            bot_token=self._token,
            bot_id=identity.bot_id,
            bot_user_id=identity.user_id,
            user_id=user_id,
        )

    def _start_lookup(self) -> None:
        if (self._lookup is not None and not self._lookup.done()) or time.monotonic() < self._next_lookup:
            return
        self._next_lookup = time.monotonic() + IDENTITY_RETRY_SECONDS
        self._lookup = asyncio.create_task(self._look_up())

    async def _look_up(self) -> None:
        try:
            response = await self._client.auth_test()
        except Exception as error:  # unreachable or refused: requests keep working with the token
            log.debug("auth.test still failing (%s); will try again later", type(error).__name__)
            return
        self._identity = BotIdentity.from_auth_test(response.data if isinstance(response.data, dict) else {})
        log.info("Slack reachable: bot user %s in workspace %s", self._identity.user_id, self._identity.team)


def build_app(
    settings: Settings,
    lookup_client: AsyncWebClient,
    identity: BotIdentity | None = None,
    metrics: Metrics | None = None,
) -> AsyncApp:
    return AsyncApp(
        # The app's own client carries no token: every request gets the bot token from the
        # authorizer. (Given a token as well, Bolt warns that one of the two will be unused.)
        client=build_slack_client(settings, with_token=False, metrics=metrics),
        authorize=WorkspaceAuthorizer(settings.slack_bot_token, identity, lookup_client),
        # Socket Mode connections are authenticated by the app token; HTTP requests are verified
        # with the signing secret (401 on a bad signature or a timestamp more than 5 minutes off).
        signing_secret=settings.slack_signing_secret or "",
        request_verification_enabled=not settings.socket_mode,
        logger=logging.getLogger("bot.slack"),
        # Listeners only acknowledge (pure and fast) and hand slow work to lazy listeners, so the
        # response can leave when the ack listener returns; the default mode instead polls for
        # ack() every 10 ms, a floor on every acknowledgement (measured by bench/ack.py).
        process_before_response=True,
    )
