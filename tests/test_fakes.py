"""Tests of the fake servers themselves, over real HTTP, so bot tests can trust them."""

from __future__ import annotations

import asyncio
import time
from typing import Any
from urllib.parse import urlencode

import aiohttp
import httpx
import pytest
from jsonschema import Draft202012Validator
from slack_sdk.errors import SlackApiError
from slack_sdk.signature import SignatureVerifier
from slack_sdk.socket_mode.aiohttp import SocketModeClient
from slack_sdk.socket_mode.request import SocketModeRequest
from slack_sdk.socket_mode.response import SocketModeResponse
from slack_sdk.web.async_client import AsyncWebClient

from tests.fakes import FakeOpenAI, FakeSlack, sign_slack_request
from tests.fakes.openapi_spec import convert_schema, load_spec


def _client(fake: FakeOpenAI, **kwargs: Any) -> httpx.Client:
    headers = {"Authorization": f"Bearer {fake.api_key}", **kwargs.pop("headers", {})}
    return httpx.Client(base_url=fake.base_url, headers=headers, timeout=kwargs.pop("timeout", 5.0), **kwargs)


def _error(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


# -- spec conversion -------------------------------------------------------------------------------


def test_converter_produces_valid_2020_12_schemas() -> None:
    spec = load_spec()
    for name, schema in spec.components.items():
        Draft202012Validator.check_schema(schema)
        assert "nullable" not in str(schema), name
    assert convert_schema({"type": "number", "minimum": 0, "exclusiveMinimum": True}) == {
        "type": "number",
        "exclusiveMinimum": 0,
    }
    assert convert_schema(
        {"type": "string", "nullable": True, "enum": ["a"], "x-foo": 1, "example": "a"}
    ) == {
        "type": ["string", "null"],
        "enum": ["a", None],
    }
    hyper = spec.component_validator("FineTuneSupervisedHyperparameters")
    assert not hyper.is_valid({"learning_rate_multiplier": 0})  # exclusiveMinimum really applies
    assert hyper.is_valid({"learning_rate_multiplier": 0.1, "n_epochs": "auto"})


# -- FakeOpenAI: request validation ----------------------------------------------------------------


def test_openai_requires_bearer_api_key(fake_openai: FakeOpenAI) -> None:
    missing = httpx.get(f"{fake_openai.base_url}/fine_tuning/jobs")
    assert missing.status_code == 401
    assert _error(missing)["code"] == "invalid_api_key"
    wrong = httpx.get(
        f"{fake_openai.base_url}/fine_tuning/jobs", headers={"Authorization": "Bearer sk-nope-123456"}
    )
    assert wrong.status_code == 401
    assert "Incorrect API key" in _error(wrong)["message"]
    assert [r.status for r in fake_openai.requests_to("/fine_tuning/jobs", "GET")] == [401, 401]


def test_openai_unknown_path_or_method_is_404(fake_openai: FakeOpenAI) -> None:
    with _client(fake_openai) as client:
        for response in (client.get("/fine_tuning/nope"), client.delete("/fine_tuning/jobs")):
            assert response.status_code == 404
            assert _error(response)["message"].startswith("Invalid URL")


def test_openai_rejects_unknown_and_invalid_body_fields(fake_openai: FakeOpenAI) -> None:
    with _client(fake_openai) as client:
        unknown = client.post(
            "/fine_tuning/jobs", json={"model": "gpt-4o-mini", "training_file": "file-abc123", "epochs": 3}
        )
        assert unknown.status_code == 400
        assert _error(unknown)["param"] == "epochs"
        assert "epochs" in _error(unknown)["message"]

        missing = client.post("/fine_tuning/jobs", json={"model": "gpt-4o-mini"})
        assert _error(missing)["message"] == "Missing required parameter: 'training_file'."

        bad_epochs = client.post(
            "/fine_tuning/jobs",
            json={
                "model": "gpt-4o-mini",
                "training_file": "file-abc123",
                "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 0}}},
            },
        )
        assert bad_epochs.status_code == 400
        assert _error(bad_epochs)["param"] == "method.supervised.hyperparameters.n_epochs"

        no_file = client.post("/fine_tuning/jobs", json={"model": "gpt-4o-mini", "training_file": "file-xyz"})
        assert no_file.status_code == 400
        assert _error(no_file) == {
            "message": "invalid training_file: file-xyz",
            "type": "invalid_request_error",
            "param": "training_file",
            "code": "invalid_training_file",
        }
    assert fake_openai.jobs == {}


def test_openai_validates_query_parameters(fake_openai: FakeOpenAI) -> None:
    with _client(fake_openai) as client:
        not_int = client.get("/fine_tuning/jobs", params={"limit": "ten"})
        assert not_int.status_code == 400
        assert _error(not_int)["code"] == "invalid_type"
        too_big = client.get("/fine_tuning/jobs", params={"limit": 101})
        assert _error(too_big)["code"] == "integer_above_max_value"
        unknown = client.get("/fine_tuning/jobs", params={"page": 2})
        assert (unknown.status_code, _error(unknown)["param"]) == (400, "page")
        bad_order = client.get("/files", params={"order": "sideways"})
        assert (bad_order.status_code, _error(bad_order)["param"]) == (400, "order")


# -- FakeOpenAI: behaviour -------------------------------------------------------------------------


def test_openai_job_roundtrip_is_spec_valid(fake_openai: FakeOpenAI) -> None:
    spec = fake_openai.spec
    with _client(
        fake_openai, headers={"OpenAI-Organization": "org-acme", "OpenAI-Project": "proj_1"}
    ) as client:
        created = client.post(
            "/fine_tuning/jobs",
            json={
                "model": "gpt-4o-mini",
                "training_file": "file-abc123",
                "validation_file": "file-val456",
                "suffix": "acme",
                "metadata": {"slack_user": "U123"},
                "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 3}}},
            },
        )
        assert created.status_code == 200, created.text
        job = created.json()
        assert spec.component_errors("FineTuningJob", job) == []
        assert job["id"].startswith("ftjob-") and len(job["id"]) == len("ftjob-") + 24
        assert job["status"] == "validating_files"
        assert job["hyperparameters"] == {
            "batch_size": "auto",
            "learning_rate_multiplier": "auto",
            "n_epochs": 3,
        }
        assert job["method"]["supervised"]["hyperparameters"]["n_epochs"] == 3
        assert job["organization_id"] == "org-fake"
        assert isinstance(job["seed"], int)

        listed = client.get("/fine_tuning/jobs").json()
        assert spec.component_errors("ListPaginatedFineTuningJobsResponse", listed) == []
        assert [j["id"] for j in listed["data"]] == [job["id"]]

        assert client.get(f"/fine_tuning/jobs/{job['id']}").json() == job
        missing = client.get("/fine_tuning/jobs/ftjob-missing")
        assert missing.status_code == 404
        assert _error(missing)["code"] == "fine_tune_not_found"

        events = client.get(f"/fine_tuning/jobs/{job['id']}/events").json()
        assert spec.component_errors("ListFineTuningJobEventsResponse", events) == []
        assert [e["message"] for e in events["data"]] == [
            "Validating training file: file-abc123",
            f"Created fine-tuning job: {job['id']}",
        ]

        cancelled = client.post(f"/fine_tuning/jobs/{job['id']}/cancel").json()
        assert cancelled["status"] == "cancelled"
        assert cancelled["finished_at"] is not None
        again = client.post(f"/fine_tuning/jobs/{job['id']}/cancel")
        assert again.status_code == 400
        assert "already cancelled" in _error(again)["message"]

    create = fake_openai.requests_to("/fine_tuning/jobs", "POST")[0]
    assert (create.organization, create.project) == ("org-acme", "proj_1")
    assert create.json["suffix"] == "acme"
    assert create.headers["openai-organization"] == "org-acme"
    assert fake_openai.job(job["id"])["status"] == "cancelled"


def test_openai_pagination_is_newest_first(fake_openai: FakeOpenAI) -> None:
    base = 1_700_000_000
    ids = [fake_openai.add_job(created_at=base + i, metadata={"n": str(i % 2)})["id"] for i in range(25)]
    newest_first = ids[::-1]
    with _client(fake_openai) as client:
        first = client.get("/fine_tuning/jobs").json()
        assert [j["id"] for j in first["data"]] == newest_first[:20]
        assert first["has_more"] is True
        rest = client.get("/fine_tuning/jobs", params={"after": first["data"][-1]["id"]}).json()
        assert [j["id"] for j in rest["data"]] == newest_first[20:]
        assert rest["has_more"] is False
        small = client.get("/fine_tuning/jobs", params={"limit": 5, "after": newest_first[4]}).json()
        assert [j["id"] for j in small["data"]] == newest_first[5:10]
        odd = client.get("/fine_tuning/jobs", params={"metadata[n]": "1", "limit": 100}).json()
        assert [j["id"] for j in odd["data"]] == [ids[i] for i in reversed(range(25)) if i % 2 == 1]


def test_openai_status_helpers_and_pause_resume(fake_openai: FakeOpenAI) -> None:
    job = fake_openai.add_job(status="running", suffix="acme", model="gpt-4o-mini-2024-07-18")
    with _client(fake_openai) as client:
        paused = client.post(f"/fine_tuning/jobs/{job['id']}/pause")
        assert paused.status_code == 200, paused.text
        assert paused.json()["status"] == "paused"  # outside the spec enum, as the spec example shows
        assert client.post(f"/fine_tuning/jobs/{job['id']}/pause").status_code == 400
        assert client.post(f"/fine_tuning/jobs/{job['id']}/resume").json()["status"] == "running"

    done = fake_openai.set_status(job["id"], "succeeded")
    assert done["fine_tuned_model"] == f"ft:gpt-4o-mini-2024-07-18:org-fake:acme:{job['id'][-8:]}"
    assert done["finished_at"] is not None and done["trained_tokens"]
    failed = fake_openai.set_status(
        fake_openai.add_job()["id"], "failed", error={"code": "invalid_file", "message": "bad", "param": None}
    )
    assert failed["error"]["message"] == "bad"
    assert fake_openai.events(failed["id"])[0]["level"] == "error"
    assert fake_openai.webhook_payload(failed["id"])["type"] == "fine_tuning.job.failed"
    event = fake_openai.add_event(
        job["id"], "Step 10/100: training loss=0.5", type="metrics", data={"step": 10}
    )
    assert fake_openai.events(job["id"])[0] == event
    with pytest.raises(ValueError, match="FineTuningJob"):
        fake_openai.set_status(job["id"], "failed", error={"message": "no code"})
    with pytest.raises(TypeError, match="suffixx"):
        fake_openai.add_job(suffixx="typo")
    with pytest.raises(ValueError, match="FineTuningJobEvent"):
        fake_openai.add_event(job["id"], "x", level="debug")


def test_openai_files_endpoints(fake_openai: FakeOpenAI) -> None:
    with _client(fake_openai) as client:
        listed = client.get("/files").json()
        assert [f["id"] for f in listed["data"]] == ["file-val456", "file-abc123"]
        assert (listed["first_id"], listed["last_id"], listed["has_more"]) == (
            "file-val456",
            "file-abc123",
            False,
        )
        assert (
            client.get("/files", params={"order": "asc", "limit": 1}).json()["data"][0]["id"] == "file-abc123"
        )
        assert client.get("/files/file-abc123").json()["filename"] == "training.jsonl"
        assert client.get("/files/file-abc123/content").content.startswith(b'{"messages"')
        uploaded = client.post(
            "/files", data={"purpose": "fine-tune"}, files={"file": ("more.jsonl", b'{"messages": []}\n')}
        ).json()
        assert (uploaded["filename"], uploaded["bytes"]) == ("more.jsonl", 17)
        assert fake_openai.requests_to("/files", "POST")[0].form == {
            "purpose": "fine-tune",
            "file": "<file more.jsonl>",
        }
        assert client.delete(f"/files/{uploaded['id']}").json() == {
            "id": uploaded["id"],
            "object": "file",
            "deleted": True,
        }
        assert client.get(f"/files/{uploaded['id']}").status_code == 404
        empty = client.get("/files", params={"purpose": "batch"}).json()
        assert (empty["data"], empty["first_id"]) == ([], None)


def test_openai_fault_injection(fake_openai: FakeOpenAI) -> None:
    fake_openai.fail_next(429, path="/fine_tuning/jobs", method="GET", retry_after=2, times=2)
    fake_openai.fail_next(kind="html")
    fake_openai.fail_next(kind="invalid_json")
    fake_openai.fail_next(503, body={"error": "custom"}, headers={"X-Request-Id": "req_1"})
    with _client(fake_openai) as client:
        # Faults are consumed in order, skipping those scoped to another path: html comes first here.
        html = client.get("/files")
        assert (html.status_code, html.headers["content-type"]) == (502, "text/html")
        for _ in range(2):
            limited = client.get("/fine_tuning/jobs")
            assert limited.status_code == 429
            assert limited.headers["Retry-After"] == "2"
            assert _error(limited)["code"] == "rate_limit_exceeded"
        bad = client.get("/fine_tuning/jobs")
        assert (bad.status_code, bad.text) == (200, "{not json")
        custom = client.get("/fine_tuning/jobs")
        assert (custom.status_code, custom.json()) == (503, {"error": "custom"})
        assert custom.headers["X-Request-Id"] == "req_1"
        assert client.get("/fine_tuning/jobs").status_code == 200
    assert fake_openai.pending_faults == []
    assert [r.fault for r in fake_openai.requests] == [
        "html",
        "status",
        "status",
        "invalid_json",
        "status",
        None,
    ]


def test_openai_close_and_hang_faults(fake_openai: FakeOpenAI) -> None:
    fake_openai.fail_next(kind="close")
    fake_openai.fail_next(kind="hang", path=r"/fine_tuning/jobs/.*")
    with _client(fake_openai, timeout=0.3) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            client.get("/files")
        with pytest.raises(httpx.ReadTimeout):
            client.get("/fine_tuning/jobs/ftjob-x")
    assert [(r.fault, r.status) for r in fake_openai.requests] == [("close", None), ("hang", None)]


def test_openai_latency_and_wait_for(fake_openai: FakeOpenAI) -> None:
    fake_openai.latency = 0.15
    with _client(fake_openai) as client:
        start = time.monotonic()
        client.get("/files")
        assert time.monotonic() - start >= 0.15
    assert fake_openai.wait_for_request("/files", "GET").status == 200
    expected = r"waiting for lambda f: \"ftjob-never\" in f\.jobs\n(.|\n)*GET /files -> 200"
    with pytest.raises(AssertionError, match=expected):
        fake_openai.wait_for(lambda f: "ftjob-never" in f.jobs, timeout=0.1)


async def test_openai_from_async_test(fake_openai: FakeOpenAI) -> None:
    async with httpx.AsyncClient(
        base_url=fake_openai.base_url, headers={"Authorization": f"Bearer {fake_openai.api_key}"}
    ) as client:
        job = fake_openai.add_job(status="running")
        fake_openai.fail_next(500, path=f"/fine_tuning/jobs/{job['id']}")
        assert (await client.get(f"/fine_tuning/jobs/{job['id']}")).status_code == 500
        assert (await client.get(f"/fine_tuning/jobs/{job['id']}")).json()["status"] == "running"
    found = await fake_openai.wait_for_async(lambda f: f.requests_to(r"/fine_tuning/jobs/ftjob-\w+"))
    assert [r.status for r in found] == [500, 200]


def test_openai_reset_and_restart() -> None:
    fake = FakeOpenAI()
    with fake:
        fake.add_job()
        fake.fail_next(500)
        fake.latency = 1.0
        fake.reset()
        assert (fake.jobs, fake.pending_faults, fake.latency) == ({}, [], 0.0)
        assert set(fake.files) == {"file-abc123", "file-val456"}
    with pytest.raises(RuntimeError):
        _ = fake.port
    with fake:
        assert httpx.get(
            f"{fake.base_url}/files", headers={"Authorization": f"Bearer {fake.api_key}"}
        ).is_success


# -- FakeSlack: Web API ----------------------------------------------------------------------------


async def test_slack_post_message_json_and_form(fake_slack: FakeSlack) -> None:
    client = AsyncWebClient(token=fake_slack.bot_token, base_url=fake_slack.api_url)
    blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": "*Job started*"}}]
    first = await client.chat_postMessage(channel="C123", text="Job started", blocks=blocks)
    assert first["ok"] and first["channel"] == "C123" and first["message"]["blocks"] == blocks
    assert fake_slack.calls[-1].headers["content-type"].startswith("application/json")

    async with httpx.AsyncClient() as http:
        form = await http.post(
            f"{fake_slack.api_url}chat.postMessage",
            data={
                "token": fake_slack.bot_token,
                "channel": "C123",
                "text": "reply",
                "thread_ts": first["ts"],
                "blocks": '[{"type": "divider"}]',  # form bodies carry blocks as a JSON string
                "reply_broadcast": "true",
            },
        )
    assert form.json()["ok"] is True
    reply = fake_slack.messages[-1]
    assert reply.blocks == [{"type": "divider"}]
    assert (reply.thread_ts, reply.reply_broadcast) == (first["ts"], True)
    assert float(reply.ts) > float(first["ts"])
    assert fake_slack.calls_to("chat.postMessage")[-1].token == fake_slack.bot_token
    assert "token" not in fake_slack.calls_to("chat.postMessage")[-1].params

    updated = await client.chat_update(channel="C123", ts=first["ts"], text="Job finished")
    assert updated["ok"]
    assert fake_slack.messages[0].text == "Job finished" and fake_slack.messages[0].edits == 1
    assert [u.text for u in fake_slack.updates] == ["Job finished"]
    with pytest.raises(SlackApiError) as missing:
        await client.chat_update(channel="C123", ts="1.2", text="x")
    assert missing.value.response["error"] == "message_not_found"
    assert (await client.chat_postEphemeral(channel="C123", user="U123", text="psst"))["message_ts"]
    assert (await client.conversations_open(users="U123"))["channel"]["id"] == "DU123"
    assert (await client.users_info(user="U123"))["user"]["id"] == "U123"
    auth = await client.auth_test()
    assert (auth["team"], auth["team_id"], auth["user_id"], auth["bot_id"]) == (
        "Acme",
        "T0001",
        "U0BOT",
        "B0001",
    )
    with pytest.raises(SlackApiError) as oversized:
        await client.chat_postMessage(
            channel="C1",
            text="x",
            blocks=[{"type": "section", "text": {"type": "mrkdwn", "text": "x" * 3001}}],
        )
    assert oversized.value.response["error"] == "invalid_blocks"


async def test_slack_auth_errors(fake_slack: FakeSlack) -> None:
    for token, error in (("xoxb-wrong", "invalid_auth"), (fake_slack.app_token, "not_allowed_token_type")):
        with pytest.raises(SlackApiError) as exc:
            await AsyncWebClient(token=token, base_url=fake_slack.api_url).auth_test()
        assert exc.value.response.status_code == 200
        assert exc.value.response["error"] == error
    async with httpx.AsyncClient() as http:
        assert (await http.post(f"{fake_slack.api_url}auth.test")).json() == {
            "ok": False,
            "error": "not_authed",
        }
        unknown = await http.post(f"{fake_slack.api_url}views.nope", data={"token": fake_slack.bot_token})
        assert unknown.json() == {"ok": False, "error": "unknown_method"}
    opened = await AsyncWebClient(base_url=fake_slack.api_url).apps_connections_open(
        app_token=fake_slack.app_token
    )
    assert opened["url"] == fake_slack.socket_url


def test_slack_fault_injection_and_rate_limit(fake_slack: FakeSlack) -> None:
    url = f"{fake_slack.api_url}chat.postMessage"
    auth = {"Authorization": f"Bearer {fake_slack.bot_token}"}
    fake_slack.fail_next("chat.postMessage", error="channel_not_found", channel="C404")
    fake_slack.fail_next("chat.postMessage", retry_after=7)
    fake_slack.fail_next("*", status=500)
    with httpx.Client(headers=auth) as http:
        assert http.post(url, json={"channel": "C1", "text": "a"}).status_code == 429  # scoped one skipped
        assert http.post(url, json={"channel": "C404", "text": "b"}).json()["error"] == "channel_not_found"
        limited = fake_slack.calls[0]
        assert (limited.status, limited.response) == (429, {"ok": False, "error": "ratelimited"})
        server_error = http.post(f"{fake_slack.api_url}auth.test")
        assert (server_error.status_code, server_error.json()["error"]) == (500, "internal_error")
        assert http.post(url, json={"channel": "C1", "text": "ok"}).json()["ok"] is True

        fake_slack.rate_limit_per_channel = 1.0
        assert http.post(url, json={"channel": "C9", "text": "1"}).status_code == 200
        second = http.post(url, json={"channel": "C9", "text": "2"})
        assert (second.status_code, second.headers["Retry-After"]) == (429, "1")
        assert http.post(url, json={"channel": "C8", "text": "other channel"}).status_code == 200
    assert [m.text for m in fake_slack.messages] == ["ok", "1", "other channel"]


def test_slack_response_url(fake_slack: FakeSlack) -> None:
    url = fake_slack.response_url("cmd-1")
    assert url == f"http://127.0.0.1:{fake_slack.port}/response/cmd-1"
    assert httpx.post(url, json={"text": "Started ftjob-1", "response_type": "in_channel"}).text == "ok"
    fake_slack.fail_next("response_url", status=500)
    assert httpx.post(url, json={"text": "retry me"}).status_code == 500
    assert httpx.post(url, content="not json", headers={"Content-Type": "text/plain"}).status_code == 400
    assert [(r.json, r.status) for r in fake_slack.responses_for("cmd-1")] == [
        ({"text": "Started ftjob-1", "response_type": "in_channel"}, 200),
        ({"text": "retry me"}, 500),
        (None, 400),
    ]
    assert fake_slack.response_url() != fake_slack.response_url()


def test_slash_command_payload_and_signing(fake_slack: FakeSlack) -> None:
    payload = fake_slack.slash_command_payload("start gpt-4o-mini file-abc123")
    assert payload["command"] == "/finetune" and payload["user_id"] == "U123"
    assert payload["response_url"].startswith(f"http://127.0.0.1:{fake_slack.port}/response/")
    assert payload["is_enterprise_install"] == "false"
    assert all(isinstance(v, str) for v in payload.values())

    body = urlencode(payload)
    headers = sign_slack_request(body, "shh")
    assert headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert SignatureVerifier("shh").is_valid_request(body, headers)
    assert not SignatureVerifier("other").is_valid_request(body, headers)
    stale = sign_slack_request(body, "shh", timestamp=int(time.time()) - 3600)
    assert not SignatureVerifier("shh").is_valid_request(body, stale)


# -- FakeSlack: Socket Mode ------------------------------------------------------------------------


async def test_socket_mode_raw_websocket(fake_slack: FakeSlack) -> None:
    async with aiohttp.ClientSession() as session:
        opened = await session.post(
            f"{fake_slack.api_url}apps.connections.open",
            headers={"Authorization": f"Bearer {fake_slack.app_token}"},
        )
        url = (await opened.json())["url"]
        async with session.ws_connect(url) as ws:
            hello = await ws.receive_json(timeout=2)
            assert hello["type"] == "hello" and hello["connection_info"] == {"app_id": "A0001"}
            await fake_slack.wait_connected_async()

            # The blocking variant, called from another thread as a sync test would.
            envelope_id = await asyncio.to_thread(fake_slack.send_slash_command, "status")
            envelope = await ws.receive_json(timeout=2)
            assert envelope["envelope_id"] == envelope_id
            assert (envelope["type"], envelope["accepts_response_payload"]) == ("slash_commands", True)
            assert envelope["payload"]["text"] == "status"
            await ws.send_json({"envelope_id": envelope_id, "payload": {"text": "on it"}})
            ack = await fake_slack.wait_for_ack_async(envelope_id)
            assert ack == {"envelope_id": envelope_id, "payload": {"text": "on it"}}

            second = await fake_slack.send_envelope_async(
                "events_api", {"event": {"type": "app_mention"}}, False
            )
            assert (await ws.receive_json(timeout=2))["envelope_id"] == second
            await ws.send_json({"envelope_id": second})
            await fake_slack.wait_for_ack_async(second)
    assert [a["envelope_id"] for a in fake_slack.socket_acks] == [envelope_id, second]
    await fake_slack.wait_for_async(lambda f: f.connected == 0)


async def test_socket_mode_with_slack_sdk_client(fake_slack: FakeSlack) -> None:
    client = SocketModeClient(
        app_token=fake_slack.app_token,
        web_client=AsyncWebClient(base_url=fake_slack.api_url),
        ping_interval=0.5,
    )

    async def ack(sm: Any, request: SocketModeRequest) -> None:
        await sm.send_socket_mode_response(
            SocketModeResponse(request.envelope_id, {"text": request.payload["text"]})
        )

    client.socket_mode_request_listeners.append(ack)
    try:
        await client.connect()
        await fake_slack.wait_connected_async()
        first = await fake_slack.send_envelope_async(
            "slash_commands", fake_slack.slash_command_payload("one")
        )
        assert (await fake_slack.wait_for_ack_async(first))["payload"] == {"text": "one"}

        # A "disconnect" frame makes the client fetch a new URL and reconnect.
        await asyncio.to_thread(fake_slack.send_disconnect)
        await fake_slack.wait_for_async(lambda f: f.connection_count == 2 and f.connected == 1)
        assert len(fake_slack.calls_to("apps.connections.open")) == 2
        second = await fake_slack.send_envelope_async(
            "slash_commands", fake_slack.slash_command_payload("two")
        )
        assert (await fake_slack.wait_for_ack_async(second))["payload"] == {"text": "two"}
    finally:
        await client.close()


def test_send_envelope_without_client_times_out(fake_slack: FakeSlack) -> None:
    with pytest.raises(AssertionError, match="Socket Mode client to connect"):
        fake_slack.send_envelope("slash_commands", {}, timeout=0.1)
