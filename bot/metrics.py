"""Prometheus metrics: what an operator needs to see without reading logs.

Each built app (bot/server.py `build_asgi`) has its own `Metrics`, on its own `CollectorRegistry`
rather than prometheus_client's global one, so tests can build several apps in one process and
each replica exposes only its own numbers (Prometheus sums replicas itself).

Every label value comes from a fixed set: a subcommand, a button, an OpenAI operation (the spec's
operationId), a status class, a Slack method from an allow-list. Anything else is counted as
"other": never a job id, user id, channel or free text, whose every new value would be a new
series (prometheus/docs, "Do not overuse labels").

The store's gauges (watches active, outbox owed and its oldest row's age) are read at scrape
time with one bounded query, off the event loop, and reused for `STORE_GAUGES_SECONDS`, so a
Prometheus that scrapes often, or several of them, cost the database one query per interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import random
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.async_handler import AsyncRetryHandler
from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler
from slack_sdk.http_retry.request import HttpRequest
from slack_sdk.http_retry.response import HttpResponse
from slack_sdk.http_retry.state import RetryState
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.web.async_slack_response import AsyncSlackResponse

from bot.store import StoreGauges

log = logging.getLogger(__name__)

# No `_created` series: they double every counter's and histogram's series for a start time that
# Prometheus does not need (process-wide in prometheus_client; nothing else here uses it).
disable_created_metrics()  # type: ignore[no-untyped-call]  # prometheus_client leaves it unannotated

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# How long one read of the store's gauges is reused.
STORE_GAUGES_SECONDS = 5.0

# -- label values: fixed sets ----------------------------------------------------------------------

# What a command or click came to (bot/render.py `Outcome` carries the same values on each reply).
RESULTS = frozenset({"ok", "refused", "bad_input", "openai_error", "error"})
# The canonical subcommands (bot/commands.py `subcommand_name`), "unknown" for a first word that
# is no subcommand.
SUBCOMMANDS = frozenset(
    {
        "help", "create", "list", "get", "files", "validate", "events", "cancel", "pause",
        "resume", "checkpoints", "report", "history", "watch",
        "unwatch",
    }
)  # fmt: skip
# Buttons (bot/buttons.py), the create form's submission and file menu, the message shortcut, and
# the training report's Start button.
ACTIONS = frozenset(
    {
        "job_refresh", "job_events", "job_cancel", "job_pause", "job_resume", "job_checkpoints",
        "list_next_page", "open_create_form", "create_form", "file_menu", "shortcut", "training_start",
    }
)  # fmt: skip
# What Slack sent, for the acknowledgement latency.
ACK_KINDS = frozenset(
    {"command", "block_actions", "view_submission", "block_suggestion", "message_action", "event"}
)
# The OpenAI operations the client calls, by the spec's operationId.
_OPENAI_ROUTES: tuple[tuple[str, re.Pattern[str], str], ...] = tuple(
    (method, re.compile(pattern), operation)
    for method, pattern, operation in (
        ("POST", r"/fine_tuning/jobs", "createFineTuningJob"),
        ("GET", r"/fine_tuning/jobs", "listPaginatedFineTuningJobs"),
        ("GET", r"/fine_tuning/jobs/[^/]+", "retrieveFineTuningJob"),
        ("GET", r"/fine_tuning/jobs/[^/]+/events", "listFineTuningEvents"),
        ("GET", r"/fine_tuning/jobs/[^/]+/checkpoints", "listFineTuningJobCheckpoints"),
        ("POST", r"/fine_tuning/jobs/[^/]+/cancel", "cancelFineTuningJob"),
        ("POST", r"/fine_tuning/jobs/[^/]+/pause", "pauseFineTuningJob"),
        ("POST", r"/fine_tuning/jobs/[^/]+/resume", "resumeFineTuningJob"),
        ("GET", r"/files", "listFiles"),
        ("POST", r"/files", "createFile"),
        ("GET", r"/files/[^/]+/content", "downloadFile"),
    )
)
OPENAI_OPERATIONS = frozenset(operation for _, _, operation in _OPENAI_ROUTES) | {"other"}
STATUS_CLASSES = frozenset({"2xx", "3xx", "4xx", "5xx", "error"})
# The Slack Web API methods the bot calls; anything else is "other".
SLACK_METHODS = frozenset(
    {
        "auth.test", "apps.connections.open", "chat.postMessage", "chat.postEphemeral", "chat.update",
        "conversations.open", "conversations.history", "conversations.replies", "views.open",
        "files.info", "files.getUploadURLExternal", "files.completeUploadExternal",
    }
)  # fmt: skip
# Slack's error codes worth telling apart on a dashboard; any other is "other_error".
SLACK_ERRORS = frozenset(
    {
        "ratelimited", "not_in_channel", "channel_not_found", "is_archived", "invalid_blocks",
        "msg_too_long", "message_not_found", "cant_update_message", "edit_window_closed",
        "missing_scope", "invalid_auth", "not_authed", "token_revoked", "account_inactive",
        "expired_trigger_id", "exchanged_trigger_id", "invalid_trigger_id", "file_not_found",
        "restricted_action", "internal_error", "fatal_error", "service_unavailable",
    }
)  # fmt: skip
SLACK_RESULTS = SLACK_ERRORS | {"ok", "other_error", "http_error", "connection_error"}
WEBHOOK_RESULTS = frozenset({"accepted", "ignored", "duplicate", "bad_signature", "malformed", "refused"})
CARD_EDIT_RESULTS = frozenset({"ok", "rate_limited", "stopped", "error"})

ACK_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0)
REPLY_BUCKETS = (0.1, 0.25, 0.5, 0.75, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0)
OPENAI_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 60.0)
CYCLE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
REQUEST_COUNT_BUCKETS = (0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
WAIT_BUCKETS = (1, 2, 5, 10, 30, 60, 120, 300)


def one_of(value: str, allowed: frozenset[str], other: str = "other") -> str:
    return value if value in allowed else other


def openai_operation(method: str, path: str) -> str:
    """The spec's operationId for a request the client makes (`path` after the base URL)."""
    for verb, pattern, operation in _OPENAI_ROUTES:
        if verb == method and pattern.fullmatch(path):
            return operation
    return "other"


def status_class(status: int | None) -> str:
    """2xx … 5xx, or "error" when no HTTP answer came (timeout, connection refused)."""
    if status is None or not 200 <= status <= 599:
        return "error"
    return f"{status // 100}xx"


def slack_result(error: BaseException | None, response: AsyncSlackResponse | None = None) -> str:
    """ok, a known Slack error code, "other_error", "http_error" (a status without a Slack error
    body) or "connection_error"."""
    if error is None:
        return "ok"
    if isinstance(error, SlackApiError):
        code = error.response.get("error") if error.response is not None else None
        if isinstance(code, str) and code:
            return one_of(code, SLACK_ERRORS, "other_error")
        status = getattr(error.response, "status_code", None)
        return "ratelimited" if status == 429 else "http_error"
    return "connection_error"


def ack_kind(body: Any) -> str:
    """What a Slack request is, from its parsed body: "command", an interactivity type, "event"."""
    if not isinstance(body, dict):
        return "other"
    if "command" in body:
        return "command"
    kind = body.get("type")
    if kind == "event_callback":
        return "event"
    return one_of(kind, ACK_KINDS) if isinstance(kind, str) else "other"


def slack_method_of_url(url: str) -> str:
    return one_of(url.rstrip("/").rsplit("/", 1)[-1].split("?", 1)[0], SLACK_METHODS)


# -- the poll cycle's own request count -----------------------------------------------------------

# Set for the duration of a poll cycle: every OpenAI request made inside it (its gathered tasks
# copy the context, and so share the one counter) is counted there.
_cycle_requests: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar(
    "finetune_cycle_requests", default=None
)


def count_cycle_request() -> None:
    counter = _cycle_requests.get()
    if counter is not None:
        counter[0] += 1


# -- the store's gauges ----------------------------------------------------------------------------


class _StoreCollector(Collector):
    """Yields the last reading of the store's gauges; reading the database is `StoreReader`'s job,
    done before the registry is collected, so collecting never does I/O."""

    def __init__(self) -> None:
        self.latest: StoreGauges | None = None
        self.database_up: bool | None = None

    def collect(self) -> Iterable[Metric]:
        if self.database_up is not None:
            yield GaugeMetricFamily(
                "finetune_database_up",
                "1 when the last read of the store's gauges succeeded, else 0",
                value=1 if self.database_up else 0,
            )
        latest = self.latest if self.database_up else None
        if latest is None:
            return  # absent rather than stale: an alert on a stale number would mislead
        yield GaugeMetricFamily(
            "finetune_watches_active", "Watches of jobs not yet ended", value=latest.watches_active
        )
        yield GaugeMetricFamily(
            "finetune_outbox_owed", "Outbox rows (outcomes, reports) not yet sent", value=latest.outbox_owed
        )
        yield GaugeMetricFamily(
            "finetune_outbox_oldest_owed_seconds",
            "Age of the oldest unsent outbox row, on the database's clock (0 when none)",
            value=latest.outbox_oldest_owed_seconds,
        )

    def describe(self) -> Iterable[Metric]:
        # Names known up front, so the registry can tell which metric names exist (and the
        # dashboard test can check its queries against them) without a database.
        for name in (
            "finetune_database_up",
            "finetune_watches_active",
            "finetune_outbox_owed",
            "finetune_outbox_oldest_owed_seconds",
        ):
            yield GaugeMetricFamily(name, "")


class StoreReader:
    """One read of the store's gauges at a time, reused for `max_age` seconds."""

    def __init__(
        self,
        read: Callable[[], StoreGauges],
        collector: _StoreCollector,
        *,
        max_age: float = STORE_GAUGES_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._read = read
        self._collector = collector
        self._max_age = max_age
        self._clock = clock
        self._read_at: float | None = None
        self._lock = asyncio.Lock()

    async def refresh(self) -> None:
        async with self._lock:  # concurrent scrapes share one query
            if self._read_at is not None and self._clock() - self._read_at < self._max_age:
                return
            try:
                self._collector.latest = await asyncio.to_thread(self._read)
                self._collector.database_up = True
            except Exception as error:
                log.debug("reading the store's gauges failed: %s", type(error).__name__)
                self._collector.database_up = False
            self._read_at = self._clock()


# -- the metrics -----------------------------------------------------------------------------------


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.commands = Counter(
            "finetune_commands",
            "Slash commands by subcommand and result",
            ["subcommand", "result"],
            registry=r,
        )
        self.actions = Counter(
            "finetune_actions",
            "Button clicks, form submissions, file menus and shortcuts by action and result",
            ["action", "result"],
            registry=r,
        )
        self.ack_seconds = Histogram(
            "finetune_ack_seconds",
            "From a Slack request's arrival to its acknowledgement leaving",
            ["kind"],
            buckets=ACK_BUCKETS,
            registry=r,
        )
        self.reply_seconds = Histogram(
            "finetune_reply_seconds",
            "From a command or click's acknowledgement to its reply accepted by Slack",
            ["kind"],
            buckets=REPLY_BUCKETS,
            registry=r,
        )
        self.openai_requests = Counter(
            "finetune_openai_requests",
            "OpenAI API requests (each attempt) by operation and status class",
            ["operation", "status_class"],
            registry=r,
        )
        self.openai_seconds = Histogram(
            "finetune_openai_request_seconds",
            "Latency of one OpenAI request attempt",
            ["operation"],
            buckets=OPENAI_BUCKETS,
            registry=r,
        )
        self.openai_retries = Counter(
            "finetune_openai_retries", "OpenAI requests retried, by operation", ["operation"], registry=r
        )
        self.slack_calls = Counter(
            "finetune_slack_api_calls",
            "Slack Web API calls (after slack_sdk's own retries) by method and result",
            ["method", "result"],
            registry=r,
        )
        self.slack_rate_limited = Counter(
            "finetune_slack_rate_limited",
            "HTTP 429 answers from the Slack Web API, retried or not, by method",
            ["method"],
            registry=r,
        )
        self.slack_retry_after = Histogram(
            "finetune_slack_retry_after_seconds",
            "Waits honouring Slack's Retry-After before a retry",
            ["method"],
            buckets=WAIT_BUCKETS,
            registry=r,
        )
        self.poll_cycle_seconds = Histogram(
            "finetune_poll_cycle_seconds", "Duration of one poll cycle", buckets=CYCLE_BUCKETS, registry=r
        )
        self.poll_cycle_requests = Histogram(
            "finetune_poll_cycle_openai_requests",
            "OpenAI requests made by one poll cycle",
            buckets=REQUEST_COUNT_BUCKETS,
            registry=r,
        )
        self.webhook_deliveries = Counter(
            "finetune_webhook_deliveries", "OpenAI webhook deliveries by result", ["result"], registry=r
        )
        self.card_edits = Counter(
            "finetune_card_edits", "Job card edits (chat.update) by result", ["result"], registry=r
        )
        self.card_edits_skipped = Counter(
            "finetune_card_edits_skipped",
            "Card edits due but held back by the edit budget (counted at each flush)",
            registry=r,
        )
        self._store = _StoreCollector()
        r.register(self._store)
        self._store_reader: StoreReader | None = None

    def __deepcopy__(self, memo: dict[int, Any]) -> Metrics:
        # Bolt deep-copies each request's context (its Web API client included) for lazy
        # listeners: the copy must count into the same registry, which holds locks besides.
        return self

    # -- recording (label values are bounded here, whatever the caller passes) -------------------

    def command(self, subcommand: str, result: str) -> None:
        subcommand = one_of(subcommand, SUBCOMMANDS, "unknown")
        self.commands.labels(subcommand, one_of(result, RESULTS, "error")).inc()

    def action(self, action: str, result: str) -> None:
        self.actions.labels(one_of(action, ACTIONS), one_of(result, RESULTS, "error")).inc()

    def ack(self, kind: str, seconds: float) -> None:
        self.ack_seconds.labels(one_of(kind, ACK_KINDS)).observe(seconds)

    def reply(self, kind: str, seconds: float) -> None:
        self.reply_seconds.labels("command" if kind == "command" else "action").observe(seconds)

    def openai_request(self, operation: str, status: int | None, seconds: float) -> None:
        operation = one_of(operation, OPENAI_OPERATIONS)
        self.openai_requests.labels(operation, status_class(status)).inc()
        self.openai_seconds.labels(operation).observe(seconds)
        count_cycle_request()

    def openai_retry(self, operation: str) -> None:
        self.openai_retries.labels(one_of(operation, OPENAI_OPERATIONS)).inc()

    def slack_call(self, method: str, result: str) -> None:
        result = one_of(result, SLACK_RESULTS, "other_error")
        self.slack_calls.labels(one_of(method, SLACK_METHODS), result).inc()

    def slack_429(self, method: str, wait_seconds: float | None) -> None:
        method = one_of(method, SLACK_METHODS)
        self.slack_rate_limited.labels(method).inc()
        if wait_seconds is not None:
            self.slack_retry_after.labels(method).observe(wait_seconds)

    def webhook(self, result: str) -> None:
        self.webhook_deliveries.labels(one_of(result, WEBHOOK_RESULTS)).inc()

    def card_edit(self, result: str) -> None:
        self.card_edits.labels(one_of(result, CARD_EDIT_RESULTS, "error")).inc()

    @contextlib.contextmanager
    def poll_cycle(self) -> Iterator[None]:
        """Times the cycle and counts the OpenAI requests made inside it."""
        counter = [0]
        token = _cycle_requests.set(counter)
        started = time.perf_counter()
        try:
            yield
        finally:
            self.poll_cycle_seconds.observe(time.perf_counter() - started)
            self.poll_cycle_requests.observe(counter[0])
            _cycle_requests.reset(token)

    # -- exposing ----------------------------------------------------------------------------------

    def watch_store(self, read: Callable[[], StoreGauges]) -> None:
        """`read` (blocking, one query) fills the store's gauges at scrape time."""
        self._store_reader = StoreReader(read, self._store)

    async def exposition(self) -> bytes:
        """The text format, without blocking the event loop: the store is read in a thread (at
        most every STORE_GAUGES_SECONDS), and the registry rendered in one too."""
        if self._store_reader is not None:
            await self._store_reader.refresh()
        return await asyncio.to_thread(generate_latest, self.registry)

    def names(self) -> set[str]:
        """Every sample name this registry can expose (counters with `_total`, histograms with
        `_bucket`/`_sum`/`_count`), for checking dashboards and alert rules against it."""
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
        names: set[str] = set()
        for family in [*self.registry.collect(), *self._store.describe()]:
            names.update(family.name + suffix for suffix in suffixes.get(family.type, ("",)))
        return names


# -- Slack Web API clients, counted ----------------------------------------------------------------


class MeteredRateLimitRetryHandler(AsyncRateLimitErrorRetryHandler):
    """slack_sdk's 429 retry (it sleeps Retry-After, plus up to a second), counting each 429 and
    each wait; the retried 429s never reach `api_call`, so only this sees them. The wait is the
    SDK's own, taken with `sleep` (the process' clock, bot/clock.py) instead of asyncio.sleep."""

    def __init__(
        self,
        metrics: Metrics,
        max_retry_count: int = 1,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        super().__init__(max_retry_count=max_retry_count)
        self._metrics = metrics
        self._sleep = sleep

    async def prepare_for_next_attempt_async(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> None:
        if response is None:  # not a 429 answer: the SDK's handler decides (it re-raises)
            await super().prepare_for_next_attempt_async(
                state=state, request=request, response=response, error=error
            )
            return
        self._metrics.slack_429(slack_method_of_url(request.url), _retry_after(response))
        state.next_attempt_requested = True
        await self._sleep(slack_sdk_rate_limit_wait(response))
        state.increment_current_attempt()


def slack_sdk_rate_limit_wait(response: HttpResponse) -> float:
    """What slack_sdk's AsyncRateLimitErrorRetryHandler waits after a 429: Retry-After's whole
    seconds plus a random fraction of one, or a second and a fraction when Slack names no time."""
    for name, values in response.headers.items():
        if name.lower() == "retry-after":
            value = values[0] if isinstance(values, list) else values
            return int(value) + random.random()
    return 1 + random.random()


def _retry_after(response: HttpResponse) -> float | None:
    for name, values in response.headers.items():
        if name.lower() == "retry-after":
            value = values[0] if isinstance(values, list) and values else values
            try:
                return float(str(value))
            except ValueError:
                return None
    return 1.0  # slack_sdk waits about a second when Slack names no time


class MeteredWebClient(AsyncWebClient):
    """An AsyncWebClient that counts every call by method and result (every method of the client
    goes through `api_call`). A final 429, one not retried, is counted as rate-limited here."""

    def __init__(self, *args: Any, metrics: Metrics, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._metrics = metrics

    async def api_call(self, api_method: str, **kwargs: Any) -> AsyncSlackResponse:
        try:
            response = await super().api_call(api_method, **kwargs)
        except SlackApiError as error:
            self._metrics.slack_call(api_method, slack_result(error))
            if getattr(error.response, "status_code", None) == 429:
                self._metrics.slack_429(api_method, None)
            raise
        except Exception as error:
            self._metrics.slack_call(api_method, slack_result(error))
            raise
        self._metrics.slack_call(api_method, "ok")
        return response


def metered_retry_handlers(
    handlers: list[AsyncRetryHandler],
    metrics: Metrics | None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> list[AsyncRetryHandler]:
    """The same handlers, with slack_sdk's 429 handler replaced by the counting one (waiting with
    `sleep`)."""
    if metrics is None:
        return handlers
    return [
        MeteredRateLimitRetryHandler(metrics, h.max_retry_count, sleep)
        if type(h) is AsyncRateLimitErrorRetryHandler
        else h
        for h in handlers
    ]
