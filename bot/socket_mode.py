"""Socket Mode, connected in the background so a Slack outage never holds up start-up.

slack_sdk's own `connect()` retries forever inside the caller, with a traceback every few
seconds; awaited in the lifespan it kept uvicorn from serving `/healthz` and from handling
SIGTERM. Here each attempt first asks `apps.connections.open` for a socket URL (the step that
fails while Slack is unreachable), logs one line when it fails, and waits a capped, growing delay.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.adapter.socket_mode.async_internals import run_async_bolt_app, send_async_response
from slack_bolt.async_app import AsyncApp
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler
from slack_sdk.socket_mode.aiohttp import SocketModeClient
from slack_sdk.socket_mode.request import SocketModeRequest
from slack_sdk.web.async_client import AsyncWebClient

from bot.metrics import Metrics, ack_kind

log = logging.getLogger(__name__)

# Slack's answers to apps.connections.open that mean the app token itself is wrong.
APP_TOKEN_REFUSED = frozenset(
    {
        "invalid_auth",
        "not_authed",
        "not_allowed_token_type",
        "account_inactive",
        "token_revoked",
        "token_expired",
        "missing_scope",
    }
)


def app_token_refused(reason: str) -> str:
    """The one line an operator reads when Slack refuses SLACK_APP_TOKEN."""
    return (
        f"SLACK_APP_TOKEN was refused by Slack ({reason}): generate an app-level token with the "
        "connections:write scope (Basic Information → App-Level Tokens)"
    )


def describe_error(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    detail = f": {text[0][:160]}" if text else ""
    return f"{type(error).__name__}{detail}"


class MeteredSocketModeHandler(AsyncSocketModeHandler):
    """Bolt's handler, timing each envelope from its arrival to its ack sent on the socket."""

    def __init__(self, app: AsyncApp, app_token: str, metrics: Metrics) -> None:
        super().__init__(app, app_token)
        self._metrics = metrics

    async def handle(self, client: SocketModeClient, req: SocketModeRequest) -> None:  # type: ignore[override]
        received = time.perf_counter()
        response = await run_async_bolt_app(self.app, req)
        await send_async_response(client, req, response, time.time())
        self._metrics.ack(ack_kind(req.payload), time.perf_counter() - received)


class SocketModeConnection:
    def __init__(
        self,
        app: AsyncApp,
        app_token: str,
        *,
        api_url: str,
        on_connected: Callable[[], None] = lambda: None,
        first_delay: float = 1.0,
        max_delay: float = 60.0,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        metrics: Metrics | None = None,
    ) -> None:
        self._metrics = metrics or Metrics()
        self._app = app
        self._app_token = app_token
        # Asks for socket URLs without slack_sdk's own connection retries (each logs a line):
        # this loop is the retry, with one line per attempt.
        self._opener = AsyncWebClient(
            base_url=api_url, timeout=10, retry_handlers=[AsyncRateLimitErrorRetryHandler(max_retry_count=2)]
        )
        self._on_connected = on_connected
        self._first_delay = first_delay
        self._max_delay = max_delay
        self._sleep = sleep
        self._handler: AsyncSocketModeHandler | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def connected(self) -> bool:
        session = self._handler.client.current_session if self._handler is not None else None
        return session is not None and not session.closed

    def start(self) -> None:
        """Begin connecting; returns at once (needs the running event loop)."""
        self._handler = MeteredSocketModeHandler(self._app, self._app_token, self._metrics)
        self._task = asyncio.create_task(self._connect_until_done(self._handler), name="socket-mode-connect")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._handler is not None:
            await self._handler.close_async()  # type: ignore[no-untyped-call]  # unannotated in slack_bolt

    async def _connect_until_done(self, handler: AsyncSocketModeHandler) -> None:
        delay = self._first_delay
        attempt = 0
        while True:
            attempt += 1
            try:
                url = await self._open()
            except SlackApiError as error:
                reason = str(error.response.get("error"))
                if reason in APP_TOKEN_REFUSED:
                    log.error("%s; retrying in %gs", app_token_refused(reason), delay)
                else:
                    log.warning(
                        "Slack did not open a Socket Mode connection (%s); retrying in %gs", reason, delay
                    )
            except Exception as error:
                log.warning(
                    "cannot reach Slack for Socket Mode (attempt %d, %s); retrying in %gs",
                    attempt,
                    describe_error(error),
                    delay,
                )
            else:
                # A fresh URL, so the library's connect() opens the websocket right away.
                handler.client.wss_uri = url
                await handler.connect_async()  # type: ignore[no-untyped-call]  # unannotated in slack_bolt
                log.info("connected to Slack in Socket Mode")
                self._on_connected()
                return
            await self._sleep(delay)
            delay = min(delay * 2, self._max_delay)

    async def _open(self) -> str:
        response = await self._opener.apps_connections_open(app_token=self._app_token)
        return str(response["url"])
