"""Keep every job's card (its announcement message) current, within Slack's `chat.update` budget.

Each poll cycle hands over the watches it claimed and the jobs it learned. For a running job this
reads the newest page of its events (one request, `limit` small); jobs not running cost nothing.
What each card would show is fingerprinted (`card.card_digest`); only a changed card is edited, at
most once per CARD_UPDATE_SECONDS, and all cards together at most CARD_EDITS_PER_MINUTE a minute
(Tier 3 is about 50). A 429 pauses card edits for its Retry-After — cards only: outcomes go
through the notifier's own client and queue. A card Slack will not let us edit (deleted message,
refused channel) is never tried again; the job's outcome still posts.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.async_handler import AsyncRetryHandler
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncServerErrorRetryHandler,
)
from slack_sdk.web.async_client import AsyncWebClient

from bot.card import (
    CHANGED_BY_ACTION,
    Candidate,
    ChangedBy,
    Progress,
    card_digest,
    cards_to_edit,
    progress_from_events,
    render_card,
)
from bot.crash import crash_point
from bot.metrics import MeteredWebClient, Metrics
from bot.models import FineTuningJob
from bot.openai_client import FineTuningClient, OpenAIError
from bot.runner import CHANNEL_REFUSED
from bot.store import Store, Watch

log = logging.getLogger(__name__)

# The newest page only: the latest metrics event and a few before it (for the step rate).
EVENTS_LIMIT = 10
# Slack's answers meaning "this card can never be edited again".
STOP_EDITING = frozenset({"message_not_found", "cant_update_message", "edit_window_closed"}) | frozenset(
    CHANNEL_REFUSED
)

# At start, final cards still owed by a stopped process are looked for among the watches that
# ended this recently (older ones are left as they are), at most this many.
CATCH_UP_SECONDS = 24 * 3600.0
CATCH_UP_LIMIT = 500
# Stored as a never-edited card's digest once an edit is owed: matches no real digest, so a process
# that dies before the edit leaves a card the next one edits (the announcement no longer shows the
# recorded status).
OWED_DIGEST = "owed"


def build_card_client(token: str, base_url: str, metrics: Metrics | None = None) -> AsyncWebClient:
    """A client of its own for card edits: no built-in rate-limit retry (a 429 pauses the card
    editor, it must not sleep inside a request), but connection and 5xx retries, harmless for an
    edit that sets the same content twice."""
    handlers: list[AsyncRetryHandler] = [
        AsyncConnectionErrorRetryHandler(max_retry_count=2),
        AsyncServerErrorRetryHandler(max_retry_count=1),
    ]
    if metrics is not None:
        return MeteredWebClient(
            token=token, base_url=base_url, timeout=10, retry_handlers=handlers, metrics=metrics
        )
    return AsyncWebClient(token=token, base_url=base_url, timeout=10, retry_handlers=handlers)


class EditBudget:
    """At most `per_minute` edits in any sliding minute."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._per_minute = per_minute
        self._clock = clock
        self._spent: collections.deque[float] = collections.deque()
        self.paused_until = 0.0

    def available(self) -> int:
        now = self._clock()
        if now < self.paused_until:
            return 0
        while self._spent and self._spent[0] <= now - 60.0:
            self._spent.popleft()
        return max(0, self._per_minute - len(self._spent))

    def spend(self) -> None:
        self._spent.append(self._clock())

    def pause(self, seconds: float) -> None:
        self.paused_until = max(self.paused_until, self._clock() + seconds)


@dataclass(frozen=True)
class _Wanted:
    watch: Watch
    job: FineTuningJob
    progress: Progress | None
    candidate: Candidate


class CardEditor:
    def __init__(
        self,
        store: Store,
        openai: FineTuningClient,
        slack: AsyncWebClient,
        *,
        per_card_seconds: float,
        per_minute: int,
        concurrency: int = 8,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        metrics: Metrics | None = None,
    ) -> None:
        self._metrics = metrics or Metrics()
        self._store = store
        self._openai = openai
        self._slack = slack
        self._per_card_seconds = per_card_seconds
        self._budget = EditBudget(per_minute, monotonic)
        self._semaphore = asyncio.Semaphore(concurrency)
        self._clock = clock
        self._wanted: dict[int, _Wanted] = {}
        self._lock = asyncio.Lock()
        self._again = False
        self._tasks: set[asyncio.Task[None]] = set()

    # -- what the cards should show -------------------------------------------------------------

    async def refresh(self, watches: Iterable[Watch], jobs: dict[str, FineTuningJob]) -> None:
        """After a poll cycle: `watches` as claimed (before this cycle's status was recorded),
        `jobs` what OpenAI said. Ended jobs are left to `show_final`."""
        live = [
            w
            for w in watches
            if w.announcement_ts
            and not w.card_stopped
            and w.ended_at is None
            and w.job_id in jobs
            and not jobs[w.job_id].is_terminal
        ]
        running = {w.job_id for w in live if jobs[w.job_id].status == "running"}
        progress = await self._read_progress(running)
        unchanged: dict[int, str] = {}
        for watch in live:
            job = jobs[watch.job_id]
            if job.status == "running" and job.id not in progress:
                continue  # its events could not be read: keep the card as it is this cycle
            current = progress.get(job.id)
            digest = card_digest(job, current)
            status_changed = job.status != watch.last_status
            if watch.card_digest is None and not status_changed and current is None:
                # Never edited, and the announcement already shows this status: nothing to do.
                unchanged[watch.id] = digest
                continue
            self._want(watch, job, current, digest, status_changed=status_changed, final=False)
        if unchanged:
            await asyncio.to_thread(self._store.card_shown, unchanged)
        # The recorded status moved on but the announcement still shows the old one: if this
        # process stops before the edit, the next must not take the card for up to date.
        owed = [w.id for w in live if w.card_digest is None and w.id in self._wanted]
        if owed:
            await asyncio.to_thread(self._store.card_owed, owed, OWED_DIGEST)
        await self.flush()

    def show_final(self, watch: Watch, job: FineTuningJob) -> None:
        """The job ended and its outcome is out: edit its card to the final state, first in line
        but within the budget. Does not wait for Slack."""
        if not watch.announcement_ts or watch.card_stopped:
            return
        self._want(watch, job, None, card_digest(job, None), status_changed=True, final=True)
        task = asyncio.create_task(self.flush())
        self._tasks.add(task)  # keep a reference until it is done
        task.add_done_callback(self._tasks.discard)

    async def catch_up(self, *, within: float = CATCH_UP_SECONDS, limit: int = CATCH_UP_LIMIT) -> int:
        """At start: final card edits a stopped process still owed (the outcome is out, the card
        does not show it) are queued like `show_final`'s and flushed. One query, no OpenAI request
        (the outcome's payload is the final job). Returns how many cards were queued; a database
        error is raised (the caller tries again next cycle)."""
        rows = await asyncio.to_thread(
            self._store.final_cards_to_check, ended_since=self._clock() - within, limit=limit
        )
        owed = 0
        seen: set[int] = set()
        for watch, payload in rows:
            if watch.id in seen:
                continue  # a second outcome of one watch (rare): the newest is the final state
            seen.add(watch.id)
            job = FineTuningJob.from_api(payload)
            digest = card_digest(job, None)
            if digest == watch.card_digest:
                continue
            self._want(watch, job, None, digest, status_changed=True, final=True)
            owed += 1
        if owed:
            log.info("%d job card(s) did not show their final state yet; editing them", owed)
        await self.flush()
        return owed

    def _want(
        self,
        watch: Watch,
        job: FineTuningJob,
        progress: Progress | None,
        digest: str,
        *,
        status_changed: bool,
        final: bool,
    ) -> None:
        earlier = self._wanted.get(watch.id)
        if earlier is not None:
            if earlier.candidate.final and (not final or earlier.candidate.digest == digest):
                # A late running snapshot never replaces the final card, and the same final card
                # wanted twice (at start and by the notifier) keeps its place, so it is edited once.
                return
            # A status change still waiting for the budget keeps its place in the queue.
            status_changed = status_changed or (
                earlier.candidate.status_changed and earlier.job.status == job.status
            )
        shown = watch.card_digest
        edited = watch.card_edited_at
        if earlier is not None and earlier.candidate.last_edited_at is not None:
            # Attempted since this watch was read from the database (a failed edit counts too).
            edited = max(edited or 0.0, earlier.candidate.last_edited_at)
            shown = earlier.candidate.shown_digest
        if digest == shown:
            self._wanted.pop(watch.id, None)
            return
        candidate = Candidate(watch.id, digest, shown, edited, status_changed, final)
        self._wanted[watch.id] = _Wanted(watch, job, progress, candidate)

    async def _read_progress(self, job_ids: set[str]) -> dict[str, Progress | None]:
        """One `GET /fine_tuning/jobs/{id}/events?limit=…` per running job (newest page only)."""
        found: dict[str, Progress | None] = {}

        async def read(job_id: str) -> None:
            async with self._semaphore:
                try:
                    page = await self._openai.list_events(job_id, limit=EVENTS_LIMIT)
                except OpenAIError as error:
                    log.warning("reading events of %s failed (%s); its card waits", job_id, error.status)
                    return
                except Exception:
                    log.exception("reading events of %s failed; its card waits", job_id[:100])
                    return
            found[job_id] = progress_from_events(page.data)

        await asyncio.gather(*(read(job_id) for job_id in sorted(job_ids)))
        return found

    async def show_now(self, watch: Watch, job: FineTuningJob) -> bool:
        """A Refresh click: read the progress and edit this card now (counted in the budget, not
        held to the per-card interval). True when what the card shows changed. Slack's refusal
        is raised to the caller, who tells the clicker."""
        progress = (await self._read_progress({job.id})).get(job.id) if job.status == "running" else None
        digest = card_digest(job, progress)
        if watch.card_digest is None:
            # Never edited: the announcement shows the status it was posted with, and no progress.
            changed = job.status != watch.last_status or progress is not None
        else:
            changed = digest != watch.card_digest
        now = self._clock()
        changed_by = await self._changed_by(job)
        reply = render_card(
            job, watch.user_id, int(now), progress=progress, origin=watch.origin, changed_by=changed_by
        )
        assert watch.announcement_ts is not None
        self._budget.spend()
        await self._slack.chat_update(channel=watch.channel_id, ts=watch.announcement_ts, **reply.as_kwargs())
        await asyncio.to_thread(self._store.card_edited, watch.id, digest, now)
        wanted = self._wanted.get(watch.id)
        if wanted is not None and wanted.candidate.digest == digest and not wanted.candidate.final:
            del self._wanted[watch.id]  # this click already showed it
        return changed

    async def _changed_by(self, job: FineTuningJob) -> ChangedBy | None:
        """Who cancelled or paused the job, from the audit trail: asked only of a job in that
        state (one indexed query). The card goes out without it if the database fails."""
        action = CHANGED_BY_ACTION.get(job.status)
        if action is None:
            return None
        try:
            row = await asyncio.to_thread(self._store.last_audited, job.id, action)
        except Exception as error:
            log.warning("could not read who changed %s: %s", job.id[:100], type(error).__name__)
            return None
        return None if row is None else (row.user_id, int(row.at), row.action)

    # -- editing --------------------------------------------------------------------------------

    async def flush(self) -> None:
        """Edit what is due now, within the budget. Never raises."""
        if self._lock.locked():
            self._again = True  # the running flush takes another look before it ends
            return
        async with self._lock:
            while True:
                self._again = False
                try:
                    await self._flush_once()
                except Exception:
                    log.exception("editing cards failed; the next cycle will try again")
                if not self._again:
                    break

    async def wait_idle(self, timeout: float) -> None:
        """For shutdown and tests: let started final edits finish (bounded)."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout)

    async def _flush_once(self) -> None:
        candidates = [w.candidate for w in self._wanted.values()]
        # Every card due now, in order; the budget takes the first ones and holds back the rest.
        due = cards_to_edit(
            candidates, now=self._clock(), per_card_seconds=self._per_card_seconds, budget=len(candidates)
        )
        picks = due[: self._budget.available()]
        if len(due) > len(picks):
            self._metrics.card_edits_skipped.inc(len(due) - len(picks))
        for pick in picks:
            wanted = self._wanted.get(pick.key)
            if wanted is None or wanted.candidate is not pick:
                continue  # replaced meanwhile: the next flush sees the newer one
            if not await self._edit(wanted):
                break  # rate-limited: every card waits

    async def _edit(self, wanted: _Wanted) -> bool:
        """Edit one card; False when Slack says to slow down."""
        watch, now = wanted.watch, self._clock()
        reply = render_card(
            wanted.job,
            watch.user_id,
            int(now),
            progress=wanted.progress,
            origin=watch.origin,
            changed_by=await self._changed_by(wanted.job),
        )
        assert watch.announcement_ts is not None
        if wanted.candidate.final:
            crash_point("before_final_card")
        self._budget.spend()
        try:
            await self._slack.chat_update(
                channel=watch.channel_id, ts=watch.announcement_ts, **reply.as_kwargs()
            )
        except SlackApiError as error:
            return await self._edit_failed(wanted, error, now)
        except Exception:
            self._metrics.card_edit("error")
            log.warning("editing the card of %s failed; will retry", watch.job_id[:100], exc_info=True)
            self._tried(wanted, now)
            return True
        self._metrics.card_edit("ok")
        await asyncio.to_thread(self._store.card_edited, watch.id, wanted.candidate.digest, now)
        if self._wanted.get(watch.id) is wanted:
            del self._wanted[watch.id]
        else:
            # A newer state arrived during the edit: it now compares against what was just shown.
            newer = self._wanted[watch.id]
            candidate = replace(newer.candidate, shown_digest=wanted.candidate.digest, last_edited_at=now)
            self._wanted[watch.id] = replace(newer, candidate=candidate)
        return True

    async def _edit_failed(self, wanted: _Wanted, error: SlackApiError, now: float) -> bool:
        watch = wanted.watch
        reason = str(error.response.get("error") or "unknown_error")
        if error.response.status_code == 429:
            headers = {k.lower(): v for k, v in (error.response.headers or {}).items()}
            retry_after = _seconds(headers.get("retry-after"))
            log.warning("chat.update is rate-limited; card edits wait %.0f s", retry_after)
            self._metrics.card_edit("rate_limited")
            self._budget.pause(retry_after)
            return False
        if reason in STOP_EDITING:
            self._metrics.card_edit("stopped")
            log.info(
                "the card of %s in %s cannot be edited (%s); not trying again",
                watch.job_id,
                watch.channel_id,
                reason,
            )
            await asyncio.to_thread(self._store.stop_card, watch.id, reason)
            if self._wanted.get(watch.id) is wanted:
                del self._wanted[watch.id]
            return True
        self._metrics.card_edit("error")
        log.warning("editing the card of %s failed (%s); will retry", watch.job_id[:100], reason)
        self._tried(wanted, now)
        return True

    def _tried(self, wanted: _Wanted, now: float) -> None:
        """A failed edit still waits its per-card interval before the next try."""
        current = self._wanted.get(wanted.watch.id)
        if current is not None and not current.candidate.final:
            candidate = replace(current.candidate, last_edited_at=now)
            self._wanted[wanted.watch.id] = replace(current, candidate=candidate)


def _seconds(value: object) -> float:
    try:
        return max(1.0, min(300.0, float(str(value))))
    except ValueError:
        return 1.0
