"""A small async client for OpenAI's fine-tuning REST API, on one shared `httpx.AsyncClient`.

Methods mirror the spec's operations one to one (the tests keep an extract of OpenAI's spec in
tests/specs/openai-fine-tuning.openapi.json).
Errors become a small hierarchy keyed by HTTP status, as openai-python does; retries live in one
place (`_request`): 408, 409, 429 (not `insufficient_quota`, which waiting does not clear), 5xx,
timeouts and connection errors, with exponential backoff and full jitter, honouring `Retry-After`,
within both an attempt limit and an overall time budget so a Slack user is never left waiting long.
"""

from __future__ import annotations

import asyncio
import datetime
import email.utils
import logging
import random
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import IO, Any

import httpx
import msgspec

from bot import ids
from bot.metrics import Metrics, openai_operation
from bot.models import Checkpoint, FineTuningJob, JobEvent, OpenAIFile, Page

log = logging.getLogger(__name__)


class OpenAIError(Exception):
    """An error from OpenAI, or from reaching it. `message` is safe to show (it never holds the key)."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        type: str | None = None,
        code: str | None = None,
        param: str | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.type = type
        self.code = code
        self.param = param
        self.request_id = request_id


class BadRequestError(OpenAIError):
    """400 (and 422): OpenAI's own message says what to fix."""


class AuthenticationError(OpenAIError):
    """401: the key was refused."""


class PermissionDeniedError(OpenAIError):
    """403: the key, organization or project may not do this."""


class NotFoundError(OpenAIError):
    """404."""


class ConflictError(OpenAIError):
    """409."""


class RateLimitError(OpenAIError):
    """429 that outlived the retries."""


class QuotaExceededError(RateLimitError):
    """429 `insufficient_quota`: billing, not load; retrying does not help."""


class FileTooLargeError(Exception):
    """A download stopped at its size cap (not an OpenAI error: the file is simply too big)."""


class ServerError(OpenAIError):
    """5xx that outlived the retries, or a response that was not the JSON the spec promises."""


class UnavailableError(OpenAIError):
    """Timeouts and connection errors that outlived the retries."""


_STATUS_ERRORS: dict[int, type[OpenAIError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    422: BadRequestError,
    429: RateLimitError,
}

_RETRYABLE_STATUSES = frozenset({408, 409, 429})

# What may go into the Idempotency-Key header (Slack trigger ids are digits, dots and hex).
IDEMPOTENCY_KEY = re.compile(r"[A-Za-z0-9._:-]{1,200}")


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 3
    base_delay: float = 0.5
    max_delay: float = 8.0
    # The whole call, attempts and waits together, ends within this many seconds.
    total_budget: float = 20.0

    def backoff(self, attempt: int) -> float:
        """Full jitter (AWS architecture blog): uniform in [0, min(cap, base * 2**attempt)]."""
        return random.uniform(0, min(self.max_delay, self.base_delay * 2**attempt))


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """`Retry-After` is either delta-seconds or an HTTP date (RFC 9110 §10.2.3)."""
    if not value:
        return None
    value = value.strip()
    if re.fullmatch(r"-?\d+(\.\d+)?", value):
        return max(0.0, float(value))
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        # HTTP-dates are always GMT, even the obsolete asctime form that carries no zone.
        when = when.replace(tzinfo=datetime.UTC)
    return max(0.0, when.timestamp() - (now if now is not None else time.time()))


def build_http_client(*, max_connections: int = 20, timeout: float = 15.0) -> httpx.AsyncClient:
    """The one OpenAI client per process, with explicit timeouts and connection limits."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(timeout, connect=5.0),
        limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
        follow_redirects=False,
    )


class FineTuningClient:
    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        api_key: str,
        base_url: str = "https://api.openai.com/v1",
        organization: str | None = None,
        project: str | None = None,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], Any] = asyncio.sleep,
        monotonic: Callable[[], float] = time.monotonic,
        max_concurrency: int = 20,
        metrics: Metrics | None = None,
    ) -> None:
        # The retry budget is measured on the clock the backoff sleeps on (a test's fake clock).
        self._monotonic = monotonic
        self._http = http
        self._metrics = metrics or Metrics()
        self._slots = asyncio.Semaphore(max_concurrency)
        self._base_url = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {api_key}", "Accept": "application/json"}
        if organization:
            self._headers["OpenAI-Organization"] = organization
        if project:
            self._headers["OpenAI-Project"] = project
        self._retry = retry or RetryPolicy()
        self._sleep = sleep

    # -- fine-tuning jobs ------------------------------------------------------------------------

    async def create_job(
        self,
        *,
        training_file: str,
        model: str,
        validation_file: str | None = None,
        suffix: str | None = None,
        seed: int | None = None,
        method: Mapping[str, Any] | None = None,
        hyperparameters: Mapping[str, Any] | None = None,
        integrations: list[Mapping[str, Any]] | None = None,
        metadata: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
    ) -> FineTuningJob:
        """`idempotency_key`: the same key (and body) within OpenAI's window returns the job the
        first request created instead of starting another; without it, one key per call."""
        _require(ids.is_file_id(training_file), f"not a file id: {training_file!r}")
        if validation_file is not None:
            _require(ids.is_file_id(validation_file), f"not a file id: {validation_file!r}")
        body: dict[str, Any] = {"model": model, "training_file": training_file}
        optional = {
            "validation_file": validation_file,
            "suffix": suffix,
            "seed": seed,
            "method": dict(method) if method is not None else None,
            "hyperparameters": dict(hyperparameters) if hyperparameters is not None else None,
            "integrations": [dict(i) for i in integrations] if integrations is not None else None,
            "metadata": dict(metadata) if metadata is not None else None,
        }
        body.update({k: v for k, v in optional.items() if v is not None})
        data = await self._request("POST", "/fine_tuning/jobs", json=body, idempotency_key=idempotency_key)
        return FineTuningJob.from_api(data)

    async def list_jobs(
        self,
        *,
        after: str | None = None,
        limit: int | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> Page[FineTuningJob]:
        params: dict[str, str] = {}
        if after is not None:
            _require(ids.is_job_id(after), f"not a job id: {after!r}")
            params["after"] = after
        if limit is not None:
            params["limit"] = str(limit)
        for key, value in (metadata or {}).items():
            params[f"metadata[{key}]"] = value
        data = await self._request("GET", "/fine_tuning/jobs", params=params)
        return Page([FineTuningJob.from_api(d) for d in _list_data(data)], bool(data.get("has_more")))

    async def retrieve_job(self, job_id: str) -> FineTuningJob:
        return FineTuningJob.from_api(await self._request("GET", _job_path(job_id)))

    async def list_events(
        self, job_id: str, *, after: str | None = None, limit: int | None = None
    ) -> Page[JobEvent]:
        params = _cursor_params(after, limit)
        data = await self._request("GET", _job_path(job_id, "events"), params=params)
        return Page([JobEvent.from_api(d) for d in _list_data(data)], bool(data.get("has_more")))

    async def list_checkpoints(
        self, job_id: str, *, after: str | None = None, limit: int | None = None
    ) -> Page[Checkpoint]:
        params = _cursor_params(after, limit)
        data = await self._request("GET", _job_path(job_id, "checkpoints"), params=params)
        return Page([Checkpoint.from_api(d) for d in _list_data(data)], bool(data.get("has_more")))

    async def cancel_job(self, job_id: str) -> FineTuningJob:
        return FineTuningJob.from_api(await self._request("POST", _job_path(job_id, "cancel")))

    async def pause_job(self, job_id: str) -> FineTuningJob:
        return FineTuningJob.from_api(await self._request("POST", _job_path(job_id, "pause")))

    async def resume_job(self, job_id: str) -> FineTuningJob:
        return FineTuningJob.from_api(await self._request("POST", _job_path(job_id, "resume")))

    # -- files -----------------------------------------------------------------------------------

    async def list_files(
        self,
        *,
        purpose: str | None = "fine-tune",
        limit: int | None = None,
        order: str | None = None,
        after: str | None = None,
    ) -> Page[OpenAIFile]:
        params: dict[str, str] = {}
        if purpose is not None:
            params["purpose"] = purpose
        if order is not None:
            _require(order in ("asc", "desc"), f"order must be asc or desc, not {order!r}")
            params["order"] = order
        params.update(_cursor_params(after, limit))
        data = await self._request("GET", "/files", params=params)
        return Page([OpenAIFile.from_api(d) for d in _list_data(data)], bool(data.get("has_more")))

    async def upload_file(
        self, content: IO[bytes], *, filename: str, purpose: str = "fine-tune"
    ) -> OpenAIFile:
        """`POST /files` (multipart), streamed from `content` (a file object, rewound here).

        Sent once, never retried here: a retry after a lost answer could create a second file.
        The caller names files uniquely and, when the outcome is unknown, looks for the name
        before sending again (bot/training_flow.py)."""
        headers = {**self._headers}
        content.seek(0)
        started = time.perf_counter()
        try:
            async with self._slots:
                response = await self._http.post(
                    f"{self._base_url}/files",
                    headers=headers,
                    data={"purpose": purpose},
                    files={"file": (filename, content, "application/jsonl")},
                    # An upload of hundreds of MB takes longer than an API call: no overall cap,
                    # but a stall of a minute either way ends it.
                    timeout=httpx.Timeout(60.0, connect=10.0),
                )
        except httpx.TimeoutException:
            self._metrics.openai_request("createFile", None, time.perf_counter() - started)
            raise UnavailableError("OpenAI did not answer the upload in time.") from None
        except httpx.TransportError as exc:
            self._metrics.openai_request("createFile", None, time.perf_counter() - started)
            raise UnavailableError(f"Could not reach OpenAI ({type(exc).__name__}).") from None
        self._metrics.openai_request("createFile", response.status_code, time.perf_counter() - started)
        if not response.is_success:
            raise _error_from_response(response)
        try:
            data = response.json()
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise ServerError("OpenAI answered the upload with something other than a file object.")
        return OpenAIFile.from_api(data)

    async def iter_file(
        self, file_id: str, *, max_bytes: int, chunk_size: int = 1 << 20
    ) -> AsyncIterator[bytes]:
        """A file's content as it arrives (FileTooLargeError past `max_bytes`): for files too big
        to hold, read once and checked on the fly. Not retried (the consumer has seen part)."""
        _require(ids.is_file_id(file_id), f"not a file id: {file_id!r}")
        headers = {**self._headers, "Accept": "*/*"}
        started = time.perf_counter()
        try:
            async with (
                self._slots,
                self._http.stream(
                    "GET", f"{self._base_url}/files/{file_id}/content", headers=headers
                ) as response,
            ):
                # Timed to the response's headers: the body streams at the consumer's pace.
                took = time.perf_counter() - started
                self._metrics.openai_request("downloadFile", response.status_code, took)
                if not response.is_success:
                    await response.aread()
                    raise _error_from_response(response)
                declared = response.headers.get("content-length")
                if declared is not None and declared.isdigit() and int(declared) > max_bytes:
                    raise FileTooLargeError(
                        f"{file_id} is {int(declared):,} bytes; the limit is {max_bytes:,}"
                    )
                size = 0
                async for chunk in response.aiter_bytes(chunk_size):
                    size += len(chunk)
                    if size > max_bytes:
                        raise FileTooLargeError(f"{file_id} is over {max_bytes:,} bytes")
                    yield chunk
        except httpx.TimeoutException:
            raise UnavailableError("OpenAI did not answer in time.") from None
        except httpx.TransportError as exc:
            raise UnavailableError(f"Could not reach OpenAI ({type(exc).__name__}).") from None

    async def download_file(self, file_id: str, *, max_bytes: int) -> bytes:
        """A file's content, streamed and cut off at `max_bytes` (FileTooLargeError) before it can
        cost the process more memory than that: a result file is small, a training file may not be.
        Retries like every other request; the body is only read from a response that succeeded."""
        _require(ids.is_file_id(file_id), f"not a file id: {file_id!r}")
        url = f"{self._base_url}/files/{file_id}/content"
        headers = {**self._headers, "Accept": "*/*"}
        policy = self._retry
        attempt = 0
        while True:
            retry_after: float | None = None
            status: int | None = None
            started = time.perf_counter()
            try:
                async with self._slots, self._http.stream("GET", url, headers=headers) as response:
                    status = response.status_code
                    if response.is_success:
                        self._metrics.openai_request("downloadFile", status, time.perf_counter() - started)
                        return await _read_capped(response, max_bytes, file_id)
                    await response.aread()  # error bodies are small JSON
                    error = _error_from_response(response)
                    retry_after = parse_retry_after(response.headers.get("retry-after"))
            except httpx.TimeoutException:
                error = UnavailableError("OpenAI did not answer in time.")
            except httpx.TransportError as exc:
                error = UnavailableError(f"Could not reach OpenAI ({type(exc).__name__}).")
            self._metrics.openai_request("downloadFile", status, time.perf_counter() - started)
            attempt += 1
            if not _is_retryable(error) or attempt >= policy.max_attempts:
                raise error
            self._metrics.openai_retry("downloadFile")
            await self._sleep(retry_after if retry_after is not None else policy.backoff(attempt))

    # -- transport -------------------------------------------------------------------------------

    async def _request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        json: Any = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        url = self._base_url + path
        headers = dict(self._headers)
        if method != "GET":
            # One key for every attempt, so a retried POST after a lost response cannot start a
            # second job (openai-python sends the same header for the same reason). A caller's key
            # (a create's Slack trigger_id) extends that to redeliveries of the same command.
            _require(
                idempotency_key is None or IDEMPOTENCY_KEY.fullmatch(idempotency_key) is not None,
                "unsafe idempotency key",
            )
            headers["Idempotency-Key"] = idempotency_key or f"finetune-bot-{uuid.uuid4()}"
        policy = self._retry
        deadline = self._monotonic() + policy.total_budget
        operation = openai_operation(method, path)
        attempt = 0
        while True:
            status: int | None = None
            started = time.perf_counter()
            try:
                # Wait here, not in httpx's pool: with hundreds of requests queued, httpcore rescans
                # its whole queue each time a connection frees up, burning the CPU that Slack
                # acknowledgements need (measured by bench/ack.py).
                async with self._slots:
                    remaining = deadline - self._monotonic()
                    started = time.perf_counter()  # OpenAI's latency, not our queue's
                    response = await self._http.request(
                        method,
                        url,
                        params=params,
                        json=json,
                        headers=headers,
                        timeout=_attempt_timeout(self._http.timeout, remaining),
                    )
            except httpx.TimeoutException:
                error: OpenAIError = UnavailableError("OpenAI did not answer in time.")
                retry_after = None
            except httpx.TransportError as exc:
                error = UnavailableError(f"Could not reach OpenAI ({type(exc).__name__}).")
                retry_after = None
            except httpx.DecodingError:
                # A body that does not match its Content-Encoding (a proxy mangled it, say).
                error = ServerError("OpenAI's response could not be decoded.")
                retry_after = None
            else:
                status = response.status_code
                if response.is_success:
                    data = _decode_json(response)
                    if isinstance(data, dict):
                        self._metrics.openai_request(operation, status, time.perf_counter() - started)
                        return data
                    error = ServerError(
                        "OpenAI answered with something other than the JSON object it documents.",
                        status=response.status_code,
                        request_id=response.headers.get("x-request-id"),
                    )
                    retry_after = None
                else:
                    error = _error_from_response(response)
                    retry_after = parse_retry_after(response.headers.get("retry-after"))
            self._metrics.openai_request(operation, status, time.perf_counter() - started)
            attempt += 1
            if not _is_retryable(error) or attempt >= policy.max_attempts:
                raise error
            delay = retry_after if retry_after is not None else policy.backoff(attempt)
            remaining = deadline - self._monotonic()
            if delay >= remaining - 0.5:
                # Waiting as long as OpenAI asks would break the budget: give up now, honestly.
                raise error
            log.warning(
                "OpenAI %s %s failed (%s); retry %d/%d in %.1fs",
                method,
                path,
                error.status or type(error).__name__,
                attempt,
                policy.max_attempts - 1,
                delay,
            )
            self._metrics.openai_retry(operation)
            await self._sleep(delay)


async def _read_capped(response: httpx.Response, max_bytes: int, file_id: str) -> bytes:
    declared = response.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise FileTooLargeError(f"{file_id} is {int(declared):,} bytes; the limit is {max_bytes:,}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > max_bytes:
            raise FileTooLargeError(f"{file_id} is over {max_bytes:,} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _attempt_timeout(configured: httpx.Timeout, remaining: float) -> httpx.Timeout:
    cap = max(0.1, remaining)
    return httpx.Timeout(
        connect=min(configured.connect or cap, cap),
        read=min(configured.read or cap, cap),
        write=min(configured.write or cap, cap),
        pool=min(configured.pool or cap, cap),
    )


def _is_retryable(error: OpenAIError) -> bool:
    if isinstance(error, QuotaExceededError):
        return False
    if isinstance(error, UnavailableError):
        return True
    if error.status is None:
        return False
    return error.status in _RETRYABLE_STATUSES or error.status >= 500


def _error_from_response(response: httpx.Response) -> OpenAIError:
    status = response.status_code
    body: Any
    try:
        body = response.json()
    except ValueError:
        body = None
    detail = body.get("error") if isinstance(body, dict) else None
    if not isinstance(detail, dict):
        detail = {}
    message = detail.get("message") if isinstance(detail.get("message"), str) else None
    code = detail.get("code") if isinstance(detail.get("code"), str) else None
    kwargs: dict[str, Any] = {
        "status": status,
        "type": detail.get("type") if isinstance(detail.get("type"), str) else None,
        "code": code,
        "param": detail.get("param") if isinstance(detail.get("param"), str) else None,
        "request_id": response.headers.get("x-request-id"),
    }
    text = message or f"OpenAI answered HTTP {status}."
    if status == 429 and code == "insufficient_quota":
        return QuotaExceededError(text, **kwargs)
    if status >= 500:
        return ServerError(text, **kwargs)
    return _STATUS_ERRORS.get(status, OpenAIError)(text, **kwargs)


_json_decode = msgspec.json.Decoder().decode


def _decode_json(response: httpx.Response) -> Any:
    """The response's JSON, or None if it is not JSON. A list page of 100 jobs is ~70 KB, decoded
    every poll: msgspec's C parser takes about half json's time. Whatever it refuses (not UTF-8,
    NaN, integers beyond 64 bits) goes to httpx's own decoding, so what is accepted is unchanged."""
    try:
        return _json_decode(response.content)
    except msgspec.DecodeError:
        pass
    try:
        return response.json()
    except ValueError:
        return None


def _list_data(data: dict[str, Any]) -> list[dict[str, Any]]:
    items = data.get("data")
    if not isinstance(items, list):
        raise ServerError("OpenAI returned a list without `data`.")
    return [item for item in items if isinstance(item, dict)]


def _job_path(job_id: str, action: str | None = None) -> str:
    _require(ids.is_job_id(job_id), f"not a job id: {job_id!r}")
    return f"/fine_tuning/jobs/{job_id}" + (f"/{action}" if action else "")


def _cursor_params(after: str | None, limit: int | None) -> dict[str, str]:
    params: dict[str, str] = {}
    if after is not None:
        _require(ids.CHECKPOINT_CURSOR.fullmatch(after) is not None, f"not a cursor: {after!r}")
        params["after"] = after
    if limit is not None:
        params["limit"] = str(limit)
    return params


def _require(condition: bool, message: str) -> None:
    """Defence in depth: callers validate first, but nothing unchecked ever reaches a URL."""
    if not condition:
        raise ValueError(message)
