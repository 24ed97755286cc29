"""Deliver the outbox: each owed notification reaches Slack exactly once.

The order of durable steps is what makes "exactly once" hold across SIGKILL:
1. the outbox row exists (written with the end of the watch, see `Store.finish_watch`);
2. `record_attempt` notes where the post goes, before posting;
3. the post carries the row's key in Slack message metadata;
4. `mark_sent` after Slack accepts it.
A row with an attempt but no `sent_at` means the process died between 2 and 4: Slack is asked
whether it has a message with that key (conversations.replies / history with metadata) and the post
is only repeated if it does not. Slack 429/5xx and connection errors defer the row (retried next
cycle); a channel that refuses the bot gets the outcome by DM to the person who started the job.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot import render
from bot.crash import crash_point
from bot.logs import log_context
from bot.models import FineTuningJob
from bot.runner import CHANNEL_REFUSED
from bot.store import OutboxItem, Store, Watch

if TYPE_CHECKING:
    from bot.cards_updater import CardEditor
    from bot.reporter import Reporter

log = logging.getLogger(__name__)

METADATA_EVENT = "finetune_outcome"
# Slack allows about one message per second per channel (more in short bursts, then 429).
CHANNEL_SPACING = 1.0


async def messages_since_attempt(
    slack: AsyncWebClient, item: OutboxItem, channel: str, thread_ts: str | None
) -> list[dict[str, Any]]:
    """The messages of `thread_ts` (or of the channel) since a minute before `item`'s recorded
    attempt: where a post made by that attempt would be. Nothing when the channel refuses the
    bot or the thread is gone: the earlier attempt cannot have landed there either."""
    oldest = f"{(item.attempt_started_at or 0) - 60:.6f}"
    try:
        if thread_ts:
            response = await slack.conversations_replies(
                channel=channel, ts=thread_ts, oldest=oldest, include_all_metadata=True, limit=200
            )
        else:
            response = await slack.conversations_history(
                channel=channel, oldest=oldest, include_all_metadata=True, limit=200
            )
    except SlackApiError as error:
        reason = error.response.get("error")
        if reason in CHANNEL_REFUSED or reason == "thread_not_found":
            return []
        raise
    return [m for m in response.get("messages") or [] if isinstance(m, dict)]


def carries_key(message: dict[str, Any], event_type: str, key: str) -> bool:
    """Whether a message carries this outbox key in its Slack metadata."""
    meta = message.get("metadata") or {}
    return bool(meta.get("event_type") == event_type and (meta.get("event_payload") or {}).get("key") == key)


class Notifier:
    def __init__(
        self,
        store: Store,
        slack: AsyncWebClient,
        *,
        owner: str,
        lease_ttl: float,
        concurrency: int = 4,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        cards: CardEditor | None = None,
        reporter: Reporter | None = None,
    ) -> None:
        self._monotonic = monotonic
        self._sleep = sleep
        self._cards = cards
        self._reporter = reporter
        self._store = store
        self._slack = slack
        self._owner = owner
        self._lease_ttl = lease_ttl
        self._clock = clock
        self._lock = asyncio.Lock()
        self._semaphore = asyncio.Semaphore(concurrency)
        self._queues: dict[str, collections.deque[tuple[OutboxItem, Watch]]] = {}
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._queued: set[int] = set()

    async def deliver_due(self) -> int:
        """Claim what is owed and hand it to per-channel workers; returns how many were queued.

        Does not wait for the posts: a channel that Slack's rate limit holds back must hold up
        neither the poll cycle nor other channels. Messages for one channel go one after another,
        paced to Slack's ~1 per second per channel; channels run in parallel under a bound.
        Calling it again also renews the leases of what is still queued here.
        """
        async with self._lock:  # the poller and a webhook may both ask at once
            items = await asyncio.to_thread(
                # Leases are measured on the database's clock, the same for every replica.
                self._store.claim_outbox,
                self._owner,
                ttl=self._lease_ttl,
                include_reports=self._reporter is not None,
            )
            fresh = [
                item
                for item in items
                if item.id not in self._queued
                and not (self._reporter is not None and self._reporter.is_busy(item.id))
            ]
            if not fresh:
                return 0
            watches = await asyncio.to_thread(self._store.watches_by_id, {i.watch_id for i in fresh})
            for item in fresh:
                watch = watches[item.watch_id]
                if item.is_report and self._reporter is not None:
                    # Reports are made apart (downloads, a render, an upload): never in the
                    # channel's queue, where they would hold up the outcomes behind them.
                    self._reporter.submit(item, watch)
                    continue
                self._queued.add(item.id)
                self._queues.setdefault(watch.channel_id, collections.deque()).append((item, watch))
                if watch.channel_id not in self._workers:
                    self._workers[watch.channel_id] = asyncio.create_task(self._work(watch.channel_id))
            return len(fresh)

    async def wait_idle(self, timeout: float) -> bool:
        """Wait (bounded) until every queued notification was tried; for shutdown and tests."""
        deadline = asyncio.get_running_loop().time() + timeout
        while self._workers:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                return False
            await asyncio.wait(list(self._workers.values()), timeout=remaining)
        return True

    async def _work(self, channel: str) -> None:
        queue = self._queues[channel]
        last_post: float | None = None
        try:
            while queue:
                item, watch = queue.popleft()
                try:
                    if last_post is not None:
                        await self._sleep(max(0.0, last_post + CHANNEL_SPACING - self._monotonic()))
                    async with self._semaphore:
                        await self._deliver_safely(item, watch)
                    last_post = self._monotonic()
                finally:
                    self._queued.discard(item.id)
        finally:
            # No await between the empty queue and here, so nothing can be queued in between.
            self._workers.pop(channel, None)
            self._queues.pop(channel, None)

    async def _deliver_safely(self, item: OutboxItem, watch: Watch) -> int:
        """Deliver one notification; any failure defers it (with backoff), never blocks the rest."""
        with log_context(job_id=item.job_id, channel=watch.channel_id):
            return await self._deliver_logged(item, watch)

    async def _deliver_logged(self, item: OutboxItem, watch: Watch) -> int:
        try:
            return 1 if await self._deliver(item, watch) else 0
        except Exception as error:  # one bad notification must never block the rest
            log.exception("delivering %s failed; will retry", item.key)
            await asyncio.to_thread(
                self._store.defer, item.id, error=type(error).__name__, retry_in=self._backoff(item)
            )
            return 0

    def _backoff(self, item: OutboxItem) -> float:
        return min(300.0, 2.0 * 2.0 ** min(item.attempts, 7)) * random.uniform(0.5, 1.0)

    async def _deliver(self, item: OutboxItem, watch: Watch) -> bool:
        job = FineTuningJob.from_api(item.payload)
        if item.attempt_started_at is not None and item.attempt_channel:
            found = await self._find_posted(item)
            if found is not None:
                log.info("%s was already in Slack (ts %s); not posting again", item.key, found)
                await asyncio.to_thread(
                    self._store.mark_sent, item.id, channel=item.attempt_channel, ts=found
                )
                self._outcome_sent(watch)
                await self._update_announcement(watch, job)
                return True

        message = render.render_outcome(job, watch.user_id, item.outcome, int(self._clock()))
        try:
            ts = await self._post(item, watch.channel_id, watch.announcement_ts, message)
        except SlackApiError as error:
            reason = str(error.response.get("error") or "unknown_error")
            if reason not in CHANNEL_REFUSED:
                raise
            log.warning(
                "%s: channel %s refused the bot (%s); telling %s directly",
                item.key,
                watch.channel_id,
                reason,
                watch.user_id,
            )
            return await self._deliver_by_dm(item, watch, job, reason)
        if ts is None:
            return False
        await asyncio.to_thread(self._store.mark_sent, item.id, channel=watch.channel_id, ts=ts)
        log.info("announced %s outcome %s in %s", item.job_id, item.outcome, watch.channel_id)
        self._outcome_sent(watch)
        await self._update_announcement(watch, job)
        return True

    async def _post(
        self, item: OutboxItem, channel: str, thread_ts: str | None, message: render.Reply
    ) -> str | None:
        """Post with the key in metadata; None if this replica no longer holds the row."""
        recorded = await asyncio.to_thread(
            self._store.record_attempt, item.id, self._owner, channel, thread_ts, self._lease_ttl
        )
        if not recorded:
            log.info("%s is no longer ours (sent or leased elsewhere); skipping", item.key)
            return None
        crash_point("before_post")
        kwargs: dict[str, Any] = {}
        if thread_ts:
            # A threaded reply that also shows in the channel, like the GitHub app's updates.
            kwargs = {"thread_ts": thread_ts, "reply_broadcast": True}
        response = await self._slack.chat_postMessage(
            channel=channel,
            metadata={"event_type": METADATA_EVENT, "event_payload": {"key": item.key}},
            unfurl_links=False,
            unfurl_media=False,
            **kwargs,
            **message.as_kwargs(),
        )
        crash_point("after_post")
        return str(response["ts"])

    async def _deliver_by_dm(self, item: OutboxItem, watch: Watch, job: FineTuningJob, reason: str) -> bool:
        opened = await self._slack.conversations_open(users=watch.user_id)
        dm = str(opened["channel"]["id"])
        note = render.render_redirected_note(watch.channel_id, reason)
        message = render.render_outcome(job, watch.user_id, item.outcome, int(self._clock()), note=note)
        ts = await self._post(item, dm, None, message)
        if ts is None:
            return False
        await asyncio.to_thread(
            self._store.mark_sent, item.id, channel=dm, ts=ts, note=f"sent by DM: {watch.channel_id} {reason}"
        )
        self._outcome_sent(watch)
        return True

    def _outcome_sent(self, watch: Watch) -> None:
        if self._reporter is not None:
            self._reporter.outcome_sent(watch.id)

    async def _find_posted(self, item: OutboxItem) -> str | None:
        """The ts of a message already carrying this item's key, if Slack has one."""
        assert item.attempt_channel is not None
        for message in await messages_since_attempt(
            self._slack, item, item.attempt_channel, item.attempt_thread_ts
        ):
            if carries_key(message, METADATA_EVENT, item.key):
                return str(message.get("ts"))
        return None

    async def _update_announcement(self, watch: Watch, job: FineTuningJob) -> None:
        """Make the parent message (the job's card) show the final state (best effort: the outcome
        is already out). With a card editor, the edit joins its budget and never waits here."""
        if not watch.announcement_ts:
            return
        if self._cards is not None:
            self._cards.show_final(watch, job)
            return
        if watch.origin == "watch":
            message = render.render_watch_announcement(job, watch.user_id, int(self._clock()))
        else:
            message = render.render_announcement(job, watch.user_id, int(self._clock()))
        try:
            await self._slack.chat_update(
                channel=watch.channel_id, ts=watch.announcement_ts, **message.as_kwargs()
            )
        except Exception:
            log.warning(
                "could not update the announcement of %s in %s", watch.job_id, watch.channel_id, exc_info=True
            )
