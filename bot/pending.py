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
- `unconfirmed` (OpenAI's answer to the create was lost: timeout, 5xx, dropped connection, so the
  job may exist): looked up the same way, by any replica, on the schedule of
  `runner.UNCONFIRMED_LOOKUPS`; found → watched and announced, and the user told through the
  response_url that it started after all; never found by the last lookup → abandoned, logged, and
  the user told a retry is safe.

Whatever it concludes is audited (bot/audit.py) in a row of its own, by the reconciler, for the
person who ran the command: `ok` naming the job, or `failed` when no job was made.
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
from bot.audit import Action, AuditEntry, Auditor, Result
from bot.crash import crash_point
from bot.models import FineTuningJob
from bot.openai_client import FineTuningClient, OpenAIError
from bot.runner import (
    ANNOUNCEMENT_EVENT,
    CHANNEL_REFUSED,
    CommandRunner,
    create_audit_detail,
    unconfirmed_lookups,
)
from bot.store import PendingCreate, Store, Watch

log = logging.getLogger(__name__)

# Slack refuses a signed command older than 5 minutes, and OpenAI's retries end within ~20 s, so
# after this long no delivery of the command can still create a job under its key.
ABANDON_AFTER = 600.0
# Closed rows are kept a week (a replayed command is recognised long before), then deleted.
KEEP_CLOSED = 7 * 86400.0
# How long response_url accepts replies (Slack: 30 minutes).
RESPONSE_URL_LIFETIME = 1800.0
# Why the reconciler's audit row concludes a create as it does (`/finetune history` shows them).
CONFIRMED_AFTER_LOST_ANSWER = "confirmed later: OpenAI's answer was lost, the job was found by its key"
CONFIRMED_HALF_DONE = "confirmed later: the create was left half-done"
NONE_AFTER_LOST_ANSWER = "no job was started: OpenAI never confirmed it and none appeared with its key"
NONE_HALF_DONE = "no job was started: the create was left half-done and none appeared with its key"


def lookup_due(row: PendingCreate, now: float, schedule: tuple[float, ...]) -> bool:
    """Whether an unconfirmed create is to be looked up now: a point of the schedule (seconds after
    the command) has passed since it was last touched (`updated_at`: closed as unconfirmed, or the
    previous lookup). Past the last point only a failed lookup is left open; it is tried again
    every `schedule[0]` seconds."""
    age = now - row.created_at
    passed = [point for point in schedule if point <= age]
    if not passed:
        return False
    if row.updated_at < row.created_at + passed[-1]:
        return True
    return now - row.updated_at >= schedule[0]


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
        auditor: Auditor | None = None,
    ) -> None:
        self._auditor = auditor or Auditor(store, clock=clock)
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
        return done + await self._look_up_unconfirmed(now)

    async def _look_up_unconfirmed(self, now: float) -> int:
        schedule = unconfirmed_lookups()
        rows = await asyncio.to_thread(self._store.unconfirmed_creates, started_before=now - schedule[0])
        done = 0
        for row in rows:
            if not lookup_due(row, now, schedule) or self._runner.is_carrying_out(row.trigger_id):
                continue
            # Claiming moves `updated_at` to now: that is what marks this lookup as made.
            if not await asyncio.to_thread(self._store.claim_pending, row, self._owner, now):
                continue
            try:
                done += await self._find_unconfirmed(row, now, give_up_at=schedule[-1])
            except OpenAIError as error:
                log.warning("could not look up unconfirmed create %s (%s)", row.trigger_id, error.status)
        return done

    async def _find_unconfirmed(self, row: PendingCreate, now: float, *, give_up_at: float) -> int:
        job = await self._job_with_key(row)
        if job is not None:
            found = await self._watch_and_announce(row, job)
            if found:
                await self._reply(row, render.render_create_started_after_all(job.id, row.channel_id))
            return found
        if now - row.created_at < give_up_at:
            log.info("no job yet for unconfirmed create %s; will look again", row.trigger_id)
            return 0
        log.warning(
            "create %s by %s in %s: OpenAI never confirmed it and no job with its key appeared; "
            "giving it up (nothing was started)",
            row.trigger_id,
            row.user_id,
            row.channel_id,
        )
        await asyncio.to_thread(self._store.close_create, row.trigger_id, "abandoned", "unconfirmed, no job")
        await self._audit_conclusion(row, None, NONE_AFTER_LOST_ANSWER)
        await self._reply(row, render.render_create_never_started(row.params.get("training_file")))
        return 1

    async def _reconcile(self, row: PendingCreate, now: float) -> int:
        if row.state == "created" and row.job_id and row.watch_id is not None:
            return await self._finish_announcement(row, row.job_id, row.watch_id)
        return await self._find_job(row, now)

    async def _job_with_key(self, row: PendingCreate) -> FineTuningJob | None:
        page = await self._openai.list_jobs(metadata={"slack_trigger": row.trigger_id}, limit=10)
        # The filter is OpenAI's; check again rather than trust it to be exact.
        found = [j for j in page.data if (j.raw.get("metadata") or {}).get("slack_trigger") == row.trigger_id]
        # Newest first; the idempotency key makes it one job, take the first made.
        return found[-1] if found else None

    async def _find_job(self, row: PendingCreate, now: float) -> int:
        job = await self._job_with_key(row)
        if job is None:
            if now - row.created_at >= ABANDON_AFTER:
                log.warning(
                    "create %s by %s in %s never reached OpenAI; giving it up",
                    row.trigger_id,
                    row.user_id,
                    row.channel_id,
                )
                await asyncio.to_thread(self._store.close_create, row.trigger_id, "abandoned", "no job found")
                await self._audit_conclusion(row, None, NONE_HALF_DONE)
            return 0
        return await self._watch_and_announce(row, job)

    async def _watch_and_announce(self, row: PendingCreate, job: FineTuningJob) -> int:
        watch: Watch | None = await asyncio.to_thread(
            self._store.record_created, row, job_id=job.id, job_created_at=job.created_at, status=job.status
        )
        if watch is None:
            return 0  # recorded meanwhile by whoever announces it (and audits it)
        crash_point("after_reconciler_record")
        log.info("found %s started by create %s; watching and announcing it", job.id, row.trigger_id)
        # Before the announcement: should the process die while announcing, the `created` row's
        # reconciliation finds the audit done.
        why = CONFIRMED_AFTER_LOST_ANSWER if row.state == "unconfirmed" else CONFIRMED_HALF_DONE
        await self._audit_conclusion(row, job.id, why)
        reply = await self._runner.announce_created(row, job, watch)
        await self._reply(row, reply)
        return 1

    async def _finish_announcement(self, row: PendingCreate, job_id: str, watch_id: int) -> int:
        # Its ok row is normally written (by the runner, or the reconciler that found the job),
        # unless the database failed just then.
        await self._audit_conclusion(row, job_id, CONFIRMED_HALF_DONE)
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
        await self._reply(row, reply)
        return 1

    async def _audit_conclusion(self, row: PendingCreate, job_id: str | None, reason: str) -> None:
        """What the create came to, as the reconciler learnt it: `ok` with the job (unless the
        job's create is already recorded `ok`), or `failed` when no job was made.

        A row of its own, never an update of the runner's: that row says what was known when the
        command ran (a lost answer: `unconfirmed`, no job), and a trail whose rows change later
        could no longer be trusted to say what was known, or done, when. The two carry the same
        key. `at` is when the reconciler learnt it; `requested_at` when the command came."""
        detail = {k: v for k, v in create_audit_detail(row.params, row.trigger_id).items() if v is not None}
        entry = AuditEntry(
            team_id=row.team_id,
            channel_id=row.channel_id,
            user_id=row.user_id,
            action=Action.CREATE,
            job_id=job_id,
            result=Result.OK if job_id is not None else Result.FAILED,
            reason=reason,
            detail={**detail, "by": "reconciler", "requested_at": row.created_at},
        )
        await self._auditor.record_unless_done(entry)

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

    async def _reply(self, row: PendingCreate, reply: render.Reply | None) -> None:
        """Tell the person privately (a refused announcement, or news of an unconfirmed create)
        while Slack still accepts replies to their command (best effort: an outcome still reaches
        them by DM)."""
        if reply is None or not row.response_url or self._clock() - row.created_at > RESPONSE_URL_LIFETIME:
            return
        try:
            await AsyncWebhookClient(row.response_url).send(
                response_type="ephemeral", replace_original=False, **reply.as_kwargs()
            )
        except Exception as error:
            log.warning("could not send a note about create %s: %s", row.trigger_id, type(error).__name__)
