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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient
from sqlalchemy.exc import SQLAlchemyError

from bot import modal, render
from bot.access import (
    DEFAULT_READ_ACCESS,
    Origin,
    ReadAccess,
    Reader,
    decided_by_store,
    may_read,
    visible_metadata,
)
from bot.audit import Action, AuditEntry, Auditor, Result
from bot.commands import (
    CancelCommand,
    CheckpointsCommand,
    Command,
    CreateCommand,
    EventsCommand,
    FilesCommand,
    GetCommand,
    HelpCommand,
    HistoryCommand,
    ListCommand,
    OpenCreateFormCommand,
    PauseCommand,
    ReportCommand,
    ResumeCommand,
    UnwatchCommand,
    ValidateCommand,
    WatchCommand,
)
from bot.config import DEFAULT_MODEL
from bot.crash import crash_point
from bot.models import TERMINAL_STATUSES, FineTuningJob, OpenAIFile, Page
from bot.openai_client import (
    IDEMPOTENCY_KEY,
    FineTuningClient,
    NotFoundError,
    OpenAIError,
    ServerError,
    UnavailableError,
)
from bot.store import PendingCreate, Store, Watch

if TYPE_CHECKING:
    from bot.reporter import Reporter
    from bot.training_flow import TrainingFlow

log = logging.getLogger(__name__)

# Slack errors that mean "this channel will not take the bot's message", where retrying is useless.
CHANNEL_REFUSED = frozenset({"not_in_channel", "channel_not_found", "is_archived", "restricted_action"})
# Slack message metadata on a create's announcement, carrying its key: after a crash between the
# post and writing it down, the reconciliation finds the message instead of posting it twice.
ANNOUNCEMENT_EVENT = "finetune_announcement"
# `list status=…`: OpenAI's list has no status filter, so whole pages are read and filtered here,
# at most this many per list, so that a rare status cannot cost an unbounded number of requests.
LIST_PAGE_SIZE = 100
LIST_FILTER_REQUESTS = 3
# `history`: the newest this many audit rows of a job.
HISTORY_ROWS = 20
# The status each action needs (anything else: answer with the job's current state instead).
ACTION_NEEDS: dict[str, Callable[[str], bool]] = {
    "cancel": lambda status: status not in TERMINAL_STATUSES,
    "pause": lambda status: status == "running",
    "resume": lambda status: status == "paused",
}


@dataclass(frozen=True)
class ActionResult:
    """What a cancel/pause/resume came to: the private reply, and the job as it now stands when
    the action was carried out (so a button's card can be brought up to date)."""

    reply: render.Reply
    job: FineTuningJob | None = None


@dataclass(frozen=True)
class ListResult:
    jobs: list[FineTuningJob]
    hidden: int
    next_after: str | None  # where the next page starts, None when there is none
    examined: int


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


def create_audit_detail(params: dict[str, Any], key: str) -> dict[str, Any]:
    """What a create's audit rows keep of its request (ids and names only, nothing long), and its
    key: the runner's row and the reconciler's later conclusion carry the same one."""
    return {"key": key, **{name: params.get(name) for name in ("model", "training_file", "suffix")}}


def answer_lost(error: OpenAIError) -> bool:
    """A timeout, 5xx or garbled answer: OpenAI may have made the job anyway. Any other refusal
    (4xx: bad file, quota…) made nothing."""
    return isinstance(error, ServerError | UnavailableError)


def _openai_reason(error: OpenAIError) -> str:
    return f"OpenAI {error.status or type(error).__name__}" + (f" {error.code}" if error.code else "")


def invocation_of(pending: PendingCreate) -> Invocation:
    return Invocation(
        team_id=pending.team_id,
        channel_id=pending.channel_id,
        user_id=pending.user_id,
        trigger_id=pending.trigger_id,
        response_url=pending.response_url,
    )


# Redraw a job's card now (a Refresh click); True when what it shows changed.
ShowCard = Callable[[Watch, FineTuningJob], Awaitable[bool]]


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
        show_card: ShowCard | None = None,
        reporter: Reporter | None = None,
        default_model: str = DEFAULT_MODEL,
        auditor: Auditor | None = None,
    ) -> None:
        self._openai = openai
        self._auditor = auditor or Auditor(store, clock=clock)
        self._default_model = default_model  # preselected in the create form
        self._reporter = reporter
        self._training: TrainingFlow | None = None
        # How a Refresh click redraws a card: the live card's editor (progress read fresh) when
        # there is one; otherwise the announcement is re-rendered as it is.
        self._show_card = show_card or self._redraw_announcement
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
            case ListCommand():
                return await self._list(command, invocation)
            case GetCommand(job_id=job_id):
                return await self._get(job_id, invocation)
            case EventsCommand(job_id=job_id, limit=limit):
                if not await self._may_read(job_id, invocation):
                    return render.render_job_not_found(job_id)
                page = await self._openai.list_events(job_id, limit=limit)
                return render.render_events(job_id, page.data, page.has_more, self._now())
            case CancelCommand(job_id=job_id):
                return (await self._act("cancel", job_id, invocation)).reply
            case PauseCommand(job_id=job_id):
                return (await self._act("pause", job_id, invocation)).reply
            case ResumeCommand(job_id=job_id):
                return (await self._act("resume", job_id, invocation)).reply
            case CheckpointsCommand(job_id=job_id, limit=limit):
                if not await self._may_read(job_id, invocation):
                    return render.render_job_not_found(job_id)
                checkpoints = await self._openai.list_checkpoints(job_id, limit=limit)
                return render.render_checkpoints(job_id, checkpoints.data, checkpoints.has_more)
            case ReportCommand(job_id=job_id):
                return await self._report(job_id, invocation)
            case HistoryCommand(job_id=job_id):
                return await self._history(job_id, invocation)
            case CreateCommand():
                return await self._create(command, invocation)
            case OpenCreateFormCommand():
                return await self.open_create_form(invocation)
            case ValidateCommand(file_id=file_id, model=model, method=method):
                if self._training is None:  # pragma: no cover - every server attaches one
                    return None
                return await self._training.validate_openai_file(
                    file_id, model=model, method=method, user_id=invocation.user_id
                )
            case FilesCommand(limit=limit):
                files = await self.fine_tune_files(limit=limit)
                return render.render_files(files.data, files.has_more, self._now())
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

    # -- the create form (bot/modal.py) -----------------------------------------------------------

    async def open_create_form(
        self, invocation: Invocation, *, preselected_upload: modal.SlackFileRef | None = None
    ) -> render.Reply | None:
        """Open the create form with the invocation's trigger_id; None when it opened, else what to
        tell the user. Nothing else happens first: Slack's trigger expires 3 seconds after the
        click or command, whatever OpenAI is doing (the file menu loads its options separately)."""
        view = modal.create_view(
            channel_id=invocation.channel_id,
            default_model=self._default_model,
            models=modal.BASE_MODELS,
            preselected_upload=preselected_upload,
        )
        try:
            await self._slack.views_open(trigger_id=invocation.trigger_id, view=view)
        except SlackApiError as error:
            reason = str(error.response.get("error") or "unknown_error")
            log.warning("could not open the create form for %s: %s", invocation.user_id, reason)
            return render.render_create_form_not_opened(reason)
        except Exception as error:
            log.warning("could not open the create form for %s: %s", invocation.user_id, type(error).__name__)
            return render.render_create_form_not_opened("slack_unavailable")
        return None

    async def create_from_form(self, command: CreateCommand, invocation: Invocation) -> None:
        """A submitted form naming a file already in OpenAI: the same create as the command (write
        down, create with the submission's key, watch, announce in the form's channel). A form has
        no response_url, so the private answer, if any, goes out as an ephemeral message."""
        reply = await self.run(command, invocation)
        if reply is not None:
            await self.tell(invocation, reply)

    def attach_training(self, flow: TrainingFlow) -> None:
        """The training-data flow is built after the runner (it creates jobs through `run`)."""
        self._training = flow

    async def check_training_upload(self, form: modal.CreateForm, invocation: Invocation) -> None:
        """A submitted form with a file uploaded in Slack: download, check and report it in the
        channel (bot/training_flow.py); Start on the report uploads it and creates the job."""
        if self._training is None:  # pragma: no cover - every server attaches one
            raise RuntimeError("no training flow attached")
        await self._training.check_upload(form, invocation)

    async def tell(self, invocation: Invocation, reply: render.Reply) -> None:
        """Say something privately to the invoker where there is no response_url (a form): an
        ephemeral message in the channel, or a direct message when the channel refuses the bot."""
        try:
            await self._slack.chat_postEphemeral(
                channel=invocation.channel_id, user=invocation.user_id, **reply.as_kwargs()
            )
            return
        except SlackApiError as error:
            # Not a member of a private channel, or the channel is gone: the DM still reaches them.
            reason = error.response.get("error")
            log.info("no ephemeral for %s (%s); trying a DM", invocation.user_id, reason)
        except Exception as error:
            log.warning("could not reach %s: %s", invocation.user_id, type(error).__name__)
            return
        try:
            opened = await self._slack.conversations_open(users=invocation.user_id)
            await self._slack.chat_postMessage(channel=opened["channel"]["id"], **reply.as_kwargs())
        except Exception as error:
            log.warning("could not tell %s anything: %s", invocation.user_id, type(error).__name__)

    async def fine_tune_files(self, *, limit: int) -> Page[OpenAIFile]:
        """The fine-tune files in OpenAI, newest first (`/finetune files` and the form's menus)."""
        return await self._openai.list_files(purpose="fine-tune", limit=limit, order="desc")

    async def _report(self, job_id: str, invocation: Invocation) -> render.Reply:
        """In the job's thread when this channel has its card, else a new message here: a chart
        cannot be ephemeral, and whoever can read the job here may see its numbers."""
        if not await self._may_read(job_id, invocation):
            return render.render_job_not_found(job_id)
        if self._reporter is None:  # pragma: no cover - every server builds one
            return render.render_job_not_found(job_id)
        watch = await asyncio.to_thread(self._store.get_watch, job_id, invocation.channel_id)
        thread_ts = watch.announcement_ts if watch is not None else None
        result = await self._reporter.on_demand(
            job_id, channel=invocation.channel_id, thread_ts=thread_ts, requested_by=invocation.user_id
        )
        if result.busy:
            return render.render_report_busy(job_id)
        if result.posted:
            return render.render_report_posted(job_id, in_thread=thread_ts is not None)
        return render.render_report_private(result.private_text or "", result.note)

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

    async def _readable(
        self, jobs: list[FineTuningJob], invocation: Invocation
    ) -> tuple[list[FineTuningJob], int]:
        """The jobs of a page this reader may see, and how many were left out."""
        reader = self._reader(invocation)
        if self._read_access is ReadAccess.ORG or reader.is_admin or not jobs:
            return jobs, 0
        origins = await self._origins([job.id for job in jobs])
        shown = [j for j in jobs if may_read(self._read_access, reader, origins[j.id], j.metadata)]
        return shown, len(jobs) - len(shown)

    async def _list(self, command: ListCommand, invocation: Invocation) -> render.Reply:
        # `mine`: the API filters on the metadata the bot wrote when this person started the job.
        metadata = {"slack_user": invocation.user_id} if command.mine else None
        if command.status is None:
            page = await self._openai.list_jobs(limit=command.limit, after=command.after, metadata=metadata)
            jobs, hidden = await self._readable(page.data, invocation)
            found = ListResult(jobs, hidden, page.last_id if page.has_more else None, len(page.data))
        else:
            found = await self._list_by_status(command, command.status, metadata, invocation)
        notes = []
        if command.mine:
            notes.append("Only jobs you started from Slack.")
        if command.status is not None:
            notes.append(
                f"Filtered by status on my side (OpenAI's job list has no status filter): "
                f"I looked through {found.examined} job{'s' if found.examined != 1 else ''}."
            )
        next_page = None
        if found.next_after is not None:
            next_page = dataclasses.replace(command, after=found.next_after).as_text()
        return render.render_job_list(
            found.jobs,
            found.next_after is not None,
            self._now(),
            hidden=found.hidden,
            policy=self._read_access.value,
            next_page=next_page,
            filter_note=" ".join(notes) or None,
        )

    async def _list_by_status(
        self, command: ListCommand, status: str, metadata: dict[str, str] | None, invocation: Invocation
    ) -> ListResult:
        """Read pages (newest first) until `limit` jobs of this status are found, the jobs run out,
        or LIST_FILTER_REQUESTS pages were read; the cursor is the last job looked at."""
        matched: list[FineTuningJob] = []
        hidden = examined = 0
        after = command.after
        for _ in range(LIST_FILTER_REQUESTS):
            page = await self._openai.list_jobs(limit=LIST_PAGE_SIZE, after=after, metadata=metadata)
            candidates = [job for job in page.data if job.status == status]
            visible = {job.id for job in (await self._readable(candidates, invocation))[0]}
            for index, job in enumerate(page.data):
                examined += 1
                if job.status != status:
                    continue
                if job.id not in visible:
                    hidden += 1
                    continue
                matched.append(job)
                if len(matched) == command.limit:
                    more = index < len(page.data) - 1 or page.has_more
                    return ListResult(matched, hidden, job.id if more else None, examined)
            if not page.has_more or page.last_id is None:
                return ListResult(matched, hidden, None, examined)
            after = page.last_id
        return ListResult(matched, hidden, after, examined)

    async def job_action(self, action: str, job_id: str, invocation: Invocation) -> ActionResult:
        """Cancel, pause or resume (a button): like the command, OpenAI's refusals answered kindly."""
        try:
            return await self._act(action, job_id, invocation)
        except OpenAIError as error:
            log.warning(
                "OpenAI refused %s of %s (status=%s code=%s)", action, job_id, error.status, error.code
            )
            return ActionResult(render.render_openai_error(error, job_id=job_id, action=f"{action} the job"))

    async def _act(self, action: str, job_id: str, invocation: Invocation) -> ActionResult:
        """Read policy first, then who may change the job (the starter or an admin), then its
        current status: nothing is sent to OpenAI for a refused or pointless request. Whatever it
        comes to is audited."""
        kind = Action(action)
        try:
            result, outcome, reason = await self._act_once(action, job_id, invocation)
        except OpenAIError as error:
            await self._audit(invocation, kind, job_id, Result.FAILED, _openai_reason(error))
            raise
        status = result.job.status if result.job is not None else None
        await self._audit(invocation, kind, job_id, outcome, reason, status=status)
        return result

    async def _act_once(
        self, action: str, job_id: str, invocation: Invocation
    ) -> tuple[ActionResult, Result, str | None]:
        origin = (await self._origins([job_id]))[job_id]
        if not await self._may_read(job_id, invocation, origin):
            return ActionResult(render.render_job_not_found(job_id)), Result.REFUSED, "not found"
        if not self._may_cancel(invocation.user_id, origin.starter):
            user, starter = invocation.user_id, origin.starter
            log.info("refused %s of %s by %s (starter %s)", action, job_id, user, starter)
            # Name the starter only to the channel where they started it.
            here = origin.starter_channel == invocation.channel_id
            reply = render.render_not_allowed(job_id, action, origin.starter, starter_here=here)
            return ActionResult(reply), Result.REFUSED, "not allowed"
        job = await self._openai.retrieve_job(job_id)
        if not ACTION_NEEDS[action](job.status):
            # A stale card or a second click: the job's state now, not OpenAI's 400.
            reply = render.render_action_not_applicable(job, action)
            return ActionResult(reply, job), Result.REFUSED, f"bad state: {job.status}"
        change = {
            "cancel": self._openai.cancel_job,
            "pause": self._openai.pause_job,
            "resume": self._openai.resume_job,
        }[action]
        job = await change(job_id)
        log.info("%s of %s requested by %s", action, job_id, invocation.user_id)
        return ActionResult(render.render_action_requested(job, action, self._now()), job), Result.OK, None

    async def _audit(
        self,
        invocation: Invocation,
        action: Action,
        job_id: str | None,
        result: Result,
        reason: str | None = None,
        **detail: Any,
    ) -> None:
        entry = AuditEntry(
            team_id=invocation.team_id,
            channel_id=invocation.channel_id,
            user_id=invocation.user_id,
            action=action,
            job_id=job_id,
            result=result,
            reason=reason,
            detail={k: v for k, v in detail.items() if v is not None},
        )
        await self._auditor.record(entry)

    async def _history(self, job_id: str, invocation: Invocation) -> render.Reply:
        """A job's audit trail, for admins and the job's starter; anyone else gets the same "not
        found" as a job they may not read, so the answer reveals nothing."""
        origin = (await self._origins([job_id]))[job_id]
        if not self._may_cancel(invocation.user_id, origin.starter):
            log.info("refused history of %s to %s", job_id, invocation.user_id)
            return render.render_job_not_found(job_id)
        rows = await asyncio.to_thread(self._store.job_audit, job_id, limit=HISTORY_ROWS)
        entries = [
            render.HistoryEntry(
                at=int(row.at),
                user_id=row.user_id,
                channel_id=row.channel_id,
                action=row.action,
                result=row.result,
                reason=row.reason,
            )
            for row in rows
        ]
        return render.render_history(job_id, entries, limit=HISTORY_ROWS)

    # -- buttons: reading a job and bringing its card up to date --------------------------------------

    async def read_job(self, job_id: str, invocation: Invocation) -> FineTuningJob | None:
        """The job, fresh from OpenAI, or None when this reader may not see it (or it is gone)."""
        origin = (await self._origins([job_id]))[job_id]
        reader = self._reader(invocation)
        if decided_by_store(self._read_access, reader, origin) is False:
            return None
        try:
            job = await self._openai.retrieve_job(job_id)
        except NotFoundError:
            return None
        return job if may_read(self._read_access, reader, origin, job.metadata) else None

    def render_get(self, job: FineTuningJob, invocation: Invocation) -> render.Reply:
        """The `get` reply (with its buttons), with what this reader may not see hidden."""
        return self._render_job(job, invocation)

    def card_message(self, job: FineTuningJob, watch: Watch) -> render.Reply:
        """The job's announcement in a channel as it should read now (the card, with its buttons)."""
        if watch.origin == "create":
            return render.render_announcement(job, watch.user_id, self._now())
        return render.render_watch_announcement(job, watch.user_id, self._now())

    async def _redraw_announcement(self, watch: Watch, job: FineTuningJob) -> bool:
        assert watch.announcement_ts is not None
        await self._slack.chat_update(
            channel=watch.channel_id, ts=watch.announcement_ts, **self.card_message(job, watch).as_kwargs()
        )
        return watch.last_status != job.status

    async def refresh_card(
        self, job_id: str, channel_id: str, message_ts: str, user_id: str
    ) -> render.Reply | None:
        """Re-read the job and edit its announcement (the clicked message) to match. Returns what
        to tell the clicker privately: nothing when the card visibly changed."""
        invocation = Invocation(team_id="", channel_id=channel_id, user_id=user_id)
        try:
            job = await self.read_job(job_id, invocation)
        except OpenAIError as error:
            return render.render_openai_error(error, job_id=job_id, action="refresh the job")
        if job is None:
            return render.render_job_not_found(job_id)
        watch = await asyncio.to_thread(self._store.get_watch, job_id, channel_id)
        if watch is None or watch.announcement_ts != message_ts:
            # Not an announcement the bot knows: show the job privately rather than edit blindly.
            return self._render_job(job, invocation)
        try:
            changed = await self._show_card(watch, job)
        except SlackApiError as error:
            log.warning("could not update the card of %s: %s", job_id, error.response.get("error"))
            return self._render_job(job, invocation)
        except OpenAIError as error:
            return render.render_openai_error(error, job_id=job_id, action="refresh the job")
        return None if changed else render.render_card_unchanged(job)

    async def _unwatch(self, job_id: str, invocation: Invocation) -> render.Reply:
        watch = await asyncio.to_thread(self._store.get_watch, job_id, invocation.channel_id)
        if watch is None or watch.ended_at is not None:
            await self._audit(invocation, Action.UNWATCH, job_id, Result.REFUSED, "not watched here")
            return render.render_unwatched(job_id, False)
        # The announcement of a job started here is its starter's: anyone else silencing it would
        # keep the outcome from them. A channel's own `watch` anyone in the channel may end.
        if watch.origin == "create" and not self._may_cancel(invocation.user_id, watch.user_id):
            log.info("refused unwatch of %s by %s (starter %s)", job_id, invocation.user_id, watch.user_id)
            await self._audit(invocation, Action.UNWATCH, job_id, Result.REFUSED, "not allowed")
            return render.render_not_allowed(job_id, "unwatch", watch.user_id)
        ended = await asyncio.to_thread(self._store.end_watch, watch.id, f"unwatched by {invocation.user_id}")
        outcome, reason = (Result.OK, None) if ended else (Result.REFUSED, "ended")
        await self._audit(invocation, Action.UNWATCH, job_id, outcome, reason)
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
        summary = create_audit_detail(request, key)
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
            await self._audit(invocation, Action.CREATE, None, Result.FAILED, "database", **summary)
            return render.render_create_not_started_database()
        if not fresh and pending.job_id is not None:
            # A redelivery of a create already audited: not a second action.
            log.info("create %s delivered again: it already started %s", key, pending.job_id)
            return render.render_create_duplicate(pending.job_id)
        try:
            job = await self._openai.create_job(**request, idempotency_key=key)
        except OpenAIError as error:
            # A lost answer is not a failure: whether a job was made is known only when the
            # reconciler has looked it up, and its row will say (bot/pending.py).
            result = Result.UNCONFIRMED if answer_lost(error) else Result.FAILED
            await self._audit(invocation, Action.CREATE, None, result, _openai_reason(error), **summary)
            return await self._create_failed(pending, error)
        crash_point("after_openai_create")
        log.info("created %s for user %s in channel %s", job.id, invocation.user_id, invocation.channel_id)
        await self._audit(invocation, Action.CREATE, job.id, Result.OK, **summary)
        return await self.record_and_announce(pending, job)

    async def _create_failed(self, pending: PendingCreate, error: OpenAIError) -> render.Reply:
        # A lost answer leaves it unknown whether OpenAI made the job: the row stays `unconfirmed`
        # and the reconciler looks the job up by its key later (and tells the user either way).
        # Any other refusal created nothing: `failed`.
        unconfirmed = answer_lost(error)
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
        try:
            reply, result, reason = await self._watch_once(job_id, invocation)
        except OpenAIError as error:
            await self._audit(invocation, Action.WATCH, job_id, Result.FAILED, _openai_reason(error))
            raise
        await self._audit(invocation, Action.WATCH, job_id, result, reason)
        return reply

    async def _watch_once(
        self, job_id: str, invocation: Invocation
    ) -> tuple[render.Reply | None, Result, str | None]:
        existing = await asyncio.to_thread(self._store.get_watch, job_id, invocation.channel_id)
        if existing is not None and existing.ended_at is None:
            return render.render_already_watching(job_id), Result.REFUSED, "already watched here"
        # Watching posts the job in this channel: only a job this reader may read.
        if not await self._may_read(job_id, invocation):
            return render.render_job_not_found(job_id), Result.REFUSED, "not found"
        job = await self._openai.retrieve_job(job_id)
        if job.is_terminal:
            # Nothing left to wait for: show how it ended instead of promising a message.
            return self._render_job(job, invocation), Result.REFUSED, f"bad state: {job.status}"
        message = render.render_watch_announcement(job, invocation.user_id, self._now())
        return await self._announce_and_watch(job, invocation, message, origin="watch"), Result.OK, None

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
