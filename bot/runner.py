"""Carry out a parsed command: call OpenAI, post what must be posted, and say what to reply.

The listener has already acknowledged Slack by the time this runs, so nothing here races the
3-second limit. Errors from OpenAI become friendly replies here, in one place.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import hashlib
import logging
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient
from sqlalchemy.exc import SQLAlchemyError

from bot import render
from bot.access import (
    DEFAULT_READ_ACCESS,
    Origin,
    ReadAccess,
    Reader,
    decided_by_store,
    may_read,
    visible_metadata,
)
from bot.commands import (
    CancelCommand,
    Command,
    CreateCommand,
    EventsCommand,
    GetCommand,
    HelpCommand,
    ListCommand,
    UnwatchCommand,
    WatchCommand,
)
from bot.crash import crash_point
from bot.models import FineTuningJob
from bot.openai_client import (
    IDEMPOTENCY_KEY,
    FineTuningClient,
    NotFoundError,
    OpenAIError,
    ServerError,
    UnavailableError,
)
from bot.store import PendingCreate, Store, Watch

log = logging.getLogger(__name__)

# Slack errors that mean "this channel will not take the bot's message", where retrying is useless.
CHANNEL_REFUSED = frozenset({"not_in_channel", "channel_not_found", "is_archived", "restricted_action"})
# Slack message metadata on a create's announcement, carrying its key: after a crash between the
# post and writing it down, the reconciliation finds the message instead of posting it twice.
ANNOUNCEMENT_EVENT = "finetune_announcement"


@dataclass(frozen=True)
class Invocation:
    """Who ran the command, and where."""

    team_id: str
    channel_id: str
    user_id: str
    # Slack's id for this one command: the same on every redelivery or replay of it.
    trigger_id: str = ""
    response_url: str | None = None


# When a create whose answer was lost (timeout, 5xx, dropped connection: "unconfirmed") is looked
# up by its key, in seconds after the command. Not at once: OpenAI's list may not show a job made a
# moment ago, and the few lookups (one GET each) stay off the busy first minute; then with backoff.
# The last is when it is given up: by then (as for ABANDON_AFTER in bot/pending.py) no delivery of
# the command can still be creating a job under its key. The reply promises news within that time.
UNCONFIRMED_LOOKUPS = (90.0, 180.0, 360.0, 600.0)
# Test hook, like FINETUNE_CRASH_AT: `FINETUNE_TEST_UNCONFIRMED_LOOKUPS=2,4,8` shortens that
# schedule so the tests need not wait ten minutes. Never set in production.
UNCONFIRMED_LOOKUPS_ENV = "FINETUNE_TEST_UNCONFIRMED_LOOKUPS"


@functools.cache
def unconfirmed_lookups() -> tuple[float, ...]:
    raw = os.environ.get(UNCONFIRMED_LOOKUPS_ENV, "")
    if not raw:
        return UNCONFIRMED_LOOKUPS
    try:
        points = tuple(float(p) for p in raw.split(","))
    except ValueError:
        points = ()
    if not points or points[0] <= 0 or list(points) != sorted(set(points)):
        log.warning("ignoring %s=%r (want increasing seconds, e.g. 2,4,8)", UNCONFIRMED_LOOKUPS_ENV, raw)
        return UNCONFIRMED_LOOKUPS
    log.warning("%s=%s: test schedule for unconfirmed creates", UNCONFIRMED_LOOKUPS_ENV, raw)
    return points


def create_key(trigger_id: str) -> str:
    """One key per command, used as the pending row's key, the job's `slack_trigger` metadata and
    the Idempotency-Key: Slack's trigger_id itself (digits, dots, hex), a digest of anything
    stranger, and a fresh key if Slack sent none (then a replay cannot be recognised)."""
    if IDEMPOTENCY_KEY.fullmatch(trigger_id):
        return trigger_id
    if trigger_id:
        return "sha256-" + hashlib.sha256(trigger_id.encode()).hexdigest()
    return f"untriggered-{uuid.uuid4().hex}"


def create_request(command: CreateCommand, invocation: Invocation, key: str) -> dict[str, Any]:
    """The body of the create, as `FineTuningClient.create_job` keywords (also kept on the pending
    row, so the same request could be told apart later)."""
    return {
        "training_file": command.training_file,
        "model": command.model,
        "validation_file": command.validation_file,
        "suffix": command.suffix,
        "seed": command.seed,
        "method": command.method_payload(),
        # Lets anyone (and later versions of the bot) tell which jobs were started from Slack;
        # `slack_trigger` finds this very job again (`GET /fine_tuning/jobs?metadata[…]=…`).
        "metadata": {
            "started_by": "finetune-bot",
            "slack_team": invocation.team_id[:512],
            "slack_channel": invocation.channel_id[:512],
            "slack_user": invocation.user_id[:512],
            "slack_trigger": key,
        },
    }


def invocation_of(pending: PendingCreate) -> Invocation:
    return Invocation(
        team_id=pending.team_id,
        channel_id=pending.channel_id,
        user_id=pending.user_id,
        trigger_id=pending.trigger_id,
        response_url=pending.response_url,
    )


class CommandRunner:
    def __init__(
        self,
        openai: FineTuningClient,
        slack: AsyncWebClient,
        store: Store,
        *,
        admins: frozenset[str] = frozenset(),
        read_access: ReadAccess = DEFAULT_READ_ACCESS,
        clock: Callable[[], float] = time.time,
        owner: str = "runner",
    ) -> None:
        self._openai = openai
        self._slack = slack
        self._store = store
        self._admins = admins
        self._read_access = read_access
        self._clock = clock
        self._owner = owner  # this process, on the pending creates it carries out
        self._in_flight: set[str] = set()  # keys of the creates this process is carrying out now

    def is_carrying_out(self, key: str) -> bool:
        """Reconciliation leaves alone a create this process is still working on."""
        return key in self._in_flight

    def _now(self) -> int:
        return int(self._clock())

    async def run(self, command: Command, invocation: Invocation) -> render.Reply | None:
        """The ephemeral reply for the user, or None when the visible message already says it all."""
        job_id = getattr(command, "job_id", None)
        try:
            return await self._run(command, invocation)
        except OpenAIError as error:
            log.warning(
                "OpenAI refused %s (status=%s code=%s request_id=%s)",
                type(command).__name__,
                error.status,
                error.code,
                error.request_id,
            )
            return render.render_openai_error(error, job_id=job_id)

    async def _run(self, command: Command, invocation: Invocation) -> render.Reply | None:
        match command:
            case HelpCommand():
                return render.render_help()
            case ListCommand(limit=limit):
                return await self._list(limit, invocation)
            case GetCommand(job_id=job_id):
                return await self._get(job_id, invocation)
            case EventsCommand(job_id=job_id, limit=limit):
                if not await self._may_read(job_id, invocation):
                    return render.render_job_not_found(job_id)
                page = await self._openai.list_events(job_id, limit=limit)
                return render.render_events(job_id, page.data, page.has_more, self._now())
            case CancelCommand(job_id=job_id):
                return await self._cancel(job_id, invocation)
            case CreateCommand():
                return await self._create(command, invocation)
            case WatchCommand(job_id=None):
                rows = await asyncio.to_thread(self._store.channel_watches, invocation.channel_id)
                return render.render_watch_list(
                    [(w.job_id, w.last_status, int(w.created_at)) for w in rows], self._now()
                )
            case WatchCommand(job_id=str(job_id)):
                return await self._watch(job_id, invocation)
            case UnwatchCommand(job_id=job_id):
                return await self._unwatch(job_id, invocation)
        return None  # pragma: no cover - every command is matched above

    def _may_cancel(self, user_id: str, starter: str | None) -> bool:
        """The person who started a job may stop it, and so may admins; a job not started from
        Slack (no record of who started it) only admins may touch."""
        return user_id in self._admins or (starter is not None and starter == user_id)

    # -- reading (FINETUNE_READ_ACCESS, see bot/access.py) ------------------------------------------

    def _reader(self, invocation: Invocation) -> Reader:
        return Reader(invocation.user_id, invocation.channel_id, invocation.user_id in self._admins)

    async def _origins(self, job_ids: list[str]) -> dict[str, Origin]:
        watches = await asyncio.to_thread(self._store.watches_for_jobs, job_ids)
        return {job_id: Origin.from_watches(w for w in watches if w.job_id == job_id) for job_id in job_ids}

    async def _may_read(self, job_id: str, invocation: Invocation, origin: Origin | None = None) -> bool:
        """Whether the policy lets this reader see the job. A job OpenAI does not have counts as
        unreadable: both get the same "not found" answer, so a refusal reveals nothing."""
        if origin is None:
            origin = (await self._origins([job_id]))[job_id]
        reader = self._reader(invocation)
        decided = decided_by_store(self._read_access, reader, origin)
        if decided is not None:
            return decided
        try:
            job = await self._openai.retrieve_job(job_id)
        except NotFoundError:
            return False
        return may_read(self._read_access, reader, origin, job.metadata)

    def _render_job(self, job: FineTuningJob, invocation: Invocation) -> render.Reply:
        shown = dataclasses.replace(job, metadata=visible_metadata(job.metadata, self._reader(invocation)))
        return render.render_job(shown, self._now())

    async def _get(self, job_id: str, invocation: Invocation) -> render.Reply:
        origin = (await self._origins([job_id]))[job_id]
        reader = self._reader(invocation)
        if decided_by_store(self._read_access, reader, origin) is False:
            return render.render_job_not_found(job_id)  # before OpenAI: nothing to learn there
        job = await self._openai.retrieve_job(job_id)
        if not may_read(self._read_access, reader, origin, job.metadata):
            log.info("%s may not read %s (%s)", invocation.user_id, job_id, self._read_access.value)
            return render.render_job_not_found(job_id)
        return self._render_job(job, invocation)

    async def _list(self, limit: int, invocation: Invocation) -> render.Reply:
        page = await self._openai.list_jobs(limit=limit)
        jobs = page.data
        reader = self._reader(invocation)
        if self._read_access is not ReadAccess.ORG and not reader.is_admin:
            origins = await self._origins([job.id for job in jobs])
            jobs = [j for j in jobs if may_read(self._read_access, reader, origins[j.id], j.metadata)]
        hidden = len(page.data) - len(jobs)
        return render.render_job_list(
            jobs, page.has_more, self._now(), hidden=hidden, policy=self._read_access.value
        )

    async def _cancel(self, job_id: str, invocation: Invocation) -> render.Reply:
        origin = (await self._origins([job_id]))[job_id]
        if not await self._may_read(job_id, invocation, origin):
            return render.render_job_not_found(job_id)
        if not self._may_cancel(invocation.user_id, origin.starter):
            log.info("refused cancel of %s by %s (starter %s)", job_id, invocation.user_id, origin.starter)
            # Name the starter only to the channel where they started it.
            here = origin.starter_channel == invocation.channel_id
            return render.render_not_allowed(job_id, "cancel", origin.starter, starter_here=here)
        return render.render_cancel_requested(await self._openai.cancel_job(job_id), self._now())

    async def _unwatch(self, job_id: str, invocation: Invocation) -> render.Reply:
        watch = await asyncio.to_thread(self._store.get_watch, job_id, invocation.channel_id)
        if watch is None or watch.ended_at is not None:
            return render.render_unwatched(job_id, False)
        # The announcement of a job started here is its starter's: anyone else silencing it would
        # keep the outcome from them. A channel's own `watch` anyone in the channel may end.
        if watch.origin == "create" and not self._may_cancel(invocation.user_id, watch.user_id):
            log.info("refused unwatch of %s by %s (starter %s)", job_id, invocation.user_id, watch.user_id)
            return render.render_not_allowed(job_id, "unwatch", watch.user_id)
        ended = await asyncio.to_thread(self._store.end_watch, watch.id, f"unwatched by {invocation.user_id}")
        return render.render_unwatched(job_id, ended)

    async def _create(self, command: CreateCommand, invocation: Invocation) -> render.Reply | None:
        """Write the create down, then ask OpenAI, then watch and announce the job.

        Nothing is started unless it is written down first; once OpenAI has the job, the user
        hears its id whatever the database does; the same command delivered again (same
        trigger_id, sent as the Idempotency-Key) gets the same job back and is not announced twice.
        """
        key = create_key(invocation.trigger_id)
        self._in_flight.add(key)
        try:
            return await self._create_once(key, command, invocation)
        finally:
            self._in_flight.discard(key)

    async def _create_once(
        self, key: str, command: CreateCommand, invocation: Invocation
    ) -> render.Reply | None:
        request = create_request(command, invocation, key)
        try:
            pending, fresh = await asyncio.to_thread(
                self._store.begin_create,
                trigger_id=key,
                team_id=invocation.team_id,
                channel_id=invocation.channel_id,
                user_id=invocation.user_id,
                response_url=invocation.response_url,
                params=request,
                owner=self._owner,
            )
        except SQLAlchemyError:
            log.exception("could not record a create before calling OpenAI; nothing was started")
            return render.render_create_not_started_database()
        if not fresh and pending.job_id is not None:
            log.info("create %s delivered again: it already started %s", key, pending.job_id)
            return render.render_create_duplicate(pending.job_id)
        try:
            job = await self._openai.create_job(**request, idempotency_key=key)
        except OpenAIError as error:
            return await self._create_failed(pending, error)
        crash_point("after_openai_create")
        log.info("created %s for user %s in channel %s", job.id, invocation.user_id, invocation.channel_id)
        return await self.record_and_announce(pending, job)

    async def _create_failed(self, pending: PendingCreate, error: OpenAIError) -> render.Reply:
        # A timeout, 5xx or garbled answer leaves it unknown whether OpenAI made the job: the row
        # stays `unconfirmed` and the reconciler looks the job up by its key later (and tells the
        # user either way). Any other refusal (4xx: bad file, quota…) created nothing: `failed`.
        unconfirmed = isinstance(error, ServerError | UnavailableError)
        log.warning(
            "OpenAI %s CreateCommand %s (status=%s code=%s request_id=%s)",
            "did not confirm" if unconfirmed else "refused",
            pending.trigger_id,
            error.status,
            error.code,
            error.request_id,
        )
        state = "unconfirmed" if unconfirmed else "failed"
        note = f"OpenAI {error.status or type(error).__name__}"
        try:
            await asyncio.to_thread(self._store.close_create, pending.trigger_id, state, note)
        except SQLAlchemyError:
            # Still `pending`: reconciliation looks it up as a half-done create.
            log.warning("could not note the outcome of create %s; reconciliation will", pending.trigger_id)
        if unconfirmed:
            return render.render_create_unconfirmed(error, unconfirmed_lookups()[-1])
        return render.render_openai_error(error)

    async def record_and_announce(self, pending: PendingCreate, job: FineTuningJob) -> render.Reply | None:
        """Note the job and watch it (one transaction), then announce it. If the database fails,
        the user still gets the job id and is told not to retry; the pending row stays open, so
        reconciliation writes it down and announces it once the database is back."""
        try:
            watch = await asyncio.to_thread(
                self._store.record_created,
                pending,
                job_id=job.id,
                job_created_at=job.created_at,
                status=job.status,
            )
        except SQLAlchemyError:
            log.exception("%s was created at OpenAI but could not be recorded; telling the user", job.id)
            return render.render_create_untracked(job, pending.user_id, self._now())
        if watch is None:
            log.info("create %s delivered again: %s was recorded first", pending.trigger_id, job.id)
            return render.render_create_duplicate(job.id)
        return await self.announce_created(pending, job, watch)

    async def announce_created(
        self, pending: PendingCreate, job: FineTuningJob, watch: Watch
    ) -> render.Reply | None:
        invocation = invocation_of(pending)
        message = render.render_announcement(job, invocation.user_id, self._now())
        metadata = {"event_type": ANNOUNCEMENT_EVENT, "event_payload": {"key": pending.trigger_id}}
        ts, reply = await self._post_announcement(job, invocation, message, metadata=metadata)
        try:
            await asyncio.to_thread(self._store.mark_announced, pending.trigger_id, watch.id, ts)
        except SQLAlchemyError:
            # The job is watched and the channel has its announcement; only the thread is lost
            # (the outcome will be posted in the channel itself).
            log.exception("could not note the announcement of %s", job.id)
        return reply

    async def _watch(self, job_id: str, invocation: Invocation) -> render.Reply | None:
        existing = await asyncio.to_thread(self._store.get_watch, job_id, invocation.channel_id)
        if existing is not None and existing.ended_at is None:
            return render.render_already_watching(job_id)
        # Watching posts the job in this channel: only a job this reader may read.
        if not await self._may_read(job_id, invocation):
            return render.render_job_not_found(job_id)
        job = await self._openai.retrieve_job(job_id)
        if job.is_terminal:
            # Nothing left to wait for: show how it ended instead of promising a message.
            return self._render_job(job, invocation)
        message = render.render_watch_announcement(job, invocation.user_id, self._now())
        return await self._announce_and_watch(job, invocation, message, origin="watch")

    async def _announce_and_watch(
        self, job: FineTuningJob, invocation: Invocation, message: render.Reply, *, origin: str
    ) -> render.Reply | None:
        """Record the watch, post the parent message in the channel, then note where it is.

        The watch comes first so that nothing can lose it: if the post fails or the process dies
        before the `ts` is noted, the outcome is still announced, in the channel instead of a thread.
        """
        watch, _ = await asyncio.to_thread(
            self._store.add_watch,
            job_id=job.id,
            team_id=invocation.team_id,
            channel_id=invocation.channel_id,
            user_id=invocation.user_id,
            announcement_ts=None,
            job_created_at=job.created_at,
            status=job.status,
            origin=origin,
        )
        ts, reply = await self._post_announcement(job, invocation, message)
        if ts is not None:
            await asyncio.to_thread(self._store.set_announcement, watch.id, ts)
        return reply

    async def _post_announcement(
        self,
        job: FineTuningJob,
        invocation: Invocation,
        message: render.Reply,
        *,
        metadata: dict[str, Any] | None = None,
    ) -> tuple[str | None, render.Reply | None]:
        """Post the parent message: its ts, or the private reply to send instead."""
        extra: dict[str, Any] = {"metadata": metadata} if metadata else {}
        try:
            response = await self._slack.chat_postMessage(
                channel=invocation.channel_id,
                unfurl_links=False,
                unfurl_media=False,
                **extra,
                **message.as_kwargs(),
            )
        except SlackApiError as error:
            reason = str(error.response.get("error") or "unknown_error")
            if reason not in CHANNEL_REFUSED:
                log.error("could not announce %s in %s: %s", job.id, invocation.channel_id, reason)
            return None, render.render_announcement_not_posted(
                job, invocation.user_id, invocation.channel_id, reason, self._now()
            )
        except Exception:
            # The job exists whatever Slack does: the user must still hear about it.
            log.exception("could not announce %s in %s", job.id, invocation.channel_id)
            return None, render.render_announcement_not_posted(
                job, invocation.user_id, invocation.channel_id, "slack_unavailable", self._now()
            )
        return str(response["ts"]), None
