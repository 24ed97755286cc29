"""Training data from Slack: check an uploaded `.jsonl`, then upload it to OpenAI once and start.

1. The create form (bot/modal.py) names a file uploaded to Slack. A "Checking `train.jsonl`…"
   message goes to the channel; the file is read from Slack (`files.info` → `url_private_download`
   with the bot token, streamed, never held whole: refused before any byte is read when over
   `FINETUNE_MAX_UPLOAD_MB`) and checked line by line as it arrives (bot/training_data.py), off
   the event loop. The message becomes the report: problems with line numbers, token counts, a cost
   estimate, and — only when nothing is wrong — a **Start fine-tuning** button.
2. Start (its starter or an admin, in an allowed channel): the file is read again (its SHA-256 must
   match what was checked), spooled to a temporary file, and sent to OpenAI (`POST /files`) under a
   name unique to this upload; when the answer is lost, that name is looked up before anything is
   sent again, so a retry never makes two files. Then the job is created exactly as `/finetune
   create` does (pending create keyed by the click's trigger id, watch, announcement, live card).

Every step is recorded (bot/training_store.py), so a second click, another replica or a restart
finds where things stand instead of repeating them.

3. A create that outlives its click — OpenAI's answer lost, or the process gone mid-way — is
   concluded by the reconciler (bot/pending.py), which knows nothing of uploads. Each poll cycle,
   right after it, `settle_creates` brings such uploads in line with their pending create: the
   report says "started ftjob-…" and the row is `started`, or, when no job was made, the report
   offers Start again and the row is back to `uploaded`. A click on the upload meanwhile does the
   same first.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from typing import IO, Any, cast

import httpx
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot import render, render_training
from bot.audit import Action, AuditEntry, Auditor, Result
from bot.clock import SYSTEM_CLOCK, Clock
from bot.commands import CreateCommand
from bot.crash import crash_point
from bot.modal import CreateForm, SlackFileRef
from bot.openai_client import FileTooLargeError, FineTuningClient, OpenAIError, UnavailableError
from bot.pending import KEEP_CLOSED
from bot.pricing import Price, estimate_cost
from bot.runner import CHANNEL_REFUSED, Invocation, create_key, unconfirmed_lookups
from bot.store import PendingCreate
from bot.training_data import TrainingFileValidator, ValidationReport
from bot.training_store import TrainingUpload, TrainingUploads

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
# Past this much, the spooled copy of a file being sent to OpenAI goes to disk.
SPOOL_IN_MEMORY_BYTES = 8 << 20
UPLOAD_ATTEMPTS = 3
# A create that left no pending row this long after it was claimed never reached OpenAI (a crash
# or a database failure in between): Start may be clicked again.
CREATE_PATIENCE_SECONDS = 120.0
# Slack's answers to an edit of the report after which the same edit may work later.
SLACK_TRANSIENT_ERRORS = frozenset(
    {"ratelimited", "internal_error", "fatal_error", "service_unavailable", "request_timeout"}
)

# What a Slack error means for the person who asked (plain text; rendered escaped).
_SLACK_READ_PROBLEMS = {
    "file_not_found": "Slack has no such file for the bot: it was deleted, or it is not shared where "
    "the bot can see it (share it in this channel and try again)",
    "file_deleted": "the file is gone: it was deleted from Slack",
    "missing_scope": "the app lacks the `files:read` scope (reinstall it from manifest.yml)",
    "not_visible": "the bot cannot see this file: share it in the channel first",
    "access_denied": "the bot may not read this file: share it in the channel first",
}


class FileProblem(Exception):
    """The file cannot be checked or sent; the message says why and what would work."""


@dataclass(frozen=True)
class Checked:
    report: ValidationReport
    sha256: str


RunCreate = Callable[[CreateCommand, Invocation], Awaitable[render.Reply | None]]


@dataclass(frozen=True)
class CreateOutcome:
    """What the create of a Start came to: its job, or none (`why`, as the report says it)."""

    job_id: str | None
    why: str = ""


def create_outcome(pending: PendingCreate | None, *, returned: bool, waited: float) -> CreateOutcome | None:
    """What the create of an upload in `creating` came to, from its pending create (bot/store.py),
    or None while that is not known (still pending, or unconfirmed: the runner or the reconciler
    concludes it). `returned`: the create was run here and has returned, so no pending row means it
    never began. `waited`: seconds since the upload row last moved."""
    if pending is not None:
        if pending.job_id:
            return CreateOutcome(pending.job_id)
        if pending.state == "failed":
            return CreateOutcome(None, render_training.CREATE_REFUSED)
        if pending.state == "abandoned":
            return CreateOutcome(None, render_training.CREATE_NEVER_CONFIRMED)
        return None
    if returned:
        return CreateOutcome(None, render_training.CREATE_NEVER_SENT)
    # Closed pending creates are deleted after KEEP_CLOSED: past that, no row says nothing.
    if CREATE_PATIENCE_SECONDS < waited < KEEP_CLOSED:
        return CreateOutcome(None, render_training.CREATE_NEVER_SENT)
    return None


class TrainingFlow:
    def __init__(
        self,
        uploads: TrainingUploads,
        openai: FineTuningClient,
        slack: AsyncWebClient,
        *,
        bot_token: str,
        run_create: RunCreate,
        prices: dict[str, Price],
        max_upload_bytes: int,
        admins: frozenset[str] = frozenset(),
        owner: str = "bot",
        http: httpx.AsyncClient | None = None,
        download_hosts: frozenset[str] = frozenset({"files.slack.com"}),
        auditor: Auditor | None = None,
        clock: Clock = SYSTEM_CLOCK,
        stale_after: float = 60.0,
        others_orphaned: bool = False,
    ) -> None:
        self._clock = clock
        # Whose settling of a create (report edit, then the row) another process may take over:
        # one not moved for `stale_after` seconds, or, when `others_orphaned` (SQLite: one process),
        # any other owner's (bot/training_store.py `claim_settling`).
        self._stale_after = stale_after
        self._others_orphaned = others_orphaned
        self._auditor = auditor
        # The bot token goes only to Slack's file host (and, for a test or proxy setup, the host of
        # SLACK_API_URL): a link to anywhere else is refused, never followed with the token.
        self._download_hosts = download_hosts
        self._uploads = uploads
        self._openai = openai
        self._slack = slack
        self._token = bot_token
        self._run_create = run_create
        self._prices = prices
        self._max_bytes = max_upload_bytes
        self._admins = admins
        self._owner = owner
        self._http = http or httpx.AsyncClient(
            timeout=httpx.Timeout(60.0, connect=10.0), follow_redirects=False
        )
        self._busy: set[str] = set()

    async def close(self) -> None:
        await self._http.aclose()

    # -- 1. check ------------------------------------------------------------------------------------

    async def check_upload(self, form: CreateForm, invocation: Invocation) -> None:
        """Post "Checking…", check the file(s), and turn the message into the report."""
        training = form.training_upload
        assert training is not None
        row = await asyncio.to_thread(
            self._uploads.begin,
            team_id=invocation.team_id,
            channel_id=form.channel_id,
            user_id=invocation.user_id,
            slack_file_id=training.id,
            filename=training.name,
            validation_slack_file_id=form.validation_upload.id if form.validation_upload else None,
            params=_params_of(form.command),
        )
        where = await self._post(
            form.channel_id,
            invocation.user_id,
            render_training.render_checking(training.name, invocation.user_id),
        )
        if where is None:
            await asyncio.to_thread(self._uploads.failed, row.id, "could not post in the channel")
            return
        channel, ts = where
        await asyncio.to_thread(self._uploads.set_report, row.id, channel, ts)
        model = form.command.model
        try:
            checked = await self._check_slack_file(training, model=model, method=form.command.method)
            validation = (
                await self._check_slack_file(form.validation_upload, model=model, method=form.command.method)
                if form.validation_upload
                else None
            )
        except FileProblem as problem:
            await asyncio.to_thread(self._uploads.failed, row.id, str(problem))
            await self._edit(
                channel, ts, render_training.render_validation_failed(training.name, str(problem))
            )
            return
        except Exception:
            # Never leave "Checking…" up for good: say it failed, and that sending it again works.
            log.exception("checking %s failed", training.id)
            await asyncio.to_thread(self._uploads.failed, row.id, "unexpected error")
            await self._edit(
                channel,
                ts,
                render_training.render_validation_failed(
                    training.name, "something went wrong on my side; send the file through the form again"
                ),
            )
            return
        report = checked.report
        ok = report.ok and (validation is None or validation.report.ok)
        epochs = form.command.hyperparameters.get("n_epochs")
        estimate = estimate_cost(
            report, epochs=epochs if isinstance(epochs, int) else None, prices=self._prices
        )
        summary = {
            "examples": report.examples,
            "usd": estimate.usd,
            "validation_ok": None if validation is None else validation.report.ok,
        }
        await asyncio.to_thread(
            self._uploads.checked,
            row.id,
            ok=ok,
            sha256=checked.sha256,
            validation_sha256=validation.sha256 if validation else None,
            summary=summary,
        )
        message = render_training.render_validation(
            report, estimate, user_id=invocation.user_id, start_value=row.id if ok else None
        )
        if validation is not None and not validation.report.ok:
            message = render_training.with_note(
                message,
                f"The validation file {validation.report.filename} has problems too: fix both to start.",
            )
        await self._edit(channel, ts, message)

    async def _check_slack_file(self, ref: SlackFileRef, *, model: str, method: str) -> Checked:
        validator = TrainingFileValidator(filename=ref.name, method=method, model=model)
        digest = hashlib.sha256()
        async for chunk in self._read_slack_file(ref):
            digest.update(chunk)
            # Checking is CPU work (JSON, tokens): a thread, so acknowledgements never wait for it.
            await asyncio.to_thread(validator.feed, chunk)
        report = await asyncio.to_thread(validator.finish)
        return Checked(report, digest.hexdigest())

    async def _read_slack_file(self, ref: SlackFileRef) -> AsyncIterator[bytes]:
        """The file's bytes from Slack, streamed; FileProblem with the reason when they cannot be."""
        try:
            info = await self._slack.files_info(file=ref.id)
        except SlackApiError as error:
            reason = str(error.response.get("error") or "unknown_error")
            raise FileProblem(
                _SLACK_READ_PROBLEMS.get(reason, f"Slack would not describe the file ({reason})")
            ) from None
        file = info.get("file") or {}
        size = file.get("size")
        if isinstance(size, int) and size > self._max_bytes:
            raise FileProblem(
                f"it is {size / 1e6:,.1f} MB; the limit is {self._max_bytes / 1e6:,.0f} MB "
                "(OpenAI's Files API takes at most 512 MB; split it or upload it with the API)"
            )
        url = file.get("url_private_download") or file.get("url_private")
        if not isinstance(url, str) or not url.startswith(("https://", "http://")):
            raise FileProblem("Slack gave no download link for it")
        if httpx.URL(url).scheme != "https" and httpx.URL(url).host == "files.slack.com":
            raise FileProblem("Slack's download link is not https; nothing was read")
        if httpx.URL(url).host not in self._download_hosts:
            log.warning("refusing to send the bot token to %s for a file download", httpx.URL(url).host)
            raise FileProblem("Slack's download link points somewhere unexpected; nothing was read")
        try:
            async with self._http.stream(
                "GET", url, headers={"Authorization": f"Bearer {self._token}"}
            ) as response:
                if response.status_code in (401, 403):
                    raise FileProblem(
                        "Slack refused the download (share the file in the channel, then try again)"
                    )
                if response.status_code == 404:
                    raise FileProblem("the file is gone from Slack (deleted meanwhile?)")
                if response.status_code >= 300 or "text/html" in response.headers.get("content-type", ""):
                    raise FileProblem(
                        f"Slack's download answered HTTP {response.status_code}; try again in a minute"
                    )
                size_read = 0
                async for chunk in response.aiter_bytes(CHUNK_BYTES):
                    size_read += len(chunk)
                    if size_read > self._max_bytes:
                        raise FileProblem(f"it is over the {self._max_bytes / 1e6:,.0f} MB limit")
                    yield chunk
        except httpx.HTTPError as error:
            raise FileProblem(f"the download from Slack failed ({type(error).__name__}); try again") from None

    # -- 2. start --------------------------------------------------------------------------------

    async def start(self, upload_id: str, invocation: Invocation) -> render.Reply | None:
        """The Start button: upload once, create once. Returns what to tell the clicker privately.
        The click is audited (the create it makes is audited too, by the runner, and when OpenAI's
        answer is lost, concluded by the reconciler: the click's row is then `unconfirmed`)."""
        reply, result, reason, job_id = await self._start_checked(upload_id, invocation)
        entry = AuditEntry(
            team_id=invocation.team_id,
            channel_id=invocation.channel_id,
            user_id=invocation.user_id,
            action=Action.START_TRAINING,
            job_id=job_id,
            result=result,
            reason=reason,
            # The key of the create this click makes, if it makes one: the create's rows carry it.
            detail={"upload": upload_id, "key": create_key(invocation.trigger_id)},
        )
        if self._auditor is not None:
            await self._auditor.record(entry)
        return reply

    async def _start_checked(
        self, upload_id: str, invocation: Invocation
    ) -> tuple[render.Reply | None, Result, str | None, str | None]:
        row = await asyncio.to_thread(self._uploads.get, upload_id)
        if row is None:
            reply = render_training.render_start_refused("This check is unknown here (it may have expired).")
            return reply, Result.REFUSED, "unknown upload", None
        if invocation.user_id != row.user_id and invocation.user_id not in self._admins:
            reply = render_training.render_start_refused(
                f"Only <@{row.user_id}> (who sent the file) or an admin can start this job."
            )
            return reply, Result.REFUSED, "not allowed", None
        if row.state == "started" and row.job_id:
            reply = render_training.render_start_refused(f"This file already started {row.job_id}.")
            return reply, Result.REFUSED, "already started", row.job_id
        if row.state in ("rejected", "failed", "checking"):
            reply = render_training.render_start_refused("This file cannot be started: see the report above.")
            return reply, Result.REFUSED, f"bad state: {row.state}", None
        if upload_id in self._busy:
            reply = render_training.render_start_refused("It is being started already.")
            return reply, Result.REFUSED, "busy", None
        self._busy.add(upload_id)
        try:
            return await self._start(row, invocation)
        finally:
            self._busy.discard(upload_id)

    async def _start(
        self, row: TrainingUpload, invocation: Invocation
    ) -> tuple[render.Reply | None, Result, str | None, str | None]:
        reply: render.Reply | None
        if row.state == "creating":
            # A create was under way (a lost answer, a crash): settle it first, as the poll cycle
            # would. A job → say so; none → this click goes on from `uploaded`; not known yet → wait.
            outcome = await self._settle_create(row, row.create_trigger) if row.create_trigger else None
            if outcome is not None and outcome.job_id is not None:
                reply = render_training.render_start_refused(f"This file already started {outcome.job_id}.")
                return reply, Result.REFUSED, "already started", outcome.job_id
            settled = await asyncio.to_thread(self._uploads.get, row.id)
            if settled is None or settled.state != "uploaded":
                reply = render_training.render_start_refused(
                    "A job is already being started from this file; it will be announced here."
                )
                return reply, Result.REFUSED, "busy", None
            row = settled
        file_id = row.openai_file_id
        uploading = file_id is None
        if file_id is None:
            if not await asyncio.to_thread(self._uploads.claim_upload, row.id, self._owner):
                reply = render_training.render_start_refused("It is being started already.")
                return reply, Result.REFUSED, "busy", None
            await self._edit_report(row, render_training.render_uploading(row.filename))
            try:
                file_id, validation_id = await self._send_to_openai(row)
            except (FileProblem, OpenAIError) as problem:
                await asyncio.to_thread(self._uploads.release, row.id, "ready", str(problem))
                await self._edit_report(
                    row,
                    render_training.render_ready_again(
                        row.filename, row.id, row.summary or {}, render_training.UPLOAD_FAILED
                    ),
                )
                reply = render_training.render_start_refused(
                    f"The upload to OpenAI failed: {problem}. Nothing was started; try Start again."
                )
                return reply, Result.FAILED, "upload failed", None
            await asyncio.to_thread(self._uploads.uploaded, row.id, file_id, validation_id)
        else:
            validation_id = row.openai_validation_file_id
        command = _command_of(row.params, file_id, validation_id)
        if not await asyncio.to_thread(self._uploads.creating, row.id, invocation.trigger_id, self._owner):
            reply = render_training.render_start_refused("It is being started already.")
            return reply, Result.REFUSED, "busy", None
        if not uploading:
            # The report still offers Start (a try before made no job): not while this one runs.
            await self._edit_report(row, render_training.render_starting(row.filename))
        # No response_url on the create's own row: should the create outlive this click, the
        # report is where its end is told (settle_creates edits it), and the reconciler's private
        # notes speak of a `create` command, which this person never typed.
        reply = await self._run_create(command, replace(invocation, response_url=None))
        outcome = await self._settle_create(row, invocation.trigger_id, returned=True)
        if outcome is not None and outcome.job_id is not None:
            return reply, Result.OK, None, outcome.job_id
        if outcome is not None:
            # OpenAI refused the create (quota, a model or suffix it will not take) or it never got
            # going: the file is in OpenAI, nothing was started; the report offers Start again.
            return reply, Result.FAILED, "no job created", None
        # OpenAI's answer was lost (or what it came to could not be written down): a job may exist.
        # The reconciler finds it or gives it up (its audit row of the create says which), and the
        # poll cycle then settles this upload; until then the report says it is not known.
        await self._edit_report(
            row, render_training.render_start_unconfirmed(row.filename, unconfirmed_lookups()[-1])
        )
        pending = await asyncio.to_thread(
            self._uploads.store.get_pending_create, create_key(invocation.trigger_id)
        )
        lost = pending is not None and pending.state == "unconfirmed"
        if lost:
            # The runner's answer asks not to run `create` again: say it in this flow's words.
            reply = render_training.render_start_unconfirmed_note(row.filename, unconfirmed_lookups()[-1])
        why = "OpenAI did not confirm the create" if lost else "create left half-done"
        return reply, Result.UNCONFIRMED, why, None

    # -- 3. settle a create that outlived its click ----------------------------------------------

    async def settle_creates(self) -> int:
        """Each poll cycle, after the reconciler: every upload whose create was left under way (a
        lost answer, a crash) and has since come to something gets its report and row brought in
        line with it. Returns how many such creates it found concluded. Never raises."""
        try:
            rows = await asyncio.to_thread(self._uploads.creating_since, self._clock.time() - KEEP_CLOSED)
        except Exception:
            log.exception("could not read the training uploads being started; the next cycle will")
            return 0
        concluded = 0
        for row in rows:
            if row.id in self._busy or not row.create_trigger:
                continue  # a click in this process is on it
            self._busy.add(row.id)
            try:
                concluded += await self._settle_create(row, row.create_trigger) is not None
            except Exception:
                log.exception("settling the start of upload %s failed; the next cycle will", row.id)
            finally:
                self._busy.discard(row.id)
        return concluded

    async def _settle_create(
        self, row: TrainingUpload, trigger: str, *, returned: bool = False
    ) -> CreateOutcome | None:
        """Bring an upload whose create `trigger` was under way in line with what that create came
        to (None: not known yet): the report first, since it is what people read, then the row's
        last step (`started`, or back to `uploaded`).

        Only the claimer edits and moves the row, both conditional on the row still waiting for
        this very create, so the report is edited once. Should the process die after the edit and
        before the row moves, the next claimer makes the same edit again: nothing is posted and
        nobody notified, and the message ends the same."""
        pending = await asyncio.to_thread(self._uploads.store.get_pending_create, create_key(trigger))
        now = self._clock.time()
        outcome = create_outcome(pending, returned=returned, waited=now - row.updated_at)
        if outcome is None:
            return None
        claimed = await asyncio.to_thread(
            self._uploads.claim_settling,
            row.id,
            trigger,
            self._owner,
            stale_before=now - self._stale_after,
            others_orphaned=self._others_orphaned,
        )
        if not claimed:
            return outcome  # settled already, or another replica is settling it
        crash_point("before_training_report_edit")
        if outcome.job_id is not None:
            message = render_training.render_training_started(row.filename, outcome.job_id)
        else:
            message = render_training.render_ready_again(row.filename, row.id, row.summary or {}, outcome.why)
        if not await self._edit_settled_report(row, message):
            return outcome  # still claimed and `creating`: the next cycle edits again
        if outcome.job_id is not None:
            await asyncio.to_thread(self._uploads.started, row.id, trigger, outcome.job_id)
        else:
            await asyncio.to_thread(self._uploads.no_job_started, row.id, trigger, outcome.why)
        return outcome

    async def _send_to_openai(self, row: TrainingUpload) -> tuple[str, str | None]:
        training = await self._upload_once(row, row.slack_file_id, row.upload_name, row.sha256)
        validation = None
        if row.validation_slack_file_id:
            name = row.upload_name.replace(".jsonl", ".validation.jsonl")
            validation = await self._upload_once(
                row, row.validation_slack_file_id, name, row.validation_sha256
            )
        return training, validation

    async def _upload_once(
        self, row: TrainingUpload, slack_file_id: str, name: str, sha256: str | None
    ) -> str:
        existing = await self._find_uploaded(name)
        if existing is not None:
            log.info("%s was already uploaded to OpenAI as %s; not sending it again", name, existing)
            return existing
        ref = SlackFileRef(id=slack_file_id, name=name, size=None, filetype="jsonl")
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY_BYTES) as spool:
            digest = hashlib.sha256()
            async for chunk in self._read_slack_file(ref):
                digest.update(chunk)
                await asyncio.to_thread(spool.write, chunk)
            if sha256 is not None and digest.hexdigest() != sha256:
                raise FileProblem(
                    "the file changed in Slack since it was checked; send it through the form again"
                )
            for attempt in range(UPLOAD_ATTEMPTS):
                try:
                    uploaded = await self._openai.upload_file(cast(IO[bytes], spool), filename=name)
                    return uploaded.id
                except UnavailableError as error:
                    # The answer was lost: OpenAI may have the file. Look before sending again.
                    existing = await self._find_uploaded(name)
                    if existing is not None:
                        return existing
                    if attempt == UPLOAD_ATTEMPTS - 1:
                        raise
                    log.warning("upload of %s failed (%s); retrying", name, error)
                    await self._clock.sleep(1.0 * 2**attempt)
                except OpenAIError as error:
                    if (
                        error.status is not None
                        and (error.status >= 500 or error.status == 429)
                        and attempt < UPLOAD_ATTEMPTS - 1
                    ):
                        existing = await self._find_uploaded(name)
                        if existing is not None:
                            return existing
                        await self._clock.sleep(1.0 * 2**attempt)
                        continue
                    raise
        raise FileProblem("the upload did not finish")  # pragma: no cover - the loop returns or raises

    async def _find_uploaded(self, name: str) -> str | None:
        try:
            page = await self._openai.list_files(purpose="fine-tune", limit=100, order="desc")
        except OpenAIError:
            return None
        for file in page.data:
            if file.filename == name:
                return file.id
        return None

    # -- /finetune validate file-… ------------------------------------------------------------------

    async def validate_openai_file(
        self, file_id: str, *, model: str, method: str = "supervised", user_id: str = ""
    ) -> render.Reply:
        """The same report for a file already in OpenAI, for the asker alone (no Start button:
        `/finetune create file-…` starts it)."""
        validator = TrainingFileValidator(filename=file_id, method=method, model=model)
        try:
            async for chunk in self._openai.iter_file(file_id, max_bytes=self._max_bytes):
                await asyncio.to_thread(validator.feed, chunk)
        except FileTooLargeError:
            return render_training.render_validation_failed(
                file_id, f"it is over the {self._max_bytes / 1e6:,.0f} MB limit"
            )
        report = await asyncio.to_thread(validator.finish)
        estimate = estimate_cost(report, epochs=None, prices=self._prices)
        return render_training.render_validation(report, estimate, user_id=user_id, start_value=None)

    # -- Slack messages ------------------------------------------------------------------------------

    async def _post(self, channel: str, user_id: str, message: render.Reply) -> tuple[str, str] | None:
        try:
            response = await self._slack.chat_postMessage(channel=channel, **message.as_kwargs())
            return str(response["channel"]), str(response["ts"])
        except SlackApiError as error:
            reason = str(error.response.get("error") or "")
            if reason not in CHANNEL_REFUSED:
                raise
        # The channel refuses the bot: the report goes to the person by DM.
        opened = await self._slack.conversations_open(users=user_id)
        dm = str(opened["channel"]["id"])
        response = await self._slack.chat_postMessage(channel=dm, **message.as_kwargs())
        return dm, str(response["ts"])

    async def _edit(self, channel: str, ts: str, message: render.Reply) -> None:
        try:
            await self._slack.chat_update(channel=channel, ts=ts, **message.as_kwargs())
        except SlackApiError:
            log.warning("could not update the training report in %s", channel, exc_info=True)

    async def _edit_report(self, row: TrainingUpload, message: render.Reply) -> None:
        if row.report_channel and row.report_ts:
            await self._edit(row.report_channel, row.report_ts, message)

    async def _edit_settled_report(self, row: TrainingUpload, message: render.Reply) -> bool:
        """The report's last edit: False when it failed in a way that may pass (a rate limit, a
        Slack outage, a dropped connection), so the caller leaves the row for a later try; True
        when it is made, or can never be (no report, the message or channel gone)."""
        if not (row.report_channel and row.report_ts):
            return True
        where = row.report_channel
        try:
            await self._slack.chat_update(channel=where, ts=row.report_ts, **message.as_kwargs())
        except SlackApiError as error:
            reason = str(error.response.get("error") or "")
            status = error.response.status_code
            if reason in SLACK_TRANSIENT_ERRORS or status == 429 or status >= 500:
                log.warning("could not update the training report in %s (%s); again later", where, reason)
                return False
            log.warning("could not update the training report in %s (%s); leaving it", where, reason)
            return True
        except Exception as error:
            name = type(error).__name__
            log.warning("could not update the training report in %s (%s); again later", where, name)
            return False
        return True


def _params_of(command: CreateCommand) -> dict[str, Any]:
    return {
        "model": command.model,
        "validation_file": command.validation_file or None,
        "suffix": command.suffix,
        "seed": command.seed,
        "method": command.method,
        "hyperparameters": dict(command.hyperparameters),
    }


def _command_of(params: dict[str, Any], file_id: str, validation_id: str | None) -> CreateCommand:
    return CreateCommand(
        training_file=file_id,
        model=str(params["model"]),
        validation_file=validation_id or params.get("validation_file") or None,
        suffix=params.get("suffix"),
        seed=params.get("seed"),
        method=str(params.get("method") or "supervised"),
        hyperparameters=dict(params.get("hyperparameters") or {}),
    )
