"""The Bolt `AsyncApp` and its Web API client, built from settings."""

from __future__ import annotations

import logging

from slack_bolt.async_app import AsyncApp
from slack_sdk.http_retry.async_handler import AsyncRetryHandler
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
    AsyncServerErrorRetryHandler,
)
from slack_sdk.web.async_client import AsyncWebClient

from bot.config import Settings


def build_slack_client(settings: Settings, *, posting: bool = False) -> AsyncWebClient:
    """slack_sdk retries nothing but connection errors by default; a 429 (`Retry-After`) or a 5xx
    from Slack should delay a message, not lose it.

    The client that posts messages (announcements, outcomes) retries only 429s, which Slack
    answers without posting. After a 5xx or a dropped connection the post may have landed, so a
    blind retry could post twice; the notifier instead defers the row, and its next attempt first
    asks Slack whether the message is there.
    """
    handlers: list[AsyncRetryHandler] = [AsyncRateLimitErrorRetryHandler(max_retry_count=3)]
    if not posting:
        handlers += [
            AsyncConnectionErrorRetryHandler(max_retry_count=2),
            AsyncServerErrorRetryHandler(max_retry_count=2),
        ]
    return AsyncWebClient(
        token=settings.slack_bot_token, base_url=settings.slack_api_url, timeout=10, retry_handlers=handlers
    )


def build_app(settings: Settings, client: AsyncWebClient) -> AsyncApp:
    return AsyncApp(
        client=client,
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
