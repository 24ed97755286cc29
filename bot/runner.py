"""Carry out a parsed command: call OpenAI, post what must be posted, and say what to reply.

The listener has already acknowledged Slack by the time this runs, so nothing here races the
3-second limit. Errors from OpenAI become friendly replies here, in one place.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

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
from bot.models import FineTuningJob
from bot.openai_client import FineTuningClient, NotFoundError, OpenAIError
from bot.store import Store

log = logging.getLogger(__name__)

# Slack errors that mean "this channel will not take the bot's message", where retrying is useless.
CHANNEL_REFUSED = frozenset({"not_in_channel", "channel_not_found", "is_archived", "restricted_action"})


@dataclass(frozen=True)
class Invocation:
    """Who ran the command, and where."""

    team_id: str
    channel_id: str
    user_id: str


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
    ) -> None:
        self._openai = openai
        self._slack = slack
        self._store = store
        self._admins = admins
        self._read_access = read_access
        self._clock = clock

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
        job = await self._openai.create_job(
            training_file=command.training_file,
            model=command.model,
            validation_file=command.validation_file,
            suffix=command.suffix,
            seed=command.seed,
            method=command.method_payload(),
            # Lets anyone (and later versions of the bot) tell which jobs were started from Slack.
            metadata={
                "started_by": "finetune-bot",
                "slack_team": invocation.team_id[:512],
                "slack_channel": invocation.channel_id[:512],
                "slack_user": invocation.user_id[:512],
            },
        )
        log.info("created %s for user %s in channel %s", job.id, invocation.user_id, invocation.channel_id)
        message = render.render_announcement(job, invocation.user_id, self._now())
        return await self._announce_and_watch(job, invocation, message, origin="create")

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
        try:
            response = await self._slack.chat_postMessage(
                channel=invocation.channel_id, unfurl_links=False, unfurl_media=False, **message.as_kwargs()
            )
        except SlackApiError as error:
            reason = str(error.response.get("error") or "unknown_error")
            if reason not in CHANNEL_REFUSED:
                log.error("could not announce %s in %s: %s", job.id, invocation.channel_id, reason)
            return render.render_announcement_not_posted(
                job, invocation.user_id, invocation.channel_id, reason, self._now()
            )
        except Exception:
            # The job exists whatever Slack does: the user must still hear about it.
            log.exception("could not announce %s in %s", job.id, invocation.channel_id)
            return render.render_announcement_not_posted(
                job, invocation.user_id, invocation.channel_id, "slack_unavailable", self._now()
            )
        await asyncio.to_thread(self._store.set_announcement, watch.id, str(response["ts"]))
        return None
