"""Finish creates that were left half-done: OpenAI has (or may have) the job, nobody watches it.

A create is written down (`finetune_pending_creates`, keyed by Slack's trigger_id) before OpenAI is
called. A row still open later means the process died, or the database failed, between OpenAI
creating the job and the bot recording or announcing it. Each poll cycle (the first one right at
start) takes such rows over and:
- `pending` (no job id): looks the job up by the `slack_trigger` metadata the create carried
  (`GET /fine_tuning/jobs?metadata[slack_trigger]=…`); found → watched and announced, exactly like a
  create; never found once nothing can create it any more (see ABANDON_AFTER) → abandoned, logged;
- `created` (watched, not yet announced): checks the channel for an announcement carrying the key
  (the process may have died right after posting it), and posts one only if there is none.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.webhook.async_client import AsyncWebhookClient

from bot import render
from bot.openai_client import FineTuningClient, OpenAIError
from bot.runner import ANNOUNCEMENT_EVENT, CHANNEL_REFUSED, CommandRunner
from bot.store import PendingCreate, Store

log = logging.getLogger(__name__)

# Slack refuses a signed command older than 5 minutes, and OpenAI's retries end within ~20 s, so
# after this long no delivery of the command can still create a job under its key.
ABANDON_AFTER = 600.0
# Closed rows are kept a week (a replayed command is recognised long before), then deleted.
KEEP_CLOSED = 7 * 86400.0
# How long response_url accepts replies (Slack: 30 minutes).
RESPONSE_URL_LIFETIME = 1800.0


class CreateReconciler:
    def __init__(
        self,
        store: Store,
        openai: FineTuningClient,
        slack: AsyncWebClient,
        runner: CommandRunner,
        *,
        owner: str,
        stale_after: float,
        others_orphaned: bool,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._openai = openai
        self._slack = slack
        self._runner = runner
        self._owner = owner
        self._stale_after = stale_after
        self._others_orphaned = others_orphaned
        self._clock = clock

    async def run(self) -> int:
        """One pass; returns how many rows it finished. Never raises (the poll cycle goes on)."""
        try:
            return await self._run()
        except Exception:
            log.exception("reconciling pending creates failed; the next cycle will try again")
            return 0

    async def _run(self) -> int:
        now = self._clock()
        rows = await asyncio.to_thread(
            self._store.pending_to_reconcile,
            self._owner,
            stale_before=now - self._stale_after,
            others_orphaned=self._others_orphaned,
        )
        done = 0
        for row in rows:
            if self._runner.is_carrying_out(row.trigger_id):
                continue
            if not await asyncio.to_thread(self._store.claim_pending, row, self._owner, now):
                continue  # another replica took it
            try:
                done += await self._reconcile(row, now)
            except OpenAIError as error:
                log.warning("could not reconcile create %s (%s); next cycle", row.trigger_id, error.status)
        if rows:
            await asyncio.to_thread(self._store.purge_closed_creates, now - KEEP_CLOSED)
        return done

    async def _reconcile(self, row: PendingCreate, now: float) -> int:
        if row.state == "created" and row.job_id and row.watch_id is not None:
            return await self._finish_announcement(row, row.job_id, row.watch_id)
        return await self._find_job(row, now)

    async def _find_job(self, row: PendingCreate, now: float) -> int:
        page = await self._openai.list_jobs(metadata={"slack_trigger": row.trigger_id}, limit=10)
        # The filter is OpenAI's; check again rather than trust it to be exact.
        found = [j for j in page.data if (j.raw.get("metadata") or {}).get("slack_trigger") == row.trigger_id]
        if not found:
            if now - row.created_at >= ABANDON_AFTER:
                log.warning(
                    "create %s by %s in %s never reached OpenAI; giving it up",
                    row.trigger_id,
                    row.user_id,
                    row.channel_id,
                )
                await asyncio.to_thread(self._store.close_create, row.trigger_id, "abandoned", "no job found")
            return 0
        job = found[-1]  # newest first; the idempotency key makes it one job, take the first made
        watch = await asyncio.to_thread(
            self._store.record_created, row, job_id=job.id, job_created_at=job.created_at, status=job.status
        )
        if watch is None:
            return 0  # recorded meanwhile by whoever announces it
        log.info("found %s started by create %s; watching and announcing it", job.id, row.trigger_id)
        reply = await self._runner.announce_created(row, job, watch)
        await self._tell_user(row, reply)
        return 1

    async def _finish_announcement(self, row: PendingCreate, job_id: str, watch_id: int) -> int:
        ts = await self._announcement_in_slack(row)
        if ts is not None:
            log.info("the announcement of %s was already in Slack (ts %s)", job_id, ts)
            await asyncio.to_thread(self._store.mark_announced, row.trigger_id, watch_id, ts)
            return 1
        watch = await asyncio.to_thread(self._store.watch, watch_id)
        if watch is None:  # pragma: no cover - the watch is written with the row's job id
            return 0
        job = await self._openai.retrieve_job(job_id)
        reply = await self._runner.announce_created(row, job, watch)
        await self._tell_user(row, reply)
        return 1

    async def _announcement_in_slack(self, row: PendingCreate) -> str | None:
        try:
            response = await self._slack.conversations_history(
                channel=row.channel_id,
                oldest=f"{row.created_at - 60:.6f}",
                include_all_metadata=True,
                limit=200,
            )
        except SlackApiError as error:
            if error.response.get("error") in CHANNEL_REFUSED:
                return None  # an earlier post cannot have landed there either
            raise
        for message in response.get("messages") or []:
            meta = message.get("metadata") or {}
            if (
                meta.get("event_type") == ANNOUNCEMENT_EVENT
                and (meta.get("event_payload") or {}).get("key") == row.trigger_id
            ):
                return str(message.get("ts"))
        return None

    async def _tell_user(self, row: PendingCreate, reply: render.Reply | None) -> None:
        """The channel refused the announcement: tell the person privately while Slack still
        accepts replies to their command (best effort; the outcome will reach them by DM)."""
        if reply is None or not row.response_url or self._clock() - row.created_at > RESPONSE_URL_LIFETIME:
            return
        try:
            await AsyncWebhookClient(row.response_url).send(
                response_type="ephemeral", replace_original=False, **reply.as_kwargs()
            )
        except Exception as error:
            log.warning("could not reply to create %s: %s", row.trigger_id, type(error).__name__)
