"""Carry out a parsed command: call OpenAI, post what must be posted, and say what to reply.

The listener has already acknowledged Slack by the time this runs, so nothing here races the
3-second limit. Errors from OpenAI become friendly replies here, in one place.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot import render
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
from bot.openai_client import FineTuningClient, OpenAIError
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
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._openai = openai
        self._slack = slack
        self._store = store
        self._admins = admins
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
                page = await self._openai.list_jobs(limit=limit)
                return render.render_job_list(page.data, page.has_more, self._now())
            case GetCommand(job_id=job_id):
                return render.render_job(await self._openai.retrieve_job(job_id), self._now())
            case EventsCommand(job_id=job_id, limit=limit):
                page = await self._openai.list_events(job_id, limit=limit)
                return render.render_events(job_id, page.data, page.has_more, self._now())
            case CancelCommand(job_id=job_id):
                starter = await asyncio.to_thread(self._store.starter_of, job_id)
                if not self._may_cancel(invocation.user_id, starter):
                    log.info("refused cancel of %s by %s (starter %s)", job_id, invocation.user_id, starter)
                    return render.render_not_allowed(job_id, "cancel", starter)
                return render.render_cancel_requested(await self._openai.cancel_job(job_id), self._now())
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
                watch = await asyncio.to_thread(self._store.get_watch, job_id, invocation.channel_id)
                ended = watch is not None and await asyncio.to_thread(
                    self._store.end_watch, watch.id, f"unwatched by {invocation.user_id}"
                )
                return render.render_unwatched(job_id, ended)
        return None  # pragma: no cover - every command is matched above

    def _may_cancel(self, user_id: str, starter: str | None) -> bool:
        """The person who started a job may stop it, and so may admins; a job not started from
        Slack (no record of who started it) only admins may touch."""
        return user_id in self._admins or (starter is not None and starter == user_id)

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
        job = await self._openai.retrieve_job(job_id)
        if job.is_terminal:
            # Nothing left to wait for: show how it ended instead of promising a message.
            return render.render_job(job, self._now())
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
