"""A fake of the OpenAI fine-tuning and files API, driven by the shared OpenAPI extract.

Requests are checked against the spec (paths, query parameters, JSON bodies, unknown fields) and
every response the fake builds itself is checked against the spec's response schema; violations
by the fake land in ``schema_errors`` and turn into a 500, so a test can never pass on the back of
a response the real API could not produce.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import hashlib
import json
import logging
import random
import re
import string
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from aiohttp import web
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError
from multidict import MultiDictProxy

from ._server import FakeServer
from .openapi_spec import OpenAPISpec, Operation, json_path, load_spec

log = logging.getLogger(__name__)

DEFAULT_API_KEY = "sk-test-fake-openai-key-0000000000"
ORGANIZATION_ID = "org-fake"

FaultKind = Literal["status", "hang", "close", "html", "invalid_json"]
HANG_SECONDS = 3600.0

TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})
CANCELLABLE_STATUSES = frozenset({"validating_files", "queued", "running", "paused"})

# Per-list limit bounds the real API enforces but the spec does not state.
_LIMIT_BOUNDS: dict[str, tuple[int, int]] = {
    "listPaginatedFineTuningJobs": (1, 100),
    "listFineTuningEvents": (1, 100),
    "listFineTuningJobCheckpoints": (1, 100),
    "listFiles": (1, 10_000),
}
_METADATA_MAX_KEYS, _METADATA_MAX_KEY_LEN, _METADATA_MAX_VALUE_LEN = 16, 64, 512

_HYPERPARAMETER_DEFAULTS: dict[str, dict[str, Any]] = {
    "supervised": {"batch_size": "auto", "learning_rate_multiplier": "auto", "n_epochs": "auto"},
    "dpo": {"beta": "auto", "batch_size": "auto", "learning_rate_multiplier": "auto", "n_epochs": "auto"},
    "reinforcement": {
        "batch_size": "auto",
        "learning_rate_multiplier": "auto",
        "n_epochs": "auto",
        "reasoning_effort": "default",
        "compute_multiplier": "auto",
        "eval_interval": "auto",
        "eval_samples": "auto",
    },
}
_JOB_HYPERPARAMETER_KEYS = ("batch_size", "learning_rate_multiplier", "n_epochs")

# The extract defines no error responses at all; this is the envelope the real API uses.
ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "additionalProperties": False,
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "additionalProperties": False,
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}
_ERROR_VALIDATOR = Draft202012Validator(ERROR_SCHEMA)

# (type, code, message) used when fail_next() is given no body.
_FAULT_ERRORS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "Invalid request (injected by FakeOpenAI)."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    403: (
        "invalid_request_error",
        "unsupported_country_region_territory",
        "Country, region, or territory not supported",
    ),
    404: ("invalid_request_error", None, "Not found (injected by FakeOpenAI)."),
    409: ("invalid_request_error", None, "Conflict (injected by FakeOpenAI)."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached for requests. Please try again later."),
    500: ("server_error", None, "The server had an error while processing your request. Sorry about that!"),
    502: ("server_error", None, "Bad gateway."),
    503: ("server_error", None, "The engine is currently overloaded, please try again later."),
    504: ("server_error", None, "Gateway timeout."),
}
_HTML_PAGE = (
    "<html>\r\n<head><title>{status} Bad Gateway</title></head>\r\n<body>\r\n"
    "<center><h1>{status} Bad Gateway</h1></center>\r\n<hr><center>cloudflare</center>\r\n"
    "</body>\r\n</html>\r\n"
)

_DEFAULT_TRAINING_JSONL = (
    '{"messages": [{"role": "system", "content": "You are terse."}, '
    '{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}\n'
    '{"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]}\n'
)
_DEFAULT_VALIDATION_JSONL = (
    '{"messages": [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "2"}]}\n'
)

_STATUS_EVENTS: dict[str, tuple[str, str]] = {
    "validating_files": ("info", "Validating training file: {training_file}"),
    "queued": ("info", "Files validated, moving job to queued state"),
    "running": ("info", "Fine-tuning job started"),
    "paused": ("info", "Fine-tuning job paused"),
    "succeeded": ("info", "The job has successfully completed"),
    "failed": ("error", "The job failed: {error_message}"),
    "cancelled": ("info", "Fine-tuning job cancelled"),
}


IDEMPOTENCY_WINDOW = 24 * 3600.0

# Result files: the name OpenAI gives them and the purpose the spec's OpenAIFile enum has for them.
RESULT_FILENAME = "step_metrics.csv"
RESULT_PURPOSE = "fine-tune-results"
_RESULT_CSV_HEADER = b"step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy\n"
_STREAM_CHUNK = 64 * 1024
# Files API: one file ≤ 512 MB (FACTS-interactive §11, createFile's summary). The fake's HTTP cap
# sits above it, so an oversized upload gets OpenAI's 400 rather than a bare 413 from aiohttp.
MAX_UPLOAD_BYTES = 512 * 1024**2
_HTTP_MAX_BODY = MAX_UPLOAD_BYTES + 16 * 1024**2


@dataclass(frozen=True)
class _GeneratedContent:
    """A file body made up on the fly (serve_large_content), never held whole in memory."""

    size: int
    content_length: bool

    def chunks(self) -> Iterator[bytes]:
        # A CSV header, then one 64 KiB block of plausible rows repeated: enough to look like a
        # result file to a parser that gives up at a size cap, at no cost per request.
        rows = bytearray()
        step = 1
        while len(rows) < _STREAM_CHUNK:
            rows += f"{step},{2.0 / step:.6f},{0.5 + step / 1e6:.6f},,\n".encode()
            step += 1
        block = bytes(rows[:_STREAM_CHUNK])
        remaining = self.size
        head = _RESULT_CSV_HEADER[:remaining]
        yield head
        remaining -= len(head)
        while remaining > 0:
            piece = block[:remaining]
            yield piece
            remaining -= len(piece)


class ApiError(Exception):
    """An OpenAI-style error response: ``{"error": {message, type, param, code}}``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        error_type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            }
        }


@dataclass
class RecordedRequest:
    method: str
    path: str  # without the /v1 prefix, e.g. /fine_tuning/jobs
    query: dict[str, str]  # last value wins; see query_pairs for repeated keys
    query_pairs: list[tuple[str, str]]
    headers: dict[str, str]  # lower-case names
    json: Any  # parsed body, or None when empty / not JSON
    body: bytes
    organization: str | None  # OpenAI-Organization header
    project: str | None  # OpenAI-Project header
    time: float
    form: dict[str, str] | None = None  # multipart fields (files as "<file NAME>"), POST /files only
    status: int | None = None  # None while in flight, or when a hang/close fault sent no response
    fault: str | None = None  # kind of injected fault that answered this request, if any


@dataclass
class RecordedFileUpload:
    """A file POST /files created (also when a fault then lost the answer: ``processed=True``)."""

    file_id: str
    filename: str
    purpose: str
    data: bytes  # the same bytes the fake serves as the file's content, not a second copy
    time: float


@dataclass
class Fault:
    kind: FaultKind
    status: int
    path: re.Pattern[str] | None
    method: str | None
    remaining: int
    headers: dict[str, str] = field(default_factory=dict)
    body: dict[str, Any] | str | None = None
    # The request is carried out first and only its answer is lost: "the job exists but the
    # client never heard" (a read timeout after the work was done, a proxy's 502, a dropped link).
    processed: bool = False
    # Only requests whose query this accepts (None = any), e.g. to keep a fault meant for a
    # command away from a background lookup on the same path.
    query: Callable[[Mapping[str, str]], bool] | None = None

    def matches(self, method: str, path: str, query: Mapping[str, str] | None = None) -> bool:
        if self.method is not None and self.method != method.upper():
            return False
        if self.query is not None and not self.query(query or {}):
            return False
        return self.path is None or self.path.fullmatch(path) is not None


class FakeOpenAI(FakeServer):
    """Fake ``https://api.openai.com/v1`` for ``/fine_tuning/jobs`` and ``/files``.

    All state accessors (``jobs``, ``requests``, ``files``...) return snapshots; change state
    through the helpers (``add_job``, ``set_status``, ``add_event``...), which validate against
    the spec and raise ``ValueError`` immediately when asked to build something invalid.
    """

    def __init__(
        self,
        api_key: str = DEFAULT_API_KEY,
        *,
        organization_id: str = ORGANIZATION_ID,
        specs_dir: Path | None = None,
    ) -> None:
        super().__init__()
        self.api_key = api_key
        self.organization_id = organization_id
        self.spec: OpenAPISpec = load_spec(specs_dir)
        # Seconds slept before answering every request; plain attribute, settable at any time.
        self.latency: float = 0.0
        # POST /files refuses a bigger file with a 400 (a test may lower it instead of sending 512 MB).
        self.max_upload_bytes: int = MAX_UPLOAD_BYTES
        # Whether a POST /files repeating an Idempotency-Key gets the first file back instead of a
        # second one. The fake honours the key everywhere, as for job creates, but whether OpenAI
        # does for multipart uploads is unconfirmed: set False to test a bot that must not rely on it.
        self.idempotent_uploads: bool = True
        self._rng = random.Random()
        self._handlers: dict[str, Callable[[dict[str, str], dict[str, Any], Any], Any]] = {
            "listFiles": self._op_list_files,
            "createFile": self._op_create_file,
            "retrieveFile": self._op_retrieve_file,
            "deleteFile": self._op_delete_file,
            "downloadFile": self._op_download_file,
            "createFineTuningJob": self._op_create_job,
            "listPaginatedFineTuningJobs": self._op_list_jobs,
            "retrieveFineTuningJob": self._op_retrieve_job,
            "cancelFineTuningJob": self._op_cancel_job,
            "pauseFineTuningJob": self._op_pause_job,
            "resumeFineTuningJob": self._op_resume_job,
            "listFineTuningEvents": self._op_list_events,
            "listFineTuningJobCheckpoints": self._op_list_checkpoints,
        }
        missing = {op.operation_id for op in self.spec.operations} - set(self._handlers)
        if missing:
            raise RuntimeError(f"spec operations without a fake handler: {sorted(missing)}")
        self._init_state()

    def _init_state(self) -> None:
        self._seq = 0
        self._order: dict[str, int] = {}  # object id -> creation sequence, tie-breaks equal created_at
        self._jobs: dict[str, dict[str, Any]] = {}
        self._suffixes: dict[str, str | None] = {}  # the job object has no suffix field in the spec
        self._events: dict[str, list[dict[str, Any]]] = {}
        self._checkpoints: dict[str, list[dict[str, Any]]] = {}
        self._files: dict[str, dict[str, Any]] = {}
        self._uploads: list[RecordedFileUpload] = []
        self._file_contents: dict[str, bytes] = {}
        self._generated: dict[str, _GeneratedContent] = {}  # serve_large_content()
        self._requests: list[RecordedRequest] = []
        self._faults: list[Fault] = []
        self._schema_errors: list[str] = []
        # Idempotency-Key → (when, body, the successful answer), replayed like OpenAI does.
        self._idempotent: dict[str, tuple[float, bytes, Any]] = {}
        now = int(time.time())
        self.add_file("training.jsonl", _DEFAULT_TRAINING_JSONL, file_id="file-abc123", created_at=now - 7200)
        self.add_file(
            "validation.jsonl", _DEFAULT_VALIDATION_JSONL, file_id="file-val456", created_at=now - 3600
        )

    def reset(self) -> None:
        """Back to the freshly-constructed state: seed files only, no faults, no latency, empty logs."""
        self.cancel_inflight()
        with self.lock:
            self.latency = 0.0
            self.max_upload_bytes = MAX_UPLOAD_BYTES
            self.idempotent_uploads = True
            self._init_state()

    # -- public views -----------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"{self.origin}/v1"

    @property
    def requests(self) -> list[RecordedRequest]:
        with self.lock:
            return list(self._requests)

    @property
    def jobs(self) -> dict[str, dict[str, Any]]:
        """Snapshot of all jobs by id, in creation order."""
        with self.lock:
            return copy.deepcopy(self._jobs)

    @property
    def files(self) -> dict[str, dict[str, Any]]:
        with self.lock:
            return copy.deepcopy(self._files)

    @property
    def uploads(self) -> list[RecordedFileUpload]:
        """Files created by POST /files, in order (add_file() seeds are not uploads)."""
        with self.lock:
            return list(self._uploads)

    @property
    def schema_errors(self) -> list[str]:
        """Responses the fake built that violate the spec. Tests should assert this stays []."""
        with self.lock:
            return list(self._schema_errors)

    @property
    def pending_faults(self) -> list[Fault]:
        with self.lock:
            return list(self._faults)

    def job(self, job_id: str) -> dict[str, Any]:
        with self.lock:
            return copy.deepcopy(self._job_or_key_error(job_id))

    def events(self, job_id: str) -> list[dict[str, Any]]:
        """Events of a job, newest first (as the API lists them)."""
        with self.lock:
            self._job_or_key_error(job_id)
            return copy.deepcopy(self._newest_first(self._events[job_id]))

    def checkpoints(self, job_id: str) -> list[dict[str, Any]]:
        with self.lock:
            self._job_or_key_error(job_id)
            return copy.deepcopy(self._newest_first(self._checkpoints[job_id]))

    def requests_to(self, path_regex: str, method: str | None = None) -> list[RecordedRequest]:
        """Recorded requests whose path (after /v1) fully matches ``path_regex``."""
        pattern = re.compile(path_regex)
        wanted = method.upper() if method else None
        return [
            r for r in self.requests if pattern.fullmatch(r.path) and (wanted is None or r.method == wanted)
        ]

    def wait_for_request(
        self, path_regex: str, method: str | None = None, timeout: float = 5.0
    ) -> RecordedRequest:
        """Wait until a matching request has been answered (or swallowed by a hang/close fault)."""

        def answered(fake: FakeOpenAI) -> RecordedRequest | None:
            for r in fake.requests_to(path_regex, method):
                if r.status is not None or r.fault is not None:
                    return r
            return None

        return self.wait_for(
            answered, timeout, message=f"a {method or 'any-method'} request to {path_regex!r}"
        )

    def clear(self) -> None:
        """Forget recorded requests. State, faults and schema_errors are kept (the latter on purpose:
        the fixture asserts on them at teardown)."""
        with self.lock:
            self._requests.clear()

    def describe(self) -> str:
        with self.lock:
            lines = [f"  requests ({len(self._requests)}, last 15):"]
            for r in self._requests[-15:]:
                qs = "&".join(f"{k}={v}" for k, v in r.query_pairs)
                suffix = f" [fault: {r.fault}]" if r.fault else ""
                lines.append(f"    {r.method} {r.path}{'?' + qs if qs else ''} -> {r.status}{suffix}")
            lines.append(
                "  jobs: " + (", ".join(f"{j}={v['status']}" for j, v in self._jobs.items()) or "none")
            )
            if self._faults:
                lines.append(f"  pending faults: {len(self._faults)}")
            if self._schema_errors:
                lines.append(f"  schema errors: {self._schema_errors}")
        return "\n".join(lines)

    # -- fault injection ------------------------------------------------------------------------

    def fail_next(
        self,
        status: int | None = None,
        *,
        path: str | None = None,
        method: str | None = None,
        times: int = 1,
        headers: dict[str, str] | None = None,
        body: dict[str, Any] | str | None = None,
        kind: FaultKind = "status",
        retry_after: float | None = None,
        processed: bool = False,
        query: Callable[[Mapping[str, str]], bool] | None = None,
    ) -> Fault:
        """Answer the next ``times`` matching requests with a fault instead of the real handler.

        ``path`` is a regex fully matched against the path after /v1 (None = any). Faults are
        consumed in the order they were added. Kinds: "status" (``status``, default 500, with the
        OpenAI error body unless ``body`` is given), "hang" (never answers; the client must time
        out), "close" (drops the connection without a response), "html" (an HTML error page,
        default 502), "invalid_json" (``{not json`` with content-type JSON, default 200).
        ``processed=True``: the request is handled for real (a create makes its job) and then the
        fault replaces the answer. ``query``: a predicate on the request's query parameters that
        must hold for the fault to be taken.
        """
        if kind not in ("status", "hang", "close", "html", "invalid_json"):
            raise ValueError(f"unknown fault kind {kind!r}")
        if times < 1:
            raise ValueError("times must be >= 1")
        default_status = {"html": 502, "invalid_json": 200}.get(kind, 500)
        all_headers = dict(headers or {})
        if retry_after is not None:
            all_headers["Retry-After"] = f"{retry_after:g}"
        fault = Fault(
            kind=kind,
            status=status if status is not None else default_status,
            path=re.compile(path) if path is not None else None,
            method=method.upper() if method else None,
            remaining=times,
            headers=all_headers,
            body=body,
            processed=processed,
            query=query,
        )
        with self.lock:
            self._faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self.lock:
            self._faults.clear()

    def _take_fault(self, method: str, path: str, query: Mapping[str, str]) -> Fault | None:
        with self.lock:
            for fault in self._faults:
                if fault.matches(method, path, query):
                    fault.remaining -= 1
                    if fault.remaining <= 0:
                        self._faults.remove(fault)
                    return fault
        return None

    async def _apply_fault(
        self, fault: Fault, request: web.Request, rec: RecordedRequest
    ) -> web.StreamResponse:
        if fault.kind == "hang":
            # Cancelled by stop()/reset()/cancel_inflight(); the client is expected to give up first.
            await asyncio.sleep(HANG_SECONDS)
            raise web.HTTPGatewayTimeout()
        if fault.kind == "close":
            if request.transport is not None:
                request.transport.abort()
            # Nothing can be written any more; cancelling ends the handler without aiohttp
            # trying to send (and logging) a response on a dead socket.
            raise asyncio.CancelledError
        if fault.kind == "html":
            return self._raw_response(
                rec, fault.status, _HTML_PAGE.format(status=fault.status).encode(), "text/html", fault.headers
            )
        if fault.kind == "invalid_json":
            return self._raw_response(rec, fault.status, b"{not json", "application/json", fault.headers)
        body = fault.body
        if body is None:
            error_type, code, message = _FAULT_ERRORS.get(
                fault.status,
                ("server_error", None, "Injected server error.")
                if fault.status >= 500
                else ("invalid_request_error", None, f"Injected HTTP {fault.status}."),
            )
            body = ApiError(fault.status, message, error_type=error_type, code=code).body()
        if isinstance(body, str):
            return self._raw_response(rec, fault.status, body.encode(), "text/plain", fault.headers)
        return self._raw_response(
            rec, fault.status, json.dumps(body).encode(), "application/json", fault.headers
        )

    @staticmethod
    def _raw_response(
        rec: RecordedRequest, status: int, body: bytes, content_type: str, headers: dict[str, str]
    ) -> web.Response:
        merged = {"Content-Type": content_type, **headers}
        rec.status = status
        return web.Response(status=status, body=body, headers=merged)

    # -- test helpers that shape state ------------------------------------------------------------

    def add_file(
        self,
        filename: str,
        content: bytes | str = _DEFAULT_TRAINING_JSONL,
        *,
        purpose: str = "fine-tune",
        file_id: str | None = None,
        created_at: int | None = None,
        status: str = "processed",
        expires_at: int | None = None,
    ) -> dict[str, Any]:
        data = content.encode() if isinstance(content, str) else content
        obj: dict[str, Any] = {
            "id": file_id or self._new_id("file-"),
            "object": "file",
            "bytes": len(data),
            "created_at": created_at if created_at is not None else int(time.time()),
            "filename": filename,
            "purpose": purpose,
            "status": status,
        }
        if expires_at is not None:
            obj["expires_at"] = expires_at
        self._check("OpenAIFile", obj)
        with self.lock:
            if obj["id"] in self._files:
                raise ValueError(f"file {obj['id']} already exists")
            self._register(obj["id"])
            self._files[obj["id"]] = obj
            self._file_contents[obj["id"]] = data
        return copy.deepcopy(obj)

    def add_job(self, **overrides: Any) -> dict[str, Any]:
        """Insert a job directly (no request). Any FineTuningJob field can be overridden, plus
        ``suffix`` (kept aside: the spec's job object has no suffix field). Pass ``created_at``
        to control list ordering. ``hyperparameters`` alone also fills ``method``.
        """
        suffix = overrides.pop("suffix", None)
        known = set(self.spec.components["FineTuningJob"]["properties"])
        unknown = set(overrides) - known
        if unknown:
            raise TypeError(f"add_job() got fields the FineTuningJob schema does not have: {sorted(unknown)}")
        now = int(time.time())
        method_type = overrides.get("method", {}).get("type", "supervised")
        hyper = {**_HYPERPARAMETER_DEFAULTS[method_type], **overrides.get("hyperparameters", {})}
        job: dict[str, Any] = {
            "object": "fine_tuning.job",
            "id": self._new_id("ftjob-"),
            "model": "gpt-4o-mini-2024-07-18",
            "created_at": now,
            "finished_at": None,
            "fine_tuned_model": None,
            "organization_id": self.organization_id,
            "result_files": [],
            "status": "validating_files",
            "validation_file": None,
            "training_file": "file-abc123",
            "hyperparameters": {k: hyper[k] for k in _JOB_HYPERPARAMETER_KEYS},
            "trained_tokens": None,
            "error": None,
            "integrations": [],
            "seed": self._rng.randint(0, 2**31 - 1),
            "estimated_finish": None,
            "method": {"type": method_type, method_type: {"hyperparameters": hyper}},
            "metadata": None,
        }
        job.update(copy.deepcopy(overrides))
        self._check("FineTuningJob", job)
        with self.lock:
            if job["id"] in self._jobs:
                raise ValueError(f"job {job['id']} already exists")
            self._store_job(job, suffix)
        return copy.deepcopy(job)

    def delete_job(self, job_id: str) -> None:
        """Forget a job, as if OpenAI no longer had it: later requests for it get 404."""
        with self.lock:
            self._jobs.pop(job_id, None)
            self._events.pop(job_id, None)

    def set_status(self, job_id: str, status: str, *, event: bool = True, **fields: Any) -> dict[str, Any]:
        """Move a job to ``status`` and set any other job ``fields``, filling realistic defaults:
        terminal statuses get ``finished_at``; "succeeded" gets ``fine_tuned_model`` and
        ``trained_tokens``; "failed" gets an ``error``. Adds a matching event unless event=False.
        """
        with self.lock:
            job = self._job_or_key_error(job_id)
            known = set(self.spec.components["FineTuningJob"]["properties"])
            unknown = set(fields) - known
            if unknown:
                raise TypeError(
                    f"set_status() got fields the FineTuningJob schema does not have: {sorted(unknown)}"
                )
            updated = copy.deepcopy(job)
            updated["status"] = status
            now = int(time.time())
            if status in TERMINAL_STATUSES and updated["finished_at"] is None:
                updated["finished_at"] = now
            if status == "succeeded":
                if updated["fine_tuned_model"] is None:
                    suffix = self._suffixes.get(job_id) or ""
                    updated["fine_tuned_model"] = (
                        f"ft:{updated['model']}:{self.organization_id}:{suffix}:{job_id[-8:]}"
                    )
                if updated["trained_tokens"] is None:
                    updated["trained_tokens"] = 12_345
            if status == "failed" and updated["error"] is None:
                updated["error"] = {
                    "code": "internal_error",
                    "message": "The job failed due to an internal error.",
                    "param": None,
                }
            updated.update(copy.deepcopy(fields))
            self._check("FineTuningJob", updated)
            self._jobs[job_id] = updated
            if event:
                self._status_event(updated)
            return copy.deepcopy(updated)

    def add_event(
        self,
        job_id: str,
        message: str,
        level: str = "info",
        type: str = "message",
        data: dict[str, Any] | None = None,
        created_at: int | None = None,
    ) -> dict[str, Any]:
        event: dict[str, Any] = {
            "object": "fine_tuning.job.event",
            "id": self._new_id("ftevent-"),
            "created_at": created_at if created_at is not None else int(time.time()),
            "level": level,
            "message": message,
            "type": type,
        }
        # Omitted rather than null: the spec types data as object (its example shows null anyway).
        if data is not None:
            event["data"] = data
        self._check("FineTuningJobEvent", event)
        with self.lock:
            self._job_or_key_error(job_id)
            self._register(event["id"])
            self._events[job_id].append(event)
        return copy.deepcopy(event)

    def add_checkpoint(
        self,
        job_id: str,
        step_number: int,
        *,
        metrics: dict[str, float] | None = None,
        created_at: int | None = None,
    ) -> dict[str, Any]:
        with self.lock:
            job = self._job_or_key_error(job_id)
            checkpoint_id = self._new_id("ftckpt_")
            checkpoint = {
                "object": "fine_tuning.job.checkpoint",
                "id": checkpoint_id,
                "created_at": created_at if created_at is not None else int(time.time()),
                "fine_tuned_model_checkpoint": (
                    f"ft:{job['model']}:{self.organization_id}:{self._suffixes.get(job_id) or ''}:"
                    f"{job_id[-8:]}:ckpt-step-{step_number}"
                ),
                "step_number": step_number,
                "metrics": metrics
                if metrics is not None
                else {"step": float(step_number), "train_loss": 0.5},
                "fine_tuning_job_id": job_id,
            }
            self._check("FineTuningJobCheckpoint", checkpoint)
            self._register(checkpoint_id)
            self._checkpoints[job_id].append(checkpoint)
            return copy.deepcopy(checkpoint)

    def add_result_file(self, job_id: str, content: bytes | str, *, base64_encoded: bool = False) -> str:
        """Give a job its result file (the step-metrics CSV) and return the file's id.

        The file gets purpose "fine-tune-results" and name step_metrics.csv, and the job's
        ``result_files`` becomes ``[file_id]`` (checked against the spec like any change).
        ``base64_encoded=True`` stores, and so serves, the content base64-encoded, as
        ``GET /files/{id}/content`` is reported to return it at times (FACTS-interactive §9).
        """
        data = content.encode() if isinstance(content, str) else content
        if base64_encoded:
            data = base64.b64encode(data)
        with self.lock:
            job = self._job_or_key_error(job_id)
            file = self.add_file(RESULT_FILENAME, data, purpose=RESULT_PURPOSE)
            updated = {**copy.deepcopy(job), "result_files": [file["id"]]}
            self._check("FineTuningJob", updated)
            self._jobs[job_id] = updated
        return file["id"]

    def serve_large_content(self, file_id: str, size_bytes: int, *, content_length: bool = True) -> None:
        """Make ``GET /files/{file_id}/content`` stream ``size_bytes`` of generated CSV, produced
        chunk by chunk so a 50 MB body costs the test nothing to hold; the file's ``bytes`` becomes
        ``size_bytes``. ``content_length=False`` streams it chunked, with no Content-Length, so
        only a reader that counts what it has read can stop at a cap."""
        if size_bytes < 0:
            raise ValueError("size_bytes must be >= 0")
        with self.lock:
            file = self._files.get(file_id)
            if file is None:
                raise KeyError(f"FakeOpenAI has no file {file_id!r}; known: {list(self._files)}")
            file["bytes"] = size_bytes
            self._file_contents[file_id] = b""
            self._generated[file_id] = _GeneratedContent(size_bytes, content_length)

    def add_metrics_events(self, job_id: str, points: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
        """Add one ``type="metrics"`` event per point, ``data`` being the point (e.g. ``{"step": 1,
        "train_loss": 2.1, "total_steps": 300}``), in the given order: each later point is newer
        (created_at never decreases and ties go to the later one), so listing, newest first,
        starts with the last point. created_at runs up to now, one second apart, never before the
        job's latest event."""
        batch = [dict(point) for point in points]
        with self.lock:
            events = self._events[self._job_or_key_error(job_id)["id"]]
            floor = max((e["created_at"] for e in events), default=0)
            now = int(time.time())
            added = []
            for i, data in enumerate(batch):
                when = max(floor, now - (len(batch) - 1 - i))
                message = _metrics_message(data)
                added.append(self.add_event(job_id, message, type="metrics", data=data, created_at=when))
        return added

    def webhook_payload(self, job_id: str, event_type: str | None = None) -> dict[str, Any]:
        """The body OpenAI would POST to a webhook endpoint for this job (spec ``webhooks``).

        ``event_type`` defaults from the job's status ("fine_tuning.job.succeeded" / ".failed" /
        ".cancelled"). Only the payload: signing (Standard Webhooks headers) is not in the spec.
        """
        with self.lock:
            job = self._job_or_key_error(job_id)
            kind = event_type or f"fine_tuning.job.{job['status']}"
        components = {
            "fine_tuning.job.succeeded": "WebhookFineTuningJobSucceeded",
            "fine_tuning.job.failed": "WebhookFineTuningJobFailed",
            "fine_tuning.job.cancelled": "WebhookFineTuningJobCancelled",
        }
        if kind not in components:
            raise ValueError(f"no fine-tuning webhook for {kind!r}; the spec has {sorted(components)}")
        payload = {
            "id": self._new_id("evt_"),
            "object": "event",
            "created_at": int(time.time()),
            "type": kind,
            "data": {"id": job_id},
        }
        self._check(components[kind], payload)
        return payload

    # -- internals: state -----------------------------------------------------------------------

    def _new_id(self, prefix: str) -> str:
        alphabet = string.ascii_letters + string.digits
        return prefix + "".join(self._rng.choice(alphabet) for _ in range(24))

    def _register(self, object_id: str) -> None:
        self._seq += 1
        self._order[object_id] = self._seq

    def _newest_first(self, items: Any) -> list[dict[str, Any]]:
        return sorted(items, key=lambda o: (o["created_at"], self._order.get(o["id"], 0)), reverse=True)

    def _store_job(self, job: dict[str, Any], suffix: str | None) -> None:
        job_id = job["id"]
        self._register(job_id)
        self._jobs[job_id] = job
        self._suffixes[job_id] = suffix
        self._events[job_id] = []
        self._checkpoints[job_id] = []
        self.add_event(job_id, f"Created fine-tuning job: {job_id}", created_at=job["created_at"])

    def _status_event(self, job: dict[str, Any]) -> None:
        level, template = _STATUS_EVENTS.get(job["status"], ("info", "Job status changed to {status}"))
        error = job.get("error") or {}
        message = template.format(
            status=job["status"], training_file=job["training_file"], error_message=error.get("message", "")
        )
        self.add_event(job["id"], message, level=level)

    def _job_or_key_error(self, job_id: str) -> dict[str, Any]:
        try:
            return self._jobs[job_id]
        except KeyError:
            raise KeyError(f"FakeOpenAI has no job {job_id!r}; known: {list(self._jobs)}") from None

    def _check(self, component: str, instance: Any) -> None:
        errors = self.spec.component_errors(component, instance)
        if errors:
            raise ValueError(f"would not be a valid {component}: {errors}")

    # -- internals: HTTP ------------------------------------------------------------------------

    def _make_app(self) -> web.Application:
        app = web.Application(client_max_size=_HTTP_MAX_BODY)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        return app

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        form: MultiDictProxy[str | bytes | web.FileField] | None = None
        if request.content_type == "multipart/form-data":
            # post() has to consume the stream itself (it cannot re-parse bytes already read), and
            # the raw multipart bytes are not worth recording; the fields are, in rec.form.
            raw = b""
            with contextlib.suppress(ValueError):
                form = await request.post()
        else:
            raw = await request.read()
        api_path = request.path[3:] if request.path.startswith("/v1/") else request.path
        rec = RecordedRequest(
            method=request.method,
            path=api_path,
            query=dict(request.query),
            query_pairs=list(request.query.items()),
            headers={k.lower(): v for k, v in request.headers.items()},
            json=_try_json(raw),
            body=raw,
            organization=request.headers.get("OpenAI-Organization"),
            project=request.headers.get("OpenAI-Project"),
            time=time.time(),
            form=_describe_form(form),
        )
        with self.lock:
            self._requests.append(rec)
        if self.latency > 0:
            await asyncio.sleep(self.latency)
        fault = self._take_fault(request.method, api_path, rec.query)
        if fault is not None:
            if fault.processed:
                await self._respond(request, api_path, raw, form)  # done, then the answer is lost
            rec.fault = fault.kind
            return await self._apply_fault(fault, request, rec)
        response = await self._respond(request, api_path, raw, form)
        if isinstance(response, _GeneratedContent):
            rec.status = 200
            return await _stream(request, response)
        rec.status = response.status
        return response

    async def _respond(
        self,
        request: web.Request,
        api_path: str,
        raw: bytes,
        form: MultiDictProxy[str | bytes | web.FileField] | None,
    ) -> web.Response | _GeneratedContent:
        op: Operation | None = None
        try:
            if request.path.startswith("/v1/"):
                op, path_params, _ = self.spec.match(request.method, api_path)
            if op is None:
                raise ApiError(404, f"Invalid URL ({request.method} {request.path})")
            self._check_auth(request)
            query = self._parse_query(op, request)
            body = self._parse_body(op, request, raw, form)
            key = request.headers.get("Idempotency-Key") if request.method == "POST" else None
            if form is not None:
                key = key if self.idempotent_uploads else None
                # The multipart bytes are not kept; what makes two uploads "the same" is this.
                raw = _form_fingerprint(form)
            with self.lock:
                replayed = self._idempotent_replay(key, raw)
                if replayed is not None:
                    return self._json_response(op, replayed)
                result = self._handlers[op.operation_id](path_params, query, body)
                if key and not isinstance(result, web.Response):
                    self._idempotent[key] = (time.time(), raw, copy.deepcopy(result))
        except ApiError as exc:
            return self._error_response(exc, op)
        if isinstance(result, web.Response | _GeneratedContent):
            return result
        return self._json_response(op, result)

    def _idempotent_replay(self, key: str | None, raw: bytes) -> Any:
        """Like OpenAI (and Stripe, whose scheme it follows): a POST repeating a key seen in the
        last 24 hours gets the first answer again instead of acting twice; the same key with a
        different body is refused. Only successes are remembered (errors may be retried)."""
        if not key:
            return None
        seen = self._idempotent.get(key)
        if seen is None or time.time() - seen[0] > IDEMPOTENCY_WINDOW:
            return None
        if seen[1] != raw:
            raise ApiError(
                400,
                "Keys for idempotent requests can only be used with the same parameters they were "
                "first used with.",
                code="idempotency_key_reused",
            )
        return copy.deepcopy(seen[2])

    def _check_auth(self, request: web.Request) -> None:
        header = request.headers.get("Authorization")
        if not header:
            raise ApiError(
                401,
                "You didn't provide an API key. You need to provide your API key in an Authorization header "
                "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                code="invalid_api_key",
            )
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or key.strip() != self.api_key:
            shown = key.strip()
            masked = f"{shown[:3]}*****{shown[-4:]}" if len(shown) > 8 else "*****"
            raise ApiError(
                401,
                f"Incorrect API key provided: {masked}. You can find your API key at "
                "https://platform.openai.com/account/api-keys.",
                code="invalid_api_key",
            )

    def _parse_query(self, op: Operation, request: web.Request) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for key, value in request.query.items():
            deep = re.fullmatch(r"([^\[\]]+)\[([^\[\]]*)\]", key)
            if deep and deep.group(1) in op.query_params and op.query_params[deep.group(1)].deep_object:
                name, sub = deep.groups()
                if not sub:
                    raise ApiError(
                        400, f"Invalid query parameter {key!r}: empty key.", param=name, code="invalid_value"
                    )
                bucket = values.setdefault(name, {})
                if not isinstance(bucket, dict):
                    raise ApiError(
                        400,
                        f"Invalid value for '{name}': cannot mix {name}=... and {name}[k]=...",
                        param=name,
                        code="invalid_value",
                    )
                bucket[sub] = value
                continue
            param = op.query_params.get(key)
            if param is None:
                raise ApiError(400, f"Unknown parameter: '{key}'.", param=key, code="unknown_parameter")
            values[key] = _coerce_query_value(key, value, param.schema)
        for name, param in op.query_params.items():
            if name in values:
                error = self.spec.best_error(param.schema, values[name])
                if error is not None:
                    raise _validation_api_error(error, prefix=name)
            elif param.required:
                raise ApiError(
                    400,
                    f"Missing required parameter: '{name}'.",
                    param=name,
                    code="missing_required_parameter",
                )
        bounds = _LIMIT_BOUNDS.get(op.operation_id)
        if bounds and "limit" in values:
            low, high = bounds
            if values["limit"] < low:
                raise ApiError(
                    400,
                    f"Invalid 'limit': integer below minimum value. Expected a value >= {low}, "
                    f"but got {values['limit']} instead.",
                    param="limit",
                    code="integer_below_min_value",
                )
            if values["limit"] > high:
                raise ApiError(
                    400,
                    f"Invalid 'limit': integer above maximum value. Expected a value <= {high}, "
                    f"but got {values['limit']} instead.",
                    param="limit",
                    code="integer_above_max_value",
                )
        return values

    def _parse_body(
        self,
        op: Operation,
        request: web.Request,
        raw: bytes,
        form: MultiDictProxy[str | bytes | web.FileField] | None,
    ) -> Any:
        if op.request_content_type == "multipart/form-data":
            return self._parse_multipart(op, request, form)
        empty = raw.strip() == b""
        if op.request_schema is None:
            # cancel/pause/resume take no body; tolerate nothing or {} but flag anything else.
            if empty:
                return None
            parsed = self._decode_json(request, raw)
            if parsed == {}:
                return None
            if isinstance(parsed, dict):
                first = next(iter(parsed))
                raise ApiError(
                    400,
                    f"Unrecognized request argument supplied: {first}",
                    param=first,
                    code="unknown_parameter",
                )
            raise ApiError(400, "This endpoint does not accept a request body.")
        parsed = {} if empty else self._decode_json(request, raw)
        if not isinstance(parsed, dict):
            raise ApiError(
                400,
                f"Invalid type for body: expected an object, but got {_json_type(parsed)} instead.",
                code="invalid_type",
            )
        self._reject_unknown_fields(op, parsed)
        error = self.spec.best_error(op.request_schema, parsed)
        if error is not None:
            raise _validation_api_error(error)
        return parsed

    def _decode_json(self, request: web.Request, raw: bytes) -> Any:
        if request.content_type != "application/json":
            raise ApiError(
                400,
                f"Unsupported content type: '{request.content_type}'. This API method only accepts "
                f"'application/json' requests, but you specified the header 'Content-Type: "
                f"{request.content_type}'. Please try again with a supported content type.",
                code="unsupported_content_type",
            )
        try:
            return json.loads(raw)
        except ValueError:
            raise ApiError(
                400,
                "We could not parse the JSON body of your request. (HINT: This likely means you aren't "
                "using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was "
                "sent was not valid JSON.)",
            ) from None

    def _reject_unknown_fields(self, op: Operation, body: dict[str, Any]) -> None:
        assert op.request_schema is not None
        known = set(self.spec.resolve(op.request_schema).get("properties", {}))
        unknown = [k for k in body if k not in known]
        if len(unknown) == 1:
            raise ApiError(
                400,
                f"Unrecognized request argument supplied: {unknown[0]}",
                param=unknown[0],
                code="unknown_parameter",
            )
        if unknown:
            raise ApiError(
                400,
                f"Unrecognized request arguments supplied: {', '.join(unknown)}",
                param=unknown[0],
                code="unknown_parameter",
            )

    def _parse_multipart(
        self,
        op: Operation,
        request: web.Request,
        form: MultiDictProxy[str | bytes | web.FileField] | None,
    ) -> dict[str, Any]:
        if request.content_type != "multipart/form-data":
            raise ApiError(
                400,
                f"Unsupported content type: '{request.content_type}'. This API method only accepts "
                "'multipart/form-data' requests.",
                code="unsupported_content_type",
            )
        if form is None:
            raise ApiError(400, "Could not parse the multipart/form-data body.")
        fields: dict[str, Any] = {}
        upload: tuple[str, bytes] | None = None
        for key, value in form.items():
            if isinstance(value, web.FileField):
                if key == "file":
                    size = value.file.seek(0, 2)
                    value.file.seek(0)
                    if size > self.max_upload_bytes:
                        # OpenAI's wording is assumed; the status and the limit are documented.
                        raise ApiError(
                            400,
                            f"File is too large: {size} bytes; the maximum is {self.max_upload_bytes} bytes.",
                            param="file",
                            code="file_too_large",
                        )
                    upload = (value.filename, value.file.read())
                fields[key] = "<binary>"
                continue
            text = value.decode() if isinstance(value, bytes) else value
            deep = re.fullmatch(r"([^\[\]]+)\[([^\[\]]+)\]", key)
            if deep:
                sub = fields.setdefault(deep.group(1), {})
                sub[deep.group(2)] = int(text) if text.lstrip("-").isdigit() else text
            else:
                fields[key] = text
        self._reject_unknown_fields(op, fields)
        assert op.request_schema is not None
        error = self.spec.best_error(op.request_schema, fields)
        if error is not None:
            raise _validation_api_error(error)
        if upload is None:
            raise ApiError(400, "Invalid 'file': expected a file upload.", param="file", code="invalid_type")
        if fields.get("purpose") == "fine-tune" and not upload[0].lower().endswith(".jsonl"):
            # "The Fine-tuning API only supports .jsonl files" (createFile); the message is assumed.
            raise ApiError(
                400,
                "Invalid file format for Fine-Tuning API. Must be .jsonl",
                param="file",
                code="invalid_file_format",
            )
        return {**fields, "_upload": upload}

    def _json_response(self, op: Operation, payload: Any) -> web.Response:
        schema = op.responses.get("200")
        if schema is not None:
            errors = [f"{json_path(e) or '<root>'}: {e.message}" for e in self.spec.errors(schema, payload)]
            if errors:
                return self._schema_failure(f"{op.operation_id} 200", errors, payload)
        return web.json_response(payload)

    def _error_response(self, exc: ApiError, op: Operation | None) -> web.Response:
        body = exc.body()
        errors = [e.message for e in _ERROR_VALIDATOR.iter_errors(body)]
        if errors:
            return self._schema_failure(f"{op.operation_id if op else '?'} {exc.status}", errors, body)
        return web.json_response(body, status=exc.status)

    def _schema_failure(self, where: str, errors: list[str], payload: Any) -> web.Response:
        message = f"FakeOpenAI produced an invalid {where} response: {errors}"
        log.error("%s; payload=%s", message, payload)
        with self.lock:
            self._schema_errors.append(message)
        body = ApiError(500, message, error_type="fake_schema_error").body()
        return web.json_response(body, status=500)

    # -- operations (called with self.lock held) ------------------------------------------------

    def _paginate(
        self, items: list[dict[str, Any]], after: str | None, limit: int
    ) -> tuple[list[dict[str, Any]], bool]:
        if after is not None:
            ids = [item["id"] for item in items]
            # An unknown cursor yields an empty page rather than restarting from the top.
            items = items[ids.index(after) + 1 :] if after in ids else []
        page = items[:limit]
        return copy.deepcopy(page), len(items) > limit

    def _job_or_404(self, job_id: str) -> dict[str, Any]:
        job = self._jobs.get(job_id)
        if job is None:
            raise ApiError(
                404, f"Could not find fine tune: {job_id}", param="fine_tune_id", code="fine_tune_not_found"
            )
        return job

    def _file_or_404(self, file_id: str) -> dict[str, Any]:
        file = self._files.get(file_id)
        if file is None:
            raise ApiError(404, f"No such File object: {file_id}", param="id")
        return file

    def _op_list_files(self, path: dict[str, str], query: dict[str, Any], body: Any) -> dict[str, Any]:
        order = query.get("order", "desc")
        items = self._newest_first(self._files.values())
        if order == "asc":
            items.reverse()
        if "purpose" in query:
            items = [f for f in items if f["purpose"] == query["purpose"]]
        page, has_more = self._paginate(items, query.get("after"), query.get("limit", 10_000))
        return {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": has_more,
        }

    def _op_create_file(self, path: dict[str, str], query: dict[str, Any], body: Any) -> dict[str, Any]:
        filename, content = body["_upload"]
        now = int(time.time())
        expires = body.get("expires_after")
        created = self.add_file(
            filename,
            content,
            purpose=body["purpose"],
            created_at=now,
            expires_at=now + expires["seconds"] if expires else None,
        )
        self._uploads.append(
            RecordedFileUpload(created["id"], filename, body["purpose"], content, time.time())
        )
        return created

    def _op_retrieve_file(self, path: dict[str, str], query: dict[str, Any], body: Any) -> dict[str, Any]:
        return copy.deepcopy(self._file_or_404(path["file_id"]))

    def _op_delete_file(self, path: dict[str, str], query: dict[str, Any], body: Any) -> dict[str, Any]:
        file_id = path["file_id"]
        self._file_or_404(file_id)
        del self._files[file_id]
        del self._file_contents[file_id]
        self._generated.pop(file_id, None)
        return {"id": file_id, "object": "file", "deleted": True}

    def _op_download_file(
        self, path: dict[str, str], query: dict[str, Any], body: Any
    ) -> web.Response | _GeneratedContent:
        file_id = path["file_id"]
        self._file_or_404(file_id)
        generated = self._generated.get(file_id)
        if generated is not None:
            return generated  # streamed by _handle, outside the lock
        return web.Response(body=self._file_contents[file_id], content_type="application/octet-stream")

    def _op_create_job(
        self, path: dict[str, str], query: dict[str, Any], body: dict[str, Any]
    ) -> dict[str, Any]:
        for param in ("training_file", "validation_file"):
            file_id = body.get(param)
            if file_id is None:
                continue
            file = self._files.get(file_id)
            if file is None:
                raise ApiError(400, f"invalid {param}: {file_id}", param=param, code=f"invalid_{param}")
            if file["purpose"] != "fine-tune":
                raise ApiError(
                    400,
                    f"invalid {param}: {file_id} has purpose '{file['purpose']}', expected 'fine-tune'",
                    param=param,
                    code=f"invalid_{param}",
                )
        metadata = body.get("metadata")
        if metadata:
            _check_metadata(metadata)
        method_in = body.get("method") or {"type": "supervised"}
        method_type = method_in["type"]
        if method_type == "reinforcement" and "reinforcement" not in method_in:
            raise ApiError(
                400,
                "Missing required parameter: 'method.reinforcement'.",
                param="method.reinforcement",
                code="missing_required_parameter",
            )
        sub = copy.deepcopy(method_in.get(method_type) or {})
        hyper = {
            **_HYPERPARAMETER_DEFAULTS[method_type],
            **(body.get("hyperparameters") or {}),  # deprecated top-level form, still accepted
            **sub.get("hyperparameters", {}),
        }
        sub["hyperparameters"] = hyper
        seed = body.get("seed")
        job = {
            "object": "fine_tuning.job",
            "id": self._new_id("ftjob-"),
            "model": body["model"],
            "created_at": int(time.time()),
            "finished_at": None,
            "fine_tuned_model": None,
            "organization_id": self.organization_id,
            "result_files": [],
            "status": "validating_files",
            "validation_file": body.get("validation_file"),
            "training_file": body["training_file"],
            "hyperparameters": {k: hyper[k] for k in _JOB_HYPERPARAMETER_KEYS},
            "trained_tokens": None,
            "error": None,
            "integrations": copy.deepcopy(body.get("integrations") or []),
            "seed": seed if seed is not None else self._rng.randint(0, 2**31 - 1),
            "estimated_finish": None,
            "method": {"type": method_type, method_type: sub},
            "metadata": copy.deepcopy(metadata),
        }
        self._store_job(job, body.get("suffix"))
        self.add_event(
            job["id"], f"Validating training file: {job['training_file']}", created_at=job["created_at"]
        )
        return copy.deepcopy(job)

    def _op_list_jobs(self, path: dict[str, str], query: dict[str, Any], body: Any) -> dict[str, Any]:
        items = self._newest_first(self._jobs.values())
        if "metadata" in query:
            wanted = query["metadata"]
            if wanted is None:  # metadata=null: only jobs without metadata
                items = [j for j in items if not j.get("metadata")]
            else:
                items = [
                    j for j in items if all((j.get("metadata") or {}).get(k) == v for k, v in wanted.items())
                ]
        page, has_more = self._paginate(items, query.get("after"), query.get("limit", 20))
        return {"object": "list", "data": page, "has_more": has_more}

    def _op_retrieve_job(self, path: dict[str, str], query: dict[str, Any], body: Any) -> dict[str, Any]:
        return copy.deepcopy(self._job_or_404(path["fine_tuning_job_id"]))

    def _op_cancel_job(self, path: dict[str, str], query: dict[str, Any], body: Any) -> dict[str, Any]:
        job = self._job_or_404(path["fine_tuning_job_id"])
        if job["status"] not in CANCELLABLE_STATUSES:
            raise ApiError(
                400,
                f"Cannot cancel job {job['id']}: the job is already {job['status']}.",
                code="invalid_job_status",
            )
        return self.set_status(job["id"], "cancelled")

    def _op_pause_job(self, path: dict[str, str], query: dict[str, Any], body: Any) -> dict[str, Any]:
        job = self._job_or_404(path["fine_tuning_job_id"])
        if job["status"] != "running":
            raise ApiError(
                400,
                f"Cannot pause job {job['id']}: only running jobs can be paused (status is {job['status']}).",
                code="invalid_job_status",
            )
        return self.set_status(job["id"], "paused")

    def _op_resume_job(self, path: dict[str, str], query: dict[str, Any], body: Any) -> dict[str, Any]:
        job = self._job_or_404(path["fine_tuning_job_id"])
        if job["status"] != "paused":
            raise ApiError(
                400,
                f"Cannot resume job {job['id']}: only paused jobs can be resumed "
                f"(status is {job['status']}).",
                code="invalid_job_status",
            )
        self.add_event(job["id"], "Fine-tuning job resumed")
        return self.set_status(job["id"], "running", event=False)

    def _op_list_events(self, path: dict[str, str], query: dict[str, Any], body: Any) -> dict[str, Any]:
        job = self._job_or_404(path["fine_tuning_job_id"])
        items = self._newest_first(self._events[job["id"]])
        page, has_more = self._paginate(items, query.get("after"), query.get("limit", 20))
        return {"object": "list", "data": page, "has_more": has_more}

    def _op_list_checkpoints(self, path: dict[str, str], query: dict[str, Any], body: Any) -> dict[str, Any]:
        job = self._job_or_404(path["fine_tuning_job_id"])
        items = self._newest_first(self._checkpoints[job["id"]])
        page, has_more = self._paginate(items, query.get("after"), query.get("limit", 10))
        return {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": has_more,
        }


async def _stream(request: web.Request, content: _GeneratedContent) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    if content.content_length:
        response.content_length = content.size
    else:
        response.enable_chunked_encoding()
    await response.prepare(request)
    try:
        for chunk in content.chunks():
            await response.write(chunk)
        await response.write_eof()
    except ConnectionResetError:
        # The reader hung up at its size cap: what the hook exists to exercise, not an error.
        pass
    return response


def _metrics_message(data: dict[str, Any]) -> str:
    """The message OpenAI writes on a metrics event, e.g. "Step 12/300: training loss=1.23"."""
    step, total = data.get("step"), data.get("total_steps")
    where = f"Step {step}/{total}" if step is not None and total is not None else f"Step {step}"
    parts = [
        f"{label}={data[key]:.2f}"
        for key, label in (("train_loss", "training loss"), ("valid_loss", "validation loss"))
        if isinstance(data.get(key), int | float)
    ]
    return f"{where}: {', '.join(parts)}" if parts else where


def _form_fingerprint(form: MultiDictProxy[str | bytes | web.FileField]) -> bytes:
    """A digest of every field, file contents included, leaving the files readable from the start."""
    digest = hashlib.sha256()
    for key, value in sorted(form.items(), key=lambda item: item[0]):
        digest.update(key.encode() + b"\0")
        if isinstance(value, web.FileField):
            digest.update(value.filename.encode() + b"\0")
            value.file.seek(0)
            for chunk in iter(lambda f=value.file: f.read(_STREAM_CHUNK), b""):
                digest.update(chunk)
            value.file.seek(0)
        else:
            digest.update(value.encode() if isinstance(value, str) else value)
        digest.update(b"\0")
    return digest.digest()


def _describe_form(form: MultiDictProxy[str | bytes | web.FileField] | None) -> dict[str, str] | None:
    if form is None:
        return None
    out: dict[str, str] = {}
    for key, value in form.items():
        if isinstance(value, web.FileField):
            out[key] = f"<file {value.filename}>"
        else:
            out[key] = value.decode() if isinstance(value, bytes) else value
    return out


def _try_json(raw: bytes) -> Any:
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _coerce_query_value(name: str, value: str, schema: dict[str, Any]) -> Any:
    """Query strings are text; turn them into the JSON type the parameter schema expects."""
    types = schema.get("type", "string")
    types = types if isinstance(types, list) else [types]
    if value == "null" and "null" in types:
        return None
    if "integer" in types:
        if re.fullmatch(r"-?\d+", value):
            return int(value)
        raise ApiError(
            400,
            f"Invalid type for '{name}': expected an integer, but got a string instead.",
            param=name,
            code="invalid_type",
        )
    if "number" in types:
        try:
            return float(value)
        except ValueError:
            raise ApiError(
                400,
                f"Invalid type for '{name}': expected a number, but got a string instead.",
                param=name,
                code="invalid_type",
            ) from None
    if "boolean" in types:
        if value in ("true", "false"):
            return value == "true"
        raise ApiError(
            400,
            f"Invalid type for '{name}': expected a boolean, but got a string instead.",
            param=name,
            code="invalid_type",
        )
    if "string" not in types:
        raise ApiError(
            400, f"Invalid value for '{name}': use {name}[key]=value.", param=name, code="invalid_value"
        )
    return value


def _validation_api_error(error: ValidationError, prefix: str = "") -> ApiError:
    """Phrase a jsonschema failure the way the OpenAI API phrases its 400s."""
    where = json_path(error)
    param = ".".join(p for p in (prefix, where) if p) or None
    if error.validator == "required":
        missing = re.match(r"'(.+)' is a required property", error.message)
        name = missing.group(1) if missing else error.message
        full = f"{param}.{name}" if param else name
        return ApiError(
            400, f"Missing required parameter: '{full}'.", param=full, code="missing_required_parameter"
        )
    if error.validator == "type":
        expected = (
            error.validator_value
            if isinstance(error.validator_value, str)
            else " or ".join(error.validator_value)
        )
        return ApiError(
            400,
            f"Invalid type for '{param}': expected {expected}, but got {_json_type(error.instance)} instead.",
            param=param,
            code="invalid_type",
        )
    return ApiError(400, f"Invalid value for '{param}': {error.message}", param=param, code="invalid_value")


def _check_metadata(metadata: dict[str, str]) -> None:
    if len(metadata) > _METADATA_MAX_KEYS:
        raise ApiError(
            400,
            f"Invalid 'metadata': too many properties. Expected an object with at most "
            f"{_METADATA_MAX_KEYS} properties, but got {len(metadata)} instead.",
            param="metadata",
            code="object_above_max_properties",
        )
    for key, value in metadata.items():
        if len(key) > _METADATA_MAX_KEY_LEN:
            raise ApiError(
                400,
                f"Invalid 'metadata': key {key[:20]!r}... is longer than {_METADATA_MAX_KEY_LEN} characters.",
                param="metadata",
                code="invalid_value",
            )
        if len(value) > _METADATA_MAX_VALUE_LEN:
            raise ApiError(
                400,
                f"Invalid 'metadata.{key}': string too long. Expected a string with maximum length "
                f"{_METADATA_MAX_VALUE_LEN}, but got {len(value)} instead.",
                param=f"metadata.{key}",
                code="string_above_max_length",
            )
