"""Making a completion report: the numbers from OpenAI, the picture, and Slack's upload flow.

Shared by the outbox's owed reports (bot/reporter.py) and `/finetune report` (bot/runner.py).
The pure parts live elsewhere: parsing in bot/training_metrics.py, the numbers and text in
bot/scorecard.py, the drawing in bot/chart.py.

Where the numbers come from, best first: the job's result file (`result_files[0]`, a CSV of step
metrics, read with a size cap), then the `metrics` events (paged newest first, bounded), and the
checkpoints (one page of up to 100; OpenAI keeps a job's last few).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httpx
from slack_sdk.web.async_client import AsyncWebClient

from bot.chart_renderer import ChartError
from bot.crash import crash_point
from bot.models import FineTuningJob
from bot.openai_client import FileTooLargeError, FineTuningClient, NotFoundError
from bot.scorecard import Scorecard, build_scorecard, chart_alt_text, chart_title, render_scorecard
from bot.training_metrics import (
    CheckpointInfo,
    MetricSeries,
    ResultFileError,
    checkpoints_from_api,
    parse_result_file,
    series_from_events,
)

log = logging.getLogger(__name__)

# A 10,000-step result CSV is about 0.3 to 0.5 MB; 4 MB is about 80,000 steps. The parsed series comes
# back from the worker into the bot's process (~2 s of unpickling and ~60 MB at 16 MB), so larger
# files are not read: the events stand in (their last 5,000 steps).
MAX_RESULT_FILE_BYTES = 4 * 1024 * 1024
# Events come 100 to a page, newest first: 50 pages are the last 5,000 metrics steps (a longer job
# is charted from its result file, which has every step).
EVENTS_PAGE_SIZE = 100
MAX_EVENT_PAGES = 50
CHECKPOINTS_LIMIT = 100

# Slack errors after which retrying the upload cannot help: the picture is given up and the
# scorecard goes alone, with the reason. (A refusing channel refuses the text too: see callers.)
UPLOAD_REFUSALS = frozenset(
    {
        "missing_scope",
        "not_allowed_token_type",
        "no_permission",
        "restricted_action",
        "file_uploads_disabled",
        "file_upload_size_restricted",
        "file_type_not_allowed",
        "alt_txt_too_large",
        "invalid_arguments",
        "not_authed",
        "invalid_auth",
        "account_inactive",
        "token_revoked",
        "ekm_access_denied",
    }
)


@dataclass(frozen=True)
class ReportData:
    job: FineTuningJob
    series: MetricSeries | None
    checkpoints: tuple[CheckpointInfo, ...]
    problems: tuple[str, ...]  # why a better source was not used (plain text, for the log)

    def scorecard(self, now: int | None = None) -> Scorecard:
        return build_scorecard(self.job, self.series, self.checkpoints, now=now)

    @property
    def worth_posting(self) -> bool:
        """Something beyond what the outcome message already says: metrics or checkpoints."""
        return bool((self.series is not None and self.series.points) or self.checkpoints)


Parse = Callable[[bytes], Awaitable[MetricSeries]]


async def _parse_here(data: bytes) -> MetricSeries:
    return parse_result_file(data)


async def gather_report(
    openai: FineTuningClient,
    job_id: str,
    *,
    parse: Parse = _parse_here,
    job: FineTuningJob | None = None,
) -> ReportData:
    """Everything a report shows, read fresh. OpenAI errors other than a missing result file
    propagate: the caller decides whether to retry. `parse` reads the result file; the bot passes
    `ChartRenderer.parse`, which does it in the worker process (a big file is seconds of pure
    Python that would otherwise stall every acknowledgement). `job`: an ended job as the outbox
    recorded it (final: no need to ask OpenAI again)."""
    if job is None or job.id != job_id:
        job = await openai.retrieve_job(job_id)
    problems: list[str] = []
    series: MetricSeries | None = None
    if job.result_files:
        file_id = job.result_files[0]
        try:
            data = await openai.download_file(file_id, max_bytes=MAX_RESULT_FILE_BYTES)
            series = await parse(_unwrap_json_string(data))
        except FileTooLargeError as error:
            problems.append(f"result file {file_id} is too large ({error})")
        except ResultFileError as error:
            problems.append(f"result file {file_id} is not a metrics CSV ({error})")
        except NotFoundError:
            problems.append(f"result file {file_id} is gone")
        except ChartError as error:  # the worker failed or timed out on it
            problems.append(f"result file {file_id} could not be read ({error})")
    if series is None or not series.points:
        from_events = series_from_events(await _metrics_events(openai, job_id))
        if from_events.points or series is None:
            series = from_events
    page = await openai.list_checkpoints(job_id, limit=CHECKPOINTS_LIMIT)
    checkpoints = checkpoints_from_api(c.raw for c in page.data)
    return ReportData(job, series, checkpoints, tuple(problems))


async def _metrics_events(openai: FineTuningClient, job_id: str) -> list[dict[str, object]]:
    events: list[dict[str, object]] = []
    after: str | None = None
    for _ in range(MAX_EVENT_PAGES):
        page = await openai.list_events(job_id, after=after, limit=EVENTS_PAGE_SIZE)
        events.extend(e.raw for e in page.data if e.type == "metrics")
        if not page.has_more or not page.data:
            break
        after = page.data[-1].id
    return events


def _unwrap_json_string(data: bytes) -> bytes:
    """The spec types the download as a JSON string; the API serves the raw file. Accept both."""
    if data[:1] == b'"':
        try:
            text = json.loads(data)
        except ValueError:
            return data
        if isinstance(text, str):
            return text.encode()
    return data


@dataclass(frozen=True)
class Picture:
    png: bytes
    filename: str
    title: str
    alt_text: str


def picture_meta(card: Scorecard, png: bytes) -> Picture:
    return Picture(png, f"{card.job_id}-report.png", chart_title(card)[:250], chart_alt_text(card)[:1000])


def scorecard_text(card: Scorecard, *, partial: bool = False, note: str | None = None) -> str:
    return render_scorecard(card, partial=partial, note=note)


class UploadFailed(Exception):
    """Slack's upload URL answered something other than 200 (FACTS: anything else is a failure)."""


async def upload_picture(
    slack: AsyncWebClient,
    http: httpx.AsyncClient,
    picture: Picture,
    *,
    channel: str,
    thread_ts: str | None,
    comment: str,
    on_file_id: Callable[[str], Awaitable[bool]] | None = None,
) -> str | None:
    """Slack's current three-step upload, shared in `channel` (in the thread when `thread_ts`).
    Returns the file id, or None if `on_file_id` (which durably records the id before the file
    is shared) says the work is no longer ours. Slack errors raise `SlackApiError`."""
    # Form bodies, not slack_sdk's files_* helpers: those put every argument in the URL's query
    # string, and the comment is a whole scorecard.
    step1 = await slack.api_call(
        "files.getUploadURLExternal",
        data={"filename": picture.filename, "length": len(picture.png), "alt_txt": picture.alt_text},
    )
    file_id = str(step1["file_id"])
    if on_file_id is not None and not await on_file_id(file_id):
        return None
    response = await http.post(str(step1["upload_url"]), content=picture.png)
    if response.status_code != 200:
        raise UploadFailed(f"the upload URL answered HTTP {response.status_code}")
    crash_point("report_before_share")
    form: dict[str, str] = {
        "files": json.dumps([{"id": file_id, "title": picture.title}]),
        "channel_id": channel,
        "initial_comment": comment,
    }
    if thread_ts:
        form["thread_ts"] = thread_ts
    # Slack shares the file just after answering (the share message can lag a moment); a restart
    # that looks for it in the thread (bot/reporter.py) comes seconds later at the earliest.
    await slack.api_call("files.completeUploadExternal", data=form)
    crash_point("report_after_share")
    return file_id
