"""Follow every watched job to its end with as few OpenAI calls as the API allows.

One cycle: claim this replica's share of the active watches, learn their jobs' statuses from
`GET /fine_tuning/jobs?limit=100` pages (newest first, a hundred jobs a call), retrieve one by one
only the jobs those pages did not reach, write an outbox row for every job that ended, then deliver
the outbox. A job's state that did not change costs nothing more. Any OpenAI error is logged and the
next cycle tries again; a job OpenAI no longer knows (404) ends its watch with a note, and never
holds up the others.
"""

from __future__ import annotations

import asyncio
import logging
import math
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from bot import ids
from bot.audit import AuditRetention
from bot.cards_updater import CardEditor
from bot.crash import crash_point
from bot.logs import bind_context, log_context
from bot.models import FineTuningJob
from bot.notifier import Notifier
from bot.openai_client import FineTuningClient, NotFoundError, OpenAIError
from bot.store import Store, Watch

log = logging.getLogger(__name__)

PAGE_SIZE = 100


@dataclass(frozen=True)
class StatusReport:
    jobs: dict[str, FineTuningJob]
    missing: set[str]  # OpenAI answered 404
    unknown: set[str]  # could not learn this cycle (errors); try again next time


def new_replica_id() -> str:
    return f"replica-{uuid.uuid4().hex[:12]}"


class Poller:
    def __init__(
        self,
        store: Store,
        openai: FineTuningClient,
        notifier: Notifier,
        *,
        owner: str,
        lease_ttl: float,
        concurrency: int = 8,
        single_process: bool = False,
        reconcile_creates: Callable[[], Awaitable[int]] | None = None,
        cards: CardEditor | None = None,
        audit_retention: AuditRetention | None = None,
    ) -> None:
        self._cards = cards
        self._audit_retention = audit_retention
        # Until the first catch-up succeeds: final card edits a stopped process still owed.
        self._cards_caught_up = cards is None
        self._reconcile_creates = reconcile_creates
        self._store = store
        self._openai = openai
        self._notifier = notifier
        self._owner = owner
        self._lease_ttl = lease_ttl
        self._concurrency = concurrency
        # SQLite serves one process: a heartbeat left by a killed predecessor is not a live
        # replica, and counting it would leave part of the watches unclaimed after a restart.
        self._single_process = single_process

    async def cycle(self) -> None:
        """One poll cycle. Never raises: the scheduler must keep calling it."""
        if self._reconcile_creates is not None:
            # First, so that a half-done create found here is watched in this very cycle.
            await self._reconcile_creates()
        seen: tuple[list[Watch], StatusReport] | None = None
        try:
            seen = await self._cycle()
        except Exception:
            log.exception("poll cycle failed; the next one will try again")
        try:
            await self._notifier.deliver_due()
        except Exception:
            log.exception("delivering notifications failed; the next cycle will try again")
        if not self._cards_caught_up:
            await self._catch_up_cards()
        if self._cards is not None and seen is not None:
            # Last: outcomes are queued before any card is read or edited, so cards never delay them.
            try:
                watches, report = seen
                await self._cards.refresh(watches, report.jobs)
            except Exception:
                log.exception("updating job cards failed; the next cycle will try again")
        elif self._cards is not None:
            # Nothing watched, but a final card whose edit failed may still be owed: retry it.
            await self._cards.flush()
        if self._audit_retention is not None:
            await self._audit_retention.maybe_purge()  # at most hourly; never raises

    async def _catch_up_cards(self) -> None:
        """Once per process, after the outcomes are queued: cards of jobs that ended (and were
        announced) while a process that stopped still owed their final edit. Ended watches have no
        lease, so whichever replica starts next covers one that died."""
        assert self._cards is not None
        try:
            await self._cards.catch_up()
            self._cards_caught_up = True
        except Exception:
            log.exception("looking for job cards owed a final edit failed; the next cycle will try again")

    async def _cycle(self) -> tuple[list[Watch], StatusReport] | None:
        # Heartbeat and leases are measured on the database's clock, not this host's. The heartbeat
        # is written on SQLite too (it records when this process last started a cycle), but there
        # only this process counts as alive.
        live = await asyncio.to_thread(self._store.heartbeat, self._owner, ttl=self._lease_ttl)
        if self._single_process:
            live = 1
        watches = await asyncio.to_thread(
            self._store.claim_watches,
            self._owner,
            ttl=self._lease_ttl,
            live_replicas=live,
            include_released=True,  # looked at once more as they go: see claim_watches
        )
        if not watches:
            return None
        report = await self.fetch_statuses(watches)
        await self.apply(watches, report)
        return watches, report

    async def keep_alive(self) -> None:
        """Between long reconciliation cycles: stay counted as alive and keep this replica's leases.
        Never raises (the scheduler calls it)."""
        try:
            await asyncio.to_thread(self._store.heartbeat, self._owner, ttl=self._lease_ttl)
            await asyncio.to_thread(self._store.renew_leases, self._owner, ttl=self._lease_ttl)
        except Exception:
            log.exception("renewing this replica's heartbeat and leases failed; will try again")

    async def fetch_statuses(self, watches: Iterable[Watch]) -> StatusReport:
        wanted: dict[str, int | None] = {}
        for watch in watches:
            wanted[watch.job_id] = watch.job_created_at
        jobs: dict[str, FineTuningJob] = {}
        # List pages cover a hundred jobs a call. Stop as soon as every job is found, the list
        # ends, or the page reaches jobs older than the oldest one we watch; the bound keeps a
        # busy organisation (many jobs not started from Slack) from costing endless pages.
        created = [c for c in wanted.values() if c is not None]
        oldest = min(created) if len(created) == len(wanted) else None
        max_pages = math.ceil(len(wanted) / PAGE_SIZE) + 1
        after: str | None = None
        try:
            for _ in range(max_pages):
                page = await self._openai.list_jobs(limit=PAGE_SIZE, after=after)
                for job in page.data:
                    if job.id in wanted:
                        jobs[job.id] = job
                if len(jobs) == len(wanted) or not page.has_more or not page.data:
                    break
                last = page.data[-1]
                if oldest is not None and last.created_at is not None and last.created_at < oldest:
                    break
                if not ids.is_job_id(last.id):
                    break  # not a usable cursor: the jobs not yet found are retrieved one by one
                after = last.id
        except OpenAIError as error:
            # Retrieving every job one by one instead would hammer an API that is already failing
            # (or rate-limiting us); the next cycle lists again.
            log.warning("listing jobs failed (%s); the next cycle will try again", error.status or error)
            return StatusReport(jobs={}, missing=set(), unknown=set(wanted))

        missing: set[str] = set()
        unknown: set[str] = set()
        semaphore = asyncio.Semaphore(self._concurrency)

        async def retrieve(job_id: str) -> None:
            bind_context(job_id=job_id)  # this task's own context: its log lines name the job
            if not ids.is_job_id(job_id):
                # Stored from a malformed response, say: no request can ever reach it, so it ends
                # like a job OpenAI no longer has instead of failing every cycle.
                log.error("watched job id %r is not a job id; ending its watch", job_id[:100])
                missing.add(job_id)
                return
            async with semaphore:
                try:
                    jobs[job_id] = await self._openai.retrieve_job(job_id)
                except NotFoundError:
                    missing.add(job_id)
                except OpenAIError as error:
                    log.warning("retrieving %s failed (%s); next cycle will try again", job_id, error.status)
                    unknown.add(job_id)
                except Exception:
                    # One job never holds up the others: whatever went wrong, the rest go on.
                    log.exception("retrieving %s failed; next cycle will try again", job_id[:100])
                    unknown.add(job_id)

        await asyncio.gather(*(retrieve(job_id) for job_id in wanted if job_id not in jobs))
        return StatusReport(jobs, missing, unknown)

    async def apply(self, watches: Iterable[Watch], report: StatusReport) -> int:
        """Record what changed; returns how many outbox rows were written."""
        written = 0
        # Most watches, most cycles, have no news: they cost a dict lookup, not a context, a thread
        # hop or a transaction each. Status changes (a burst of queued → running, say) are written
        # in one statement per new status.
        moved: dict[str, list[Watch]] = {}
        for watch in watches:
            job = report.jobs.get(watch.job_id)
            if job is not None and not job.is_terminal:
                if job.status != watch.last_status:
                    moved.setdefault(job.status, []).append(watch)
            elif job is not None or watch.job_id in report.missing:
                try:
                    written += await self._apply_one(watch, report)
                except Exception:
                    log.exception("recording %s failed; next cycle will try again", watch.job_id[:100])
        for status, group in moved.items():
            try:
                await asyncio.to_thread(self._store.set_status, [w.id for w in group], status)
            except Exception:
                log.exception(
                    "recording status %s for %d jobs (%s…) failed; next cycle will try again",
                    status[:40],
                    len(group),
                    group[0].job_id[:100],
                )
        return written

    async def _apply_one(self, watch: Watch, report: StatusReport) -> int:
        with log_context(job_id=watch.job_id, channel=watch.channel_id):
            return await self._apply_job(watch, report)

    async def _apply_job(self, watch: Watch, report: StatusReport) -> int:
        """A job that ended (or that OpenAI no longer knows): owe its channel the outcome."""
        job = report.jobs.get(watch.job_id)
        if job is not None:
            return await self.finish(watch, job.status, job.raw)
        return await self.finish(watch, "missing", {"id": watch.job_id, "status": "missing"})

    async def deliver(self) -> int:
        return await self._notifier.deliver_due()

    async def finish(self, watch: Watch, outcome: str, payload: dict[str, object]) -> int:
        created = await asyncio.to_thread(self._store.finish_watch, watch, outcome, dict(payload))
        if created:
            log.info("job %s %s; notification owed to %s", watch.job_id, outcome, watch.channel_id)
            crash_point("after_outbox_write")
        return 1 if created else 0
