"""Deliver owed completion reports (chart and scorecard) into the job's thread, exactly once.

A report is an outbox row of its own (`Store.finish_watch` writes it with the outcome), delivered
apart from the outcomes: the notifier hands report rows here and goes on, so a slow download, a
render or an upload never holds an outcome up. A report waits for its outcome to be sent (it goes
under it, in the same thread) and is only worth a message when the job has metrics or checkpoints.

Exactly once, across SIGKILL: before anything can reach Slack the row records the attempt
(`record_attempt`) and, once Slack has given the chart a file id, that id (`record_upload`); the
file is shared by `files.completeUploadExternal`, then the row is marked sent. A row found with an
attempt but not sent is first looked for in the thread (a message carrying its file, or its key in
metadata when only the text went); only if Slack has neither is the report made again. A chart
uploaded but never shared is discarded by Slack on its own.

Failures: OpenAI or Slack being unavailable defers the row with backoff (for up to
`GIVE_UP_SECONDS`); a picture that cannot be made or uploaded (no `files:write`, uploads disabled,
the renderer failing) is given up and the scorecard goes alone, saying why; a channel that refuses
the bot ends the report with one log line (the outcome already reached the person, by DM if need be).
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.chart_renderer import ChartError, ChartInput, ChartRenderer
from bot.clock import SYSTEM_CLOCK, Clock
from bot.models import TERMINAL_STATUSES, FineTuningJob
from bot.notifier import carries_key, messages_since_attempt
from bot.openai_client import FineTuningClient, NotFoundError, OpenAIError
from bot.reports import (
    UPLOAD_REFUSALS,
    ReportData,
    UploadFailed,
    gather_report,
    picture_meta,
    scorecard_text,
    upload_picture,
)
from bot.runner import CHANNEL_REFUSED
from bot.scorecard import Scorecard, chart_title
from bot.store import OutboxItem, Store, Watch

log = logging.getLogger(__name__)

METADATA_EVENT = "finetune_report"
SLACK_USER_ID = re.compile(r"[UW][A-Z0-9]{2,30}")
# How long an owed report is retried while OpenAI or Slack is unavailable before it is given up.
GIVE_UP_SECONDS = 6 * 3600.0
# Upload attempts (transient failures) before the scorecard goes without its picture.
UPLOAD_ATTEMPTS = 4
# A report waits this long for its outcome to be posted, then is deferred this long.
OUTCOME_PATIENCE_SECONDS = 30.0
OUTCOME_WAIT_SECONDS = 10.0


@dataclass(frozen=True)
class OnDemandReport:
    posted: bool  # in the channel (or its thread), for everyone there
    busy: bool = False  # a report of the same job is being made here already
    private_text: str | None = None  # the scorecard, for the asker alone
    note: str | None = None


class Reporter:
    def __init__(
        self,
        store: Store,
        openai: FineTuningClient,
        slack: AsyncWebClient,
        renderer: ChartRenderer,
        *,
        owner: str,
        lease_ttl: float,
        concurrency: int = 2,
        clock: Callable[[], float] = time.time,
        upload_http: httpx.AsyncClient | None = None,
        waits: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._waits = waits  # what waiting for an outcome is timed on
        self._store = store
        self._openai = openai
        self._slack = slack
        self._renderer = renderer
        self._owner = owner
        self._lease_ttl = lease_ttl
        self._clock = clock
        self._semaphore = asyncio.Semaphore(concurrency)
        self._http = upload_http or httpx.AsyncClient(timeout=httpx.Timeout(60.0, connect=10.0))
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._on_demand: set[tuple[str, str]] = set()
        self._outcome_events: dict[int, asyncio.Event] = {}

    @property
    def http(self) -> httpx.AsyncClient:
        """For uploads to Slack's upload URLs (no OpenAI credentials on it)."""
        return self._http

    def submit(self, item: OutboxItem, watch: Watch) -> bool:
        """Start delivering `item` unless it is already under way here; never waits."""
        if item.id in self._tasks:
            return False
        task = asyncio.create_task(self._deliver_safely(item, watch))
        self._tasks[item.id] = task
        task.add_done_callback(lambda _: self._tasks.pop(item.id, None))
        return True

    def is_busy(self, item_id: int) -> bool:
        return item_id in self._tasks

    async def wait_idle(self, timeout: float) -> bool:
        """Wait (bounded) for reports under way; for shutdown and tests. Those still running at the
        deadline are cancelled: their rows stay owed and the next start finishes them."""
        if self._tasks:
            await asyncio.wait(list(self._tasks.values()), timeout=max(0.0, timeout))
        unfinished = list(self._tasks.values())
        for task in unfinished:
            task.cancel()
        if unfinished:
            await asyncio.wait(unfinished, timeout=1.0)
        return not unfinished

    async def close(self) -> None:
        await self._http.aclose()
        self._renderer.close()

    # -- on demand (`/finetune report`) -------------------------------------------------------------

    async def on_demand(
        self, job_id: str, *, channel: str, thread_ts: str | None, requested_by: str
    ) -> OnDemandReport:
        """Make a report now and post it in `channel` (in the thread when `thread_ts`). Files cannot
        be ephemeral, so the report goes where everyone in the conversation sees it; when there
        is nothing to chart yet, or the bot may not post here, only the asker gets the numbers.
        OpenAI errors propagate (the command answers them like any other)."""
        key = (job_id, channel)
        if key in self._on_demand:
            return OnDemandReport(posted=False, busy=True)
        self._on_demand.add(key)
        try:
            return await self._on_demand_report(job_id, channel, thread_ts, requested_by)
        finally:
            self._on_demand.discard(key)

    async def _on_demand_report(
        self, job_id: str, channel: str, thread_ts: str | None, requested_by: str
    ) -> OnDemandReport:
        data = await gather_report(self._openai, job_id, parse=self._renderer.parse)
        partial = data.job.status not in TERMINAL_STATUSES
        card = data.scorecard(int(self._clock()))
        if not data.worth_posting:
            return OnDemandReport(posted=False, private_text=scorecard_text(card, partial=partial))
        png, problem = await self._picture(data)
        # The mention is ours (a user id from Slack's signed payload, shape-checked), appended
        # after the scorecard's own escaping so that it stays a mention.
        asked = f"\n<@{requested_by}> asked for this report." if SLACK_USER_ID.fullmatch(requested_by) else ""
        try:
            if png is not None:
                try:
                    await upload_picture(
                        self._slack,
                        self._http,
                        picture_meta(card, png),
                        channel=channel,
                        thread_ts=thread_ts,
                        comment=scorecard_text(card, partial=partial) + asked,
                    )
                    return OnDemandReport(posted=True)
                except SlackApiError as error:
                    reason = str(error.response.get("error") or "unknown_error")
                    if reason not in UPLOAD_REFUSALS and reason not in CHANNEL_REFUSED:
                        raise
                    # Sharing a file needs membership, which chat:write.public does not give:
                    # the numbers may still be posted where the chart may not.
                    problem = _refusal_note(reason)
                except (UploadFailed, httpx.HTTPError) as error:
                    log.warning("on-demand report of %s: the upload failed (%s)", job_id, error)
                    problem = "The chart could not be uploaded to Slack."
            await self._slack.chat_postMessage(
                channel=channel,
                thread_ts=thread_ts,
                text=scorecard_text(card, partial=partial, note=problem) + asked,
                unfurl_links=False,
                unfurl_media=False,
            )
            return OnDemandReport(posted=True)
        except SlackApiError as error:
            reason = str(error.response.get("error") or "unknown_error")
            if reason not in CHANNEL_REFUSED:
                raise
            return OnDemandReport(
                posted=False,
                private_text=scorecard_text(card, partial=partial),
                note="I can't post in this conversation, so only you see the numbers; "
                "invite me (`/invite @finetune-bot`) to get the chart here.",
            )

    # -- one report ------------------------------------------------------------------------------

    async def _deliver_safely(self, item: OutboxItem, watch: Watch) -> None:
        try:
            # Wait for the outcome before taking a slot: reports waiting behind a busy channel's
            # paced outcomes must not hold up a quiet channel's report (measured by bench/reports.py).
            outcome = await self._sent_outcome(item)
            async with self._semaphore:
                await self._deliver(item, watch, outcome)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # one bad report must never stop the others
            if self._clock() - item.created_at > GIVE_UP_SECONDS:
                log.error("giving up the report of %s after %s: %s", item.job_id, type(error).__name__, error)
                await self._finish(item, None, None, f"given up: {type(error).__name__}")
                return
            transient = isinstance(error, OpenAIError | SlackApiError | httpx.HTTPError | UploadFailed)
            if transient:
                log.warning(
                    "report of %s not made yet (%s: %s); will retry", item.job_id, type(error).__name__, error
                )
            else:
                log.exception("report of %s failed; will retry", item.job_id)
            await asyncio.to_thread(
                self._store.defer, item.id, error=type(error).__name__, retry_in=self._backoff(item)
            )

    def _backoff(self, item: OutboxItem) -> float:
        age = max(0.0, self._clock() - item.created_at)
        # Grows with the row's age (attempts only count posts): 10 s at first, at most 10 minutes.
        return min(600.0, 10.0 + age / 4) * random.uniform(0.75, 1.0)

    async def _deliver(self, item: OutboxItem, watch: Watch, outcome: OutboxItem | None) -> None:
        if outcome is None or outcome.sent_channel is None:
            # It goes under the outcome, which Slack has not taken yet (a 429, an outage): later.
            await asyncio.to_thread(
                self._store.defer, item.id, error="waiting for the outcome", retry_in=OUTCOME_WAIT_SECONDS
            )
            return
        channel = outcome.sent_channel
        thread_ts = (
            watch.announcement_ts
            if channel == watch.channel_id and watch.announcement_ts
            else outcome.sent_ts
        )
        if item.attempt_started_at is not None:
            found = await self._find_posted(item, channel, thread_ts)
            if found is not None:
                log.info("the report of %s was already in Slack (%s); not posting again", item.job_id, found)
                await self._finish(item, channel, None, f"found {found}")
                return

        try:
            data = await gather_report(
                self._openai, item.job_id, parse=self._renderer.parse, job=_ended_job(item.payload)
            )
        except NotFoundError:
            await self._finish(item, None, None, "job gone at OpenAI")
            log.info("no report for %s: OpenAI no longer has the job", item.job_id)
            return
        if not data.worth_posting:
            log.info("no report for %s: no step metrics or checkpoints to show", item.job_id)
            await self._finish(item, None, None, "no metrics")
            return
        for problem in data.problems:
            log.warning("report of %s: %s", item.job_id, problem)

        png, picture_problem = await self._picture(data)
        if not await asyncio.to_thread(
            self._store.record_attempt, item.id, self._owner, channel, thread_ts, self._lease_ttl
        ):
            log.info("the report of %s is no longer ours; skipping", item.job_id)
            return
        card = data.scorecard(int(self._clock()))
        try:
            if png is not None and item.attempts < UPLOAD_ATTEMPTS:
                try:
                    file_id = await self._upload(item, card, png, channel, thread_ts)
                except SlackApiError as error:
                    reason = str(error.response.get("error") or "unknown_error")
                    # A channel the bot is not a member of refuses the file but may still take the
                    # numbers (chat:write.public); a real refusal shows at the text post below.
                    if reason not in UPLOAD_REFUSALS and reason not in CHANNEL_REFUSED:
                        raise
                    log.warning(
                        "report of %s: Slack refused the chart (%s); posting the numbers alone",
                        item.job_id,
                        reason,
                    )
                    picture_problem = _refusal_note(reason)
                else:
                    if file_id is not None:
                        await self._finish(item, channel, None, f"file {file_id}")
                        log.info("posted the report of %s in %s", item.job_id, channel)
                    return
            elif png is not None:
                picture_problem = "The chart could not be uploaded to Slack."
            text = scorecard_text(card, note=picture_problem)
            response = await self._slack.chat_postMessage(
                channel=channel,
                thread_ts=thread_ts,
                text=text,
                metadata={"event_type": METADATA_EVENT, "event_payload": {"key": item.key}},
                unfurl_links=False,
                unfurl_media=False,
            )
            await self._finish(item, channel, str(response["ts"]), "text only")
            log.info("posted the report of %s in %s (without a chart)", item.job_id, channel)
        except SlackApiError as error:
            reason = str(error.response.get("error") or "unknown_error")
            if reason in CHANNEL_REFUSED:
                log.warning("no report for %s: %s refused the bot (%s)", item.job_id, channel, reason)
                await self._finish(item, None, None, f"channel refused: {reason}")
                return
            raise

    def outcome_sent(self, watch_id: int) -> None:
        """The notifier posted (or found) this watch's outcome: its report may go now."""
        event = self._outcome_events.get(watch_id)
        if event is not None:
            event.set()

    async def _sent_outcome(self, item: OutboxItem) -> OutboxItem | None:
        """The outcome this report follows, once sent. Usually it is being posted this very moment
        (both rows were claimed together): the notifier says when (`outcome_sent`), so waiting
        costs no polling; an outcome posted by another replica is seen at the check after the wait."""
        event = self._outcome_events.setdefault(item.watch_id, asyncio.Event())  # before the check
        try:
            outcome = await asyncio.to_thread(self._store.outcome_of, item.watch_id)
            if outcome is not None and outcome.sent_at is not None:
                return outcome
            await self._waits.wait(event, OUTCOME_PATIENCE_SECONDS)
            outcome = await asyncio.to_thread(self._store.outcome_of, item.watch_id)
            return outcome if outcome is not None and outcome.sent_at is not None else None
        finally:
            if self._outcome_events.get(item.watch_id) is event:
                del self._outcome_events[item.watch_id]

    async def _picture(self, data: ReportData) -> tuple[bytes | None, str | None]:
        if data.series is None or not data.series.points:
            return None, None
        card = data.scorecard(int(self._clock()))
        try:
            png = await self._renderer.render(
                ChartInput(chart_title(card), data.series.points, data.checkpoints)
            )
        except ChartError as error:
            log.warning("the chart of %s could not be drawn: %s", data.job.id, error)
            return None, "The chart could not be drawn."
        return png, None

    async def _upload(
        self, item: OutboxItem, card: Scorecard, png: bytes, channel: str, thread_ts: str | None
    ) -> str | None:
        async def remember(file_id: str) -> bool:
            return await asyncio.to_thread(
                self._store.record_upload, item.id, self._owner, file_id, self._lease_ttl
            )

        return await upload_picture(
            self._slack,
            self._http,
            picture_meta(card, png),
            channel=channel,
            thread_ts=thread_ts,
            comment=scorecard_text(card),
            on_file_id=remember,
        )

    async def _finish(self, item: OutboxItem, channel: str | None, ts: str | None, note: str) -> None:
        await asyncio.to_thread(self._store.mark_sent, item.id, channel=channel or "", ts=ts, note=note)

    async def _find_posted(self, item: OutboxItem, channel: str, thread_ts: str | None) -> str | None:
        """Where an earlier attempt's report is, if Slack has it: a message sharing its chart, or
        one carrying its key (when only the text went)."""
        for message in await messages_since_attempt(self._slack, item, channel, thread_ts):
            files = [f.get("id") for f in message.get("files") or [] if isinstance(f, dict)]
            if item.upload_file_id and item.upload_file_id in files:
                return f"file {item.upload_file_id}"
            if carries_key(message, METADATA_EVENT, item.key):
                return f"message {message.get('ts')}"
        return None


def _ended_job(payload: dict[str, object]) -> FineTuningJob | None:
    """The job as the outbox recorded it when it ended (a whole job object), if it is one."""
    if payload.get("object") != "fine_tuning.job" or payload.get("status") not in TERMINAL_STATUSES:
        return None
    try:
        return FineTuningJob.from_api(payload)
    except (KeyError, TypeError, ValueError):
        return None


def _refusal_note(reason: str) -> str:
    if reason in CHANNEL_REFUSED:
        return "The chart is missing: Slack shares files only where the bot is a member (`/invite` it)."
    if reason == "missing_scope":
        return "The chart is missing: the app lacks the `files:write` scope (reinstall it from manifest.yml)."
    if reason in ("file_uploads_disabled", "file_type_not_allowed", "file_upload_size_restricted"):
        return "The chart is missing: this workspace does not allow the bot to upload it."
    return f"The chart is missing: Slack refused the upload (`{reason}`)."
