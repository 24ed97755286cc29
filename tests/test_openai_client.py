"""FineTuningClient against the spec-checking FakeOpenAI, over real HTTP.

Every request the client sends is validated by the fake against the official OpenAPI extract (an
invalid one comes back as a 400, which the client raises), and every response the fake builds is
validated too (the `fake_openai` fixture fails the test on any schema error). Assertions are on what
actually reached the fake: paths, query strings, bodies, headers and request counts. Retries never
really wait: the client gets a recording `sleep`, so the delays it asked for can be asserted.
"""

from __future__ import annotations

import email.utils
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest

from bot.models import Checkpoint, FineTuningJob, JobEvent, OpenAIFile, Page
from bot.openai_client import (
    AuthenticationError,
    BadRequestError,
    ConflictError,
    FineTuningClient,
    NotFoundError,
    OpenAIError,
    PermissionDeniedError,
    QuotaExceededError,
    RateLimitError,
    RetryPolicy,
    ServerError,
    UnavailableError,
    build_http_client,
    parse_retry_after,
)
from tests.fakes import FakeOpenAI

MODEL = "gpt-4o-mini-2024-07-18"
JOBS = r"/fine_tuning/jobs"
ONE_JOB = r"/fine_tuning/jobs/[^/]+"
FAST = RetryPolicy(max_attempts=3, base_delay=0.01, max_delay=0.05, total_budget=20.0)


class RecordingSleep:
    """Stands in for asyncio.sleep: records each requested delay and returns at once."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.calls.append(delay)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with build_http_client() as client:
        yield client


@pytest.fixture
def sleeps() -> RecordingSleep:
    return RecordingSleep()


MakeClient = Callable[..., FineTuningClient]


@pytest.fixture
def make_client(fake_openai: FakeOpenAI, http: httpx.AsyncClient, sleeps: RecordingSleep) -> MakeClient:
    def make(*, http_client: httpx.AsyncClient | None = None, **overrides: Any) -> FineTuningClient:
        kwargs: dict[str, Any] = {
            "api_key": fake_openai.api_key,
            "base_url": fake_openai.base_url,
            "retry": FAST,
            "sleep": sleeps,
            **overrides,
        }
        return FineTuningClient(http_client or http, **kwargs)

    return make


@pytest.fixture
def client(make_client: MakeClient) -> FineTuningClient:
    return make_client(organization="org-fake", project="proj_fake")


def _only(requests: list[Any]) -> Any:
    assert len(requests) == 1, requests
    return requests[0]


# -- 1. the whole surface ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "expected_hyper"),
    [
        (
            {
                "type": "supervised",
                "supervised": {
                    "hyperparameters": {"n_epochs": 3, "batch_size": 8, "learning_rate_multiplier": 0.5}
                },
            },
            {"n_epochs": 3, "batch_size": 8, "learning_rate_multiplier": 0.5},
        ),
        (
            {
                "type": "dpo",
                "dpo": {
                    "hyperparameters": {
                        "beta": 0.1,
                        "n_epochs": 2,
                        "batch_size": "auto",
                        "learning_rate_multiplier": 1.5,
                    }
                },
            },
            {"beta": 0.1, "n_epochs": 2, "batch_size": "auto", "learning_rate_multiplier": 1.5},
        ),
    ],
    ids=["supervised", "dpo"],
)
async def test_create_job_with_every_field_is_spec_valid_and_typed(
    fake_openai: FakeOpenAI,
    client: FineTuningClient,
    method: dict[str, Any],
    expected_hyper: dict[str, Any],
) -> None:
    integrations = [
        {
            "type": "wandb",
            "wandb": {"project": "finetune-bot", "name": "run-1", "entity": None, "tags": ["slack"]},
        }
    ]
    job = await client.create_job(
        training_file="file-abc123",
        model=MODEL,
        validation_file="file-val456",
        suffix="support-v2",
        seed=42,
        method=method,
        integrations=integrations,
        metadata={"slack_user": "U123", "channel": "C42"},
    )

    sent = _only(fake_openai.requests_to(JOBS, "POST"))
    assert sent.status == 200
    assert sent.json == {
        "model": MODEL,
        "training_file": "file-abc123",
        "validation_file": "file-val456",
        "suffix": "support-v2",
        "seed": 42,
        "method": method,
        "integrations": integrations,
        "metadata": {"slack_user": "U123", "channel": "C42"},
    }
    assert sent.headers["content-type"].startswith("application/json")

    assert isinstance(job, FineTuningJob)
    assert job.id in fake_openai.jobs
    assert job.id.startswith("ftjob-")
    assert job.status == "validating_files"
    assert not job.is_terminal
    assert job.model == MODEL
    assert job.training_file == "file-abc123"
    assert job.validation_file == "file-val456"
    assert job.seed == 42
    assert job.metadata == {"slack_user": "U123", "channel": "C42"}
    assert job.method_type == method["type"]
    assert job.hyperparameters == expected_hyper
    assert isinstance(job.created_at, int)
    assert job.error is None
    assert job.fine_tuned_model is None
    assert job.finished_at is None
    assert job.result_files == ()
    assert job.raw["integrations"] == integrations
    assert fake_openai.schema_errors == []


async def test_create_job_with_deprecated_top_level_hyperparameters(
    fake_openai: FakeOpenAI, client: FineTuningClient
) -> None:
    hyper = {"n_epochs": 4, "batch_size": "auto", "learning_rate_multiplier": 2.0}
    job = await client.create_job(training_file="file-abc123", model=MODEL, hyperparameters=hyper)

    sent = _only(fake_openai.requests_to(JOBS, "POST"))
    assert sent.json == {"model": MODEL, "training_file": "file-abc123", "hyperparameters": hyper}
    assert job.hyperparameters == hyper
    assert job.method_type == "supervised"
    assert fake_openai.schema_errors == []


async def test_create_job_sends_only_the_fields_given(
    fake_openai: FakeOpenAI, client: FineTuningClient
) -> None:
    job = await client.create_job(training_file="file-abc123", model=MODEL, seed=0, metadata={})

    sent = _only(fake_openai.requests_to(JOBS, "POST"))
    # Falsy-but-set values are sent; unset ones are left out rather than sent as null.
    assert sent.json == {"model": MODEL, "training_file": "file-abc123", "seed": 0, "metadata": {}}
    assert job.seed == 0
    assert job.metadata == {}
    assert job.validation_file is None


async def test_list_jobs_walks_every_page_newest_first(
    fake_openai: FakeOpenAI, client: FineTuningClient
) -> None:
    base = int(time.time()) - 10_000
    created = [fake_openai.add_job(created_at=base + i)["id"] for i in range(25)]

    seen: list[str] = []
    pages: list[Page[FineTuningJob]] = []
    after: str | None = None
    while True:
        page = await client.list_jobs(after=after, limit=10)
        pages.append(page)
        seen.extend(job.id for job in page.data)
        if not page.has_more:
            break
        after = page.last_id
        assert after is not None

    assert [len(p.data) for p in pages] == [10, 10, 5]
    assert [p.has_more for p in pages] == [True, True, False]
    assert seen == list(reversed(created))  # newest first, each exactly once
    assert len(set(seen)) == 25

    sent = fake_openai.requests_to(JOBS, "GET")
    assert [r.query for r in sent] == [
        {"limit": "10"},
        {"limit": "10", "after": pages[0].last_id},
        {"limit": "10", "after": pages[1].last_id},
    ]
    assert fake_openai.schema_errors == []


async def test_list_jobs_metadata_filter(fake_openai: FakeOpenAI, client: FineTuningClient) -> None:
    mine = fake_openai.add_job(metadata={"team": "ml", "channel": "C1"})
    fake_openai.add_job(metadata={"team": "web"})
    fake_openai.add_job()

    page = await client.list_jobs(metadata={"team": "ml"}, limit=5)

    assert [j.id for j in page.data] == [mine["id"]]
    assert page.data[0].metadata == {"team": "ml", "channel": "C1"}
    assert page.has_more is False
    sent = _only(fake_openai.requests_to(JOBS, "GET"))
    assert sorted(sent.query_pairs) == [("limit", "5"), ("metadata[team]", "ml")]


async def test_query_values_are_encoded_not_injected(
    fake_openai: FakeOpenAI, client: FineTuningClient
) -> None:
    fake_openai.add_job(metadata={"team": "a&limit=1"})
    page = await client.list_jobs(metadata={"team": "a&limit=1"})
    assert len(page.data) == 1
    sent = _only(fake_openai.requests)
    assert sent.query_pairs == [("metadata[team]", "a&limit=1")]


async def test_list_jobs_empty(fake_openai: FakeOpenAI, client: FineTuningClient) -> None:
    page = await client.list_jobs()
    assert page.data == []
    assert page.has_more is False
    assert page.last_id is None
    assert _only(fake_openai.requests).query == {}


async def test_retrieve_job(fake_openai: FakeOpenAI, client: FineTuningClient) -> None:
    added = fake_openai.add_job(status="running", suffix="x")
    fake_openai.set_status(added["id"], "succeeded")

    job = await client.retrieve_job(added["id"])

    sent = _only(fake_openai.requests)
    assert (sent.method, sent.path, sent.query) == ("GET", f"/fine_tuning/jobs/{added['id']}", {})
    assert job.id == added["id"]
    assert job.status == "succeeded"
    assert job.is_terminal
    assert job.fine_tuned_model == fake_openai.job(added["id"])["fine_tuned_model"]
    assert job.trained_tokens == 12_345
    assert isinstance(job.finished_at, int)
    assert job.error is None


async def test_list_events_newest_first_with_after_and_limit(
    fake_openai: FakeOpenAI, client: FineTuningClient
) -> None:
    base = int(time.time()) - 1000
    job = fake_openai.add_job(created_at=base)  # adds "Created fine-tuning job" at `base`
    for i in range(1, 5):
        fake_openai.add_event(
            job["id"],
            f"Step {i}/4: training loss=0.{i}",
            data={"step": i},
            type="metrics",
            created_at=base + i,
        )
    expected = [e["id"] for e in fake_openai.events(job["id"])]
    assert len(expected) == 5

    first = await client.list_events(job["id"], limit=2)
    assert [e.id for e in first.data] == expected[:2]
    assert first.has_more is True
    newest = first.data[0]
    assert isinstance(newest, JobEvent)
    assert newest.message == "Step 4/4: training loss=0.4"
    assert newest.level == "info"
    assert newest.type == "metrics"
    assert newest.data == {"step": 4}
    assert newest.created_at == base + 4

    rest = await client.list_events(job["id"], after=first.last_id, limit=10)
    assert [e.id for e in rest.data] == expected[2:]
    assert rest.has_more is False
    assert rest.data[-1].message == f"Created fine-tuning job: {job['id']}"

    sent = fake_openai.requests_to(ONE_JOB + "/events", "GET")
    assert [r.query for r in sent] == [{"limit": "2"}, {"after": first.last_id, "limit": "10"}]


async def test_cancel_job(fake_openai: FakeOpenAI, client: FineTuningClient) -> None:
    added = fake_openai.add_job(status="running")

    job = await client.cancel_job(added["id"])

    assert job.status == "cancelled"
    assert job.is_terminal
    assert fake_openai.job(added["id"])["status"] == "cancelled"
    sent = _only(fake_openai.requests)
    assert (sent.method, sent.path) == ("POST", f"/fine_tuning/jobs/{added['id']}/cancel")
    assert sent.body == b""


async def test_pause_keeps_the_off_spec_status_and_resume_restores_running(
    fake_openai: FakeOpenAI, client: FineTuningClient
) -> None:
    added = fake_openai.add_job(status="running")

    paused = await client.pause_job(added["id"])
    assert paused.status == "paused"  # not in the spec's enum; kept as the plain string
    assert not paused.is_terminal

    resumed = await client.resume_job(added["id"])
    assert resumed.status == "running"

    assert [(r.method, r.path) for r in fake_openai.requests] == [
        ("POST", f"/fine_tuning/jobs/{added['id']}/pause"),
        ("POST", f"/fine_tuning/jobs/{added['id']}/resume"),
    ]
    assert fake_openai.schema_errors == []


async def test_list_checkpoints(fake_openai: FakeOpenAI, client: FineTuningClient) -> None:
    base = int(time.time()) - 100
    job = fake_openai.add_job(status="running")
    for step in (10, 20, 30):
        fake_openai.add_checkpoint(
            job["id"], step, metrics={"step": float(step), "train_loss": 1 / step}, created_at=base + step
        )

    first = await client.list_checkpoints(job["id"], limit=2)
    assert [c.step_number for c in first.data] == [30, 20]
    assert first.has_more is True
    top = first.data[0]
    assert isinstance(top, Checkpoint)
    assert top.id.startswith("ftckpt_")
    assert top.metrics == {"step": 30.0, "train_loss": 1 / 30}
    assert top.fine_tuned_model_checkpoint.endswith(":ckpt-step-30")
    assert top.created_at == base + 30

    rest = await client.list_checkpoints(job["id"], after=first.last_id)
    assert [c.step_number for c in rest.data] == [10]
    assert rest.has_more is False

    sent = fake_openai.requests_to(ONE_JOB + "/checkpoints", "GET")
    assert [r.query for r in sent] == [{"limit": "2"}, {"after": first.last_id}]


async def test_list_files_defaults_to_fine_tune_purpose(
    fake_openai: FakeOpenAI, client: FineTuningClient
) -> None:
    fake_openai.add_file("assistant.pdf", b"%PDF", purpose="assistants")

    page = await client.list_files()

    assert [f.id for f in page.data] == ["file-val456", "file-abc123"]  # newest first by default
    assert page.has_more is False
    first = page.data[0]
    assert isinstance(first, OpenAIFile)
    assert (first.filename, first.purpose) == ("validation.jsonl", "fine-tune")
    assert first.bytes == fake_openai.files["file-val456"]["bytes"]
    assert isinstance(first.created_at, int)
    assert _only(fake_openai.requests).query == {"purpose": "fine-tune"}


async def test_list_files_order_after_limit_and_any_purpose(
    fake_openai: FakeOpenAI, client: FineTuningClient
) -> None:
    other = fake_openai.add_file("assistant.pdf", b"%PDF", purpose="assistants")

    asc = await client.list_files(order="asc", limit=1)
    assert [f.id for f in asc.data] == ["file-abc123"]
    assert asc.has_more is True
    nxt = await client.list_files(order="asc", after=asc.last_id)
    assert [f.id for f in nxt.data] == ["file-val456"]
    assert nxt.has_more is False
    every = await client.list_files(purpose=None)
    assert [f.id for f in every.data] == [other["id"], "file-val456", "file-abc123"]

    assert [r.query for r in fake_openai.requests_to(r"/files", "GET")] == [
        {"purpose": "fine-tune", "order": "asc", "limit": "1"},
        {"purpose": "fine-tune", "order": "asc", "after": "file-abc123"},
        {},
    ]


# -- 2. headers --------------------------------------------------------------------------------


async def test_auth_organization_and_project_headers(
    fake_openai: FakeOpenAI, client: FineTuningClient
) -> None:
    await client.list_jobs()
    sent = _only(fake_openai.requests)
    assert sent.headers["authorization"] == f"Bearer {fake_openai.api_key}"
    assert sent.organization == "org-fake"
    assert sent.project == "proj_fake"
    assert sent.headers["accept"] == "application/json"


@pytest.mark.parametrize("blank", [None, ""])
async def test_organization_and_project_left_out_when_not_configured(
    fake_openai: FakeOpenAI, make_client: MakeClient, blank: str | None
) -> None:
    client = make_client(organization=blank, project=blank)
    await client.list_jobs()
    sent = _only(fake_openai.requests)
    assert sent.headers["authorization"] == f"Bearer {fake_openai.api_key}"
    assert "openai-organization" not in sent.headers
    assert "openai-project" not in sent.headers


async def test_idempotency_key_same_across_retries_and_new_per_call(
    fake_openai: FakeOpenAI, client: FineTuningClient
) -> None:
    fake_openai.fail_next(503, path=JOBS, method="POST", times=2)
    first = await client.create_job(training_file="file-abc123", model=MODEL)
    second = await client.create_job(training_file="file-abc123", model=MODEL)
    assert first.id != second.id

    posts = fake_openai.requests_to(JOBS, "POST")
    assert [r.status for r in posts] == [503, 503, 200, 200]
    keys = [r.headers.get("idempotency-key") for r in posts]
    assert all(keys), keys
    assert keys[0] == keys[1] == keys[2]  # one call, three attempts, one key
    assert keys[3] != keys[0]  # a new call gets a new key
    assert len(fake_openai.jobs) == 2

    job_id = first.id
    await client.cancel_job(job_id)
    cancel_key = _only(fake_openai.requests_to(ONE_JOB + "/cancel", "POST")).headers.get("idempotency-key")
    assert cancel_key
    assert cancel_key not in keys


async def test_gets_carry_no_idempotency_key(fake_openai: FakeOpenAI, client: FineTuningClient) -> None:
    job = fake_openai.add_job(status="running")
    fake_openai.fail_next(500, method="GET")
    await client.list_jobs()
    await client.retrieve_job(job["id"])
    await client.list_events(job["id"])
    await client.list_checkpoints(job["id"])
    await client.list_files()

    gets = fake_openai.requests
    assert len(gets) == 6  # one retried
    assert all(r.method == "GET" for r in gets)
    assert all("idempotency-key" not in r.headers for r in gets)


# -- 3. typed results are tolerant ---------------------------------------------------------------


def _job_json(job_id: str, **overrides: Any) -> dict[str, Any]:
    job: dict[str, Any] = {
        "object": "fine_tuning.job",
        "id": job_id,
        "model": MODEL,
        "created_at": 1_700_000_000,
        "finished_at": None,
        "fine_tuned_model": None,
        "organization_id": "org-fake",
        "result_files": [],
        "status": "running",
        "validation_file": None,
        "training_file": "file-abc123",
        "hyperparameters": {"n_epochs": 3, "batch_size": 1, "learning_rate_multiplier": 2.0},
        "trained_tokens": None,
        "error": None,
        "seed": 7,
    }
    job.update(overrides)
    return job


async def test_unknown_fields_and_statuses_are_tolerated(
    fake_openai: FakeOpenAI, client: FineTuningClient
) -> None:
    # Served raw (a 200 fault skips the fake's schema check): the API growing beyond the spec.
    body = _job_json(
        "ftjob-future",
        status="frobnicating",
        shiny_new_field={"nested": [1, 2, 3]},
        method={"type": "reinforcement", "reinforcement": {"hyperparameters": {"eval_interval": 5}}},
        metadata=None,
        estimated_finish=1_700_000_900,
    )
    fake_openai.fail_next(200, path=r"/fine_tuning/jobs/ftjob-future", method="GET", body=body)

    job = await client.retrieve_job("ftjob-future")

    assert job.status == "frobnicating"
    assert not job.is_terminal
    assert job.method_type == "reinforcement"
    assert job.hyperparameters == {"eval_interval": 5}
    assert job.metadata == {}
    assert job.estimated_finish == 1_700_000_900
    assert job.raw["shiny_new_field"] == {"nested": [1, 2, 3]}


async def test_list_items_tolerate_unknown_fields(fake_openai: FakeOpenAI, client: FineTuningClient) -> None:
    body = {
        "object": "list",
        "data": [
            {
                "object": "fine_tuning.job.event",
                "id": "ftevent-1",
                "created_at": 1,
                "level": "warn",
                "message": "hello",
                "type": "message",
                "brand_new": True,
            },
            "not-an-object",
        ],
        "has_more": False,
        "cursor_of_the_future": "x",
    }
    fake_openai.fail_next(200, path=ONE_JOB + "/events", body=body)

    page = await client.list_events("ftjob-abc")

    assert [(e.id, e.level, e.message) for e in page.data] == [("ftevent-1", "warn", "hello")]
    assert page.data[0].raw["brand_new"] is True
    assert page.data[0].data == {}


async def test_list_without_data_is_a_server_error(fake_openai: FakeOpenAI, client: FineTuningClient) -> None:
    fake_openai.fail_next(200, path=JOBS, method="GET", body={"object": "list", "has_more": False})
    with pytest.raises(ServerError):
        await client.list_jobs()


async def test_succeeded_job_with_all_null_error_has_no_error(
    fake_openai: FakeOpenAI, client: FineTuningClient
) -> None:
    body = _job_json(
        "ftjob-done",
        status="succeeded",
        fine_tuned_model=f"ft:{MODEL}:org-fake::done",
        finished_at=1_700_000_500,
        trained_tokens=999,
        result_files=["file-result1"],
        error={"code": None, "message": None, "param": None},
    )
    fake_openai.fail_next(200, path=r"/fine_tuning/jobs/ftjob-done", body=body)

    job = await client.retrieve_job("ftjob-done")

    assert job.error is None
    assert job.status == "succeeded"
    assert job.is_terminal
    assert job.fine_tuned_model == f"ft:{MODEL}:org-fake::done"
    assert job.trained_tokens == 999
    assert job.result_files == ("file-result1",)
    assert job.hyperparameters == {"n_epochs": 3, "batch_size": 1, "learning_rate_multiplier": 2.0}


async def test_failed_job_has_error_code_and_message(
    fake_openai: FakeOpenAI, client: FineTuningClient
) -> None:
    added = fake_openai.add_job(status="running")
    fake_openai.set_status(
        added["id"],
        "failed",
        error={"code": "invalid_training_file", "message": "Line 3 is not JSON.", "param": "training_file"},
    )

    job = await client.retrieve_job(added["id"])

    assert job.status == "failed"
    assert job.is_terminal
    assert job.error is not None
    assert job.error.code == "invalid_training_file"
    assert job.error.message == "Line 3 is not JSON."
    assert job.error.param == "training_file"


def test_from_api_direct_edge_cases() -> None:
    bare = FineTuningJob.from_api({"id": "ftjob-x"})
    assert (bare.status, bare.model, bare.created_at, bare.error) == ("unknown", "", None, None)
    assert bare.hyperparameters == {}
    # A bool is not an int, even though Python says it is.
    assert FineTuningJob.from_api({"id": "ftjob-x", "created_at": True, "seed": False}).seed is None
    half = FineTuningJob.from_api({"id": "ftjob-x", "error": {"code": "oops", "message": None}})
    assert half.error is not None
    assert half.error.code == "oops"


# -- 4. error mapping --------------------------------------------------------------------------


async def test_400_from_the_api_keeps_message_param_and_code(
    fake_openai: FakeOpenAI, client: FineTuningClient
) -> None:
    with pytest.raises(BadRequestError) as info:
        await client.create_job(training_file="file-nope", model=MODEL)

    error = info.value
    assert error.status == 400
    assert error.message == "invalid training_file: file-nope"
    assert str(error) == error.message
    assert error.param == "training_file"
    assert error.code == "invalid_training_file"
    assert error.type == "invalid_request_error"
    assert len(fake_openai.requests) == 1


async def test_400_cancelling_a_finished_job(fake_openai: FakeOpenAI, client: FineTuningClient) -> None:
    added = fake_openai.add_job(status="running")
    fake_openai.set_status(added["id"], "succeeded")
    with pytest.raises(BadRequestError) as info:
        await client.cancel_job(added["id"])
    assert info.value.code == "invalid_job_status"
    assert "already succeeded" in info.value.message
    assert len(fake_openai.requests) == 1


async def test_401_wrong_key(fake_openai: FakeOpenAI, make_client: MakeClient) -> None:
    bad_key = "sk-wrong-key-1234567890abcdef"
    client = make_client(api_key=bad_key)
    with pytest.raises(AuthenticationError) as info:
        await client.list_jobs()
    assert info.value.status == 401
    assert info.value.code == "invalid_api_key"
    assert bad_key not in info.value.message
    assert _only(fake_openai.requests).headers["authorization"] == f"Bearer {bad_key}"


async def test_404_unknown_job_is_not_retried(fake_openai: FakeOpenAI, client: FineTuningClient) -> None:
    with pytest.raises(NotFoundError) as info:
        await client.retrieve_job("ftjob-doesnotexist")
    assert info.value.status == 404
    assert info.value.code == "fine_tune_not_found"
    assert info.value.param == "fine_tune_id"
    assert "ftjob-doesnotexist" in info.value.message
    assert len(fake_openai.requests) == 1


@pytest.mark.parametrize(
    ("status", "error_type"),
    [
        (400, BadRequestError),
        (401, AuthenticationError),
        (403, PermissionDeniedError),
        (404, NotFoundError),
        (422, BadRequestError),
    ],
)
async def test_client_errors_are_mapped_and_not_retried(
    fake_openai: FakeOpenAI, client: FineTuningClient, sleeps: RecordingSleep, status: int, error_type: type
) -> None:
    fake_openai.fail_next(status, headers={"x-request-id": "req_123"})
    with pytest.raises(error_type) as info:
        await client.list_jobs()
    assert info.value.status == status
    assert info.value.request_id == "req_123"
    assert len(fake_openai.requests) == 1
    assert sleeps.calls == []


async def test_403_carries_openai_code(fake_openai: FakeOpenAI, client: FineTuningClient) -> None:
    fake_openai.fail_next(403)
    with pytest.raises(PermissionDeniedError) as info:
        await client.retrieve_job("ftjob-abc")
    assert info.value.code == "unsupported_country_region_territory"
    assert info.value.message == "Country, region, or territory not supported"


@pytest.mark.parametrize(
    ("status", "error_type"),
    [
        (409, ConflictError),
        (429, RateLimitError),
        (500, ServerError),
        (502, ServerError),
        (503, ServerError),
        (504, ServerError),
    ],
)
async def test_retryable_statuses_are_retried_then_raised(
    fake_openai: FakeOpenAI, client: FineTuningClient, sleeps: RecordingSleep, status: int, error_type: type
) -> None:
    fake_openai.fail_next(status, times=3)
    with pytest.raises(error_type) as info:
        await client.list_jobs()
    assert type(info.value) is error_type  # 429 rate limit is not the quota subclass
    assert info.value.status == status
    assert [r.status for r in fake_openai.requests] == [status] * 3
    assert len(sleeps.calls) == 2
    assert all(0 <= d <= FAST.max_delay for d in sleeps.calls)
    assert fake_openai.pending_faults == []


async def test_insufficient_quota_is_not_retried(
    fake_openai: FakeOpenAI, client: FineTuningClient, sleeps: RecordingSleep
) -> None:
    body = {
        "error": {
            "message": "You exceeded your current quota, please check your plan and billing details.",
            "type": "insufficient_quota",
            "param": None,
            "code": "insufficient_quota",
        }
    }
    fake_openai.fail_next(429, body=body, times=3, retry_after=1)
    with pytest.raises(QuotaExceededError) as info:
        await client.create_job(training_file="file-abc123", model=MODEL)
    assert isinstance(info.value, RateLimitError)
    assert info.value.code == "insufficient_quota"
    assert "quota" in info.value.message
    assert len(fake_openai.requests) == 1
    assert sleeps.calls == []
    assert fake_openai.jobs == {}


async def test_retry_after_seconds_is_honoured(
    fake_openai: FakeOpenAI, client: FineTuningClient, sleeps: RecordingSleep
) -> None:
    fake_openai.fail_next(429, retry_after=2)
    page = await client.list_jobs()
    assert page.data == []
    assert sleeps.calls == [2.0]
    assert [r.status for r in fake_openai.requests] == [429, 200]


async def test_retry_after_http_date_is_honoured(
    fake_openai: FakeOpenAI, client: FineTuningClient, sleeps: RecordingSleep
) -> None:
    when = email.utils.formatdate(time.time() + 3, usegmt=True)
    fake_openai.fail_next(503, headers={"Retry-After": when})
    await client.list_jobs()
    assert len(sleeps.calls) == 1
    assert 1.0 < sleeps.calls[0] <= 3.0
    assert len(fake_openai.requests) == 2


async def test_html_error_page_is_a_server_error(fake_openai: FakeOpenAI, client: FineTuningClient) -> None:
    fake_openai.fail_next(kind="html", times=3)
    with pytest.raises(ServerError) as info:
        await client.list_jobs()
    assert info.value.status == 502
    assert "<html" not in info.value.message
    assert [r.fault for r in fake_openai.requests] == ["html"] * 3


async def test_invalid_json_on_200_is_a_server_error(
    fake_openai: FakeOpenAI, client: FineTuningClient
) -> None:
    fake_openai.fail_next(kind="invalid_json")
    with pytest.raises(ServerError) as info:
        await client.retrieve_job("ftjob-abc")
    assert info.value.status == 200
    assert fake_openai.requests[0].fault == "invalid_json"


async def test_dropped_connection_becomes_unavailable_after_three_attempts(
    fake_openai: FakeOpenAI, client: FineTuningClient, sleeps: RecordingSleep
) -> None:
    fake_openai.fail_next(kind="close", times=3)
    with pytest.raises(UnavailableError) as info:
        await client.create_job(training_file="file-abc123", model=MODEL)
    assert fake_openai.api_key not in info.value.message
    posts = fake_openai.requests
    assert [r.fault for r in posts] == ["close"] * 3
    assert len({r.headers["idempotency-key"] for r in posts}) == 1
    assert len(sleeps.calls) == 2
    assert fake_openai.jobs == {}


async def test_hang_with_short_timeout_becomes_unavailable(
    fake_openai: FakeOpenAI, make_client: MakeClient, sleeps: RecordingSleep
) -> None:
    fake_openai.fail_next(kind="hang", times=3)
    async with build_http_client(timeout=0.2) as short:
        client = make_client(http_client=short)
        with pytest.raises(UnavailableError):
            await client.list_jobs()
    assert [r.fault for r in fake_openai.requests] == ["hang"] * 3
    assert len(sleeps.calls) == 2


async def test_transient_503_then_success(
    fake_openai: FakeOpenAI, client: FineTuningClient, sleeps: RecordingSleep
) -> None:
    job = fake_openai.add_job(status="queued")
    fake_openai.fail_next(503, path=ONE_JOB)
    result = await client.retrieve_job(job["id"])
    assert result.id == job["id"]
    assert result.status == "queued"
    assert [r.status for r in fake_openai.requests] == [503, 200]
    assert len(sleeps.calls) == 1


async def test_corrupt_content_encoding_stays_inside_the_error_hierarchy(
    fake_openai: FakeOpenAI, client: FineTuningClient
) -> None:
    fake_openai.fail_next(200, headers={"Content-Encoding": "gzip"}, body={"object": "list"}, times=3)
    with pytest.raises(OpenAIError):
        await client.list_jobs()


async def test_transient_failure_with_real_sleep(fake_openai: FakeOpenAI, http: httpx.AsyncClient) -> None:
    client = FineTuningClient(
        http,
        api_key=fake_openai.api_key,
        base_url=fake_openai.base_url,
        retry=RetryPolicy(base_delay=0.01, max_delay=0.02),
    )
    fake_openai.fail_next(502, times=2)
    page = await client.list_files()
    assert len(page.data) == 2
    assert [r.status for r in fake_openai.requests] == [502, 502, 200]


def test_error_hierarchy() -> None:
    for cls in (
        BadRequestError,
        AuthenticationError,
        PermissionDeniedError,
        NotFoundError,
        ConflictError,
        RateLimitError,
        ServerError,
        UnavailableError,
    ):
        assert issubclass(cls, OpenAIError)
    assert issubclass(QuotaExceededError, RateLimitError)


# -- 5. the time budget ------------------------------------------------------------------------


async def test_retry_after_beyond_the_budget_gives_up_at_once(
    fake_openai: FakeOpenAI, make_client: MakeClient, sleeps: RecordingSleep
) -> None:
    client = make_client(retry=RetryPolicy(base_delay=0.01, total_budget=5.0))
    fake_openai.fail_next(429, retry_after=30, times=3)
    with pytest.raises(RateLimitError) as info:
        await client.create_job(training_file="file-abc123", model=MODEL)
    assert info.value.status == 429
    assert sleeps.calls == []
    assert len(fake_openai.requests) == 1


async def test_retry_after_within_the_budget_is_waited(
    fake_openai: FakeOpenAI, make_client: MakeClient, sleeps: RecordingSleep
) -> None:
    client = make_client(retry=RetryPolicy(base_delay=0.01, total_budget=5.0))
    fake_openai.fail_next(429, retry_after=1.5)
    await client.list_jobs()
    assert sleeps.calls == [1.5]
    assert len(fake_openai.requests) == 2


async def test_attempt_timeout_is_capped_by_the_budget(
    fake_openai: FakeOpenAI, make_client: MakeClient, sleeps: RecordingSleep
) -> None:
    # The http client allows 15 s per read; the 1 s budget must win.
    client = make_client(retry=RetryPolicy(base_delay=0.01, total_budget=1.0))
    fake_openai.fail_next(kind="hang", times=3)
    started = time.monotonic()
    with pytest.raises(UnavailableError):
        await client.list_jobs()
    elapsed = time.monotonic() - started
    assert elapsed < 10, elapsed  # sanity bound only, far below the 15 s read timeout
    assert len(fake_openai.requests) == 1  # nothing left of the budget for a second attempt
    assert sleeps.calls == []


# -- 6. path safety ----------------------------------------------------------------------------


def _unsafe_calls() -> list[tuple[str, Callable[[FineTuningClient], Awaitable[Any]]]]:
    return [
        ("retrieve ../../files", lambda c: c.retrieve_job("../../files")),
        ("cancel traversal", lambda c: c.cancel_job("ftjob-abc/../x")),
        ("events query", lambda c: c.list_events("ftjob-a?x=1")),
        ("create training traversal", lambda c: c.create_job(training_file="file-x/../", model=MODEL)),
        (
            "create validation traversal",
            lambda c: c.create_job(training_file="file-abc123", validation_file="../files", model=MODEL),
        ),
        ("retrieve trailing newline", lambda c: c.retrieve_job("ftjob-abc\n")),
        ("retrieve fragment", lambda c: c.retrieve_job("ftjob-abc#x")),
        ("retrieve empty", lambda c: c.retrieve_job("")),
        ("pause encoded slash", lambda c: c.pause_job("ftjob-a%2F..")),
        ("resume space", lambda c: c.resume_job("ftjob-a b")),
        ("checkpoints traversal", lambda c: c.list_checkpoints("ftjob-a/../../files")),
        ("events bad cursor", lambda c: c.list_events("ftjob-abc", after="x/../y")),
        ("checkpoints bad cursor", lambda c: c.list_checkpoints("ftjob-abc", after="a&limit=1")),
        ("jobs bad after", lambda c: c.list_jobs(after="../x")),
        ("files bad after", lambda c: c.list_files(after="file-a?b")),
        ("files bad order", lambda c: c.list_files(order="random")),
    ]


@pytest.mark.parametrize(("name", "call"), _unsafe_calls(), ids=[n for n, _ in _unsafe_calls()])
async def test_unsafe_ids_raise_value_error_and_send_nothing(
    fake_openai: FakeOpenAI,
    client: FineTuningClient,
    name: str,
    call: Callable[[FineTuningClient], Awaitable[Any]],
) -> None:
    with pytest.raises(ValueError):
        await call(client)
    assert fake_openai.requests == []


# -- 7. parse_retry_after ----------------------------------------------------------------------

NOW = 1_445_412_480.0  # Wed, 21 Oct 2015 07:28:00 GMT


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2", 2.0),
        ("0", 0.0),
        (" 7 ", 7.0),
        ("1.5", 1.5),
        ("0.25", 0.25),
        ("-3", 0.0),
        ("-0.5", 0.0),
        ("Wed, 21 Oct 2015 07:28:30 GMT", 30.0),
        ("Wed, 21 Oct 2015 07:29:00 GMT", 60.0),
        ("Wed, 21 Oct 2015 07:27:00 GMT", 0.0),  # in the past
        ("soon", None),
        ("5 seconds", None),
        ("", None),
        ("   ", None),
        (None, None),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, now=NOW) == expected


def test_parse_retry_after_date_uses_the_clock_without_now() -> None:
    when = email.utils.formatdate(time.time() + 100, usegmt=True)
    delay = parse_retry_after(when)
    assert delay is not None
    assert 98.0 <= delay <= 100.0


@pytest.mark.skipif(not hasattr(time, "tzset"), reason="needs time.tzset (POSIX)")
def test_parse_retry_after_asctime_date_is_gmt_whatever_the_local_zone() -> None:
    old = os.environ.get("TZ")
    os.environ["TZ"] = "EST5"  # POSIX rule: UTC-5, no tzdata needed
    time.tzset()
    try:
        assert parse_retry_after("Wed Oct 21 07:28:30 2015", now=NOW) == 30.0
    finally:
        if old is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = old
        time.tzset()
