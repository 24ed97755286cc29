"""The fakes behind the completion report: FakeSlack's three-step external upload and FakeOpenAI's
result files and metrics events, driven with the clients the bot uses (slack_sdk, httpx and the
bot's own FineTuningClient)."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from slack_sdk.errors import SlackApiError, SlackRequestError
from slack_sdk.web.async_client import AsyncWebClient

from bot.openai_client import FineTuningClient
from tests.fakes import FakeOpenAI, FakeSlack

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40  # not a real image: the fake never looks inside
CSV = "step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy\n1,2.5,0.4,,\n2,1.9,0.5,2.1,0.45\n"


@pytest.fixture
async def slack(fake_slack: FakeSlack) -> AsyncIterator[AsyncWebClient]:
    client = AsyncWebClient(token=fake_slack.bot_token, base_url=fake_slack.api_url)
    yield client
    if client.session is not None:
        await client.session.close()


async def _error(call: Any) -> dict[str, Any]:
    with pytest.raises(SlackApiError) as raised:
        await call
    return dict(raised.value.response.data)


async def _thread(slack: AsyncWebClient, channel: str = "C123") -> str:
    return str((await slack.chat_postMessage(channel=channel, text="ftjob-abc succeeded"))["ts"])


# -- FakeSlack: the three steps one by one -----------------------------------------------------------


async def test_three_steps_share_the_file_in_the_thread(fake_slack: FakeSlack, slack: AsyncWebClient) -> None:
    parent = await _thread(slack)
    step1 = await slack.files_getUploadURLExternal(
        filename="loss.png", length=len(PNG), alt_txt="loss 2.5 → 0.4"
    )
    file_id, upload_url = step1["file_id"], step1["upload_url"]
    assert re.fullmatch(r"F[A-Z0-9]{10}", file_id)
    assert re.fullmatch(rf"{re.escape(fake_slack.origin)}/upload/v1/[A-Za-z0-9_-]+", upload_url)
    assert fake_slack.upload_url(file_id) == upload_url

    async with httpx.AsyncClient() as http:
        posted = await http.post(upload_url, content=PNG)
    assert (posted.status_code, posted.text) == (200, f"OK - {len(PNG)}")
    assert fake_slack.uploads == []  # bytes alone complete nothing

    blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": "*Loss* went down"}}]
    done = await slack.files_completeUploadExternal(
        files=[{"id": file_id, "title": "Training loss"}],
        channel_id="C123",
        thread_ts=parent,
        initial_comment="Report for ftjob-abc",
        blocks=json.dumps(blocks),  # slack_sdk puts these in the query string: a list fails in aiohttp
    )
    assert done["files"] == [{"id": file_id, "title": "Training loss"}]

    [upload] = fake_slack.wait_for(lambda s: s.uploads)
    assert (upload.file_id, upload.filename, upload.title, upload.alt_txt) == (
        file_id,
        "loss.png",
        "Training loss",
        "loss 2.5 → 0.4",
    )
    assert (upload.data, upload.length, upload.channel, upload.thread_ts) == (PNG, len(PNG), "C123", parent)
    assert (upload.initial_comment, upload.blocks, upload.dropped) == ("Report for ftjob-abc", blocks, False)

    [share] = [m for m in fake_slack.messages_in("C123", parent)]
    assert (share.ts, share.text, share.blocks) == (upload.ts, "Report for ftjob-abc", blocks)
    assert share.files == [
        {
            "id": file_id,
            "created": share.files[0]["created"],
            "name": "loss.png",
            "title": "Training loss",
            "mimetype": "image/png",
            "filetype": "png",
            "user": "U0BOT",
            "size": len(PNG),
            "alt_txt": "loss 2.5 → 0.4",
        }
    ]
    assert fake_slack.messages[0].files is None  # a plain chat.postMessage carries no files

    # A bot looking for the chart it shared finds it the way it finds its other replies.
    replies = (await slack.conversations_replies(channel="C123", ts=parent))["messages"]
    assert [m.get("files", [{}])[0].get("id") for m in replies] == [None, file_id]
    assert replies[1]["thread_ts"] == parent
    history = (await slack.conversations_history(channel="C123"))["messages"]
    assert [m["ts"] for m in history] == [parent]  # a thread reply is not in the channel's history


async def test_multipart_upload_and_top_level_share(fake_slack: FakeSlack, slack: AsyncWebClient) -> None:
    step1 = await slack.files_getUploadURLExternal(filename="metrics.csv", length=len(CSV))
    async with httpx.AsyncClient() as http:
        posted = await http.post(
            step1["upload_url"], files={"file": ("metrics.csv", CSV.encode(), "text/csv")}
        )
    assert posted.text == f"OK - {len(CSV)}"
    await slack.files_completeUploadExternal(files=[{"id": step1["file_id"]}], channel_id="C7")

    [upload] = fake_slack.uploads
    assert (upload.data, upload.title, upload.thread_ts, upload.initial_comment) == (
        CSV.encode(),
        "metrics.csv",  # no title given: Slack uses the file name
        None,
        None,
    )
    history = (await slack.conversations_history(channel="C7"))["messages"]
    assert [(m["ts"], m["text"], m["files"][0]["mimetype"]) for m in history] == [(upload.ts, "", "text/csv")]


async def test_files_upload_v2_works_unchanged(fake_slack: FakeSlack, slack: AsyncWebClient) -> None:
    parent = await _thread(slack)
    response = await slack.files_upload_v2(
        channel="C123",
        thread_ts=parent,
        content=PNG,
        filename="ftjob-abc.png",
        title="ftjob-abc: loss",
        alt_txt="Training loss fell from 2.5 to 0.4.",
        initial_comment="Loss chart",
    )
    [upload] = fake_slack.uploads
    assert response["file"] == {"id": upload.file_id, "title": "ftjob-abc: loss"}
    assert (upload.data, upload.alt_txt, upload.thread_ts) == (
        PNG,
        "Training loss fell from 2.5 to 0.4.",
        parent,
    )
    [share] = fake_slack.messages_in("C123", parent)
    assert (share.text, share.files and share.files[0]["id"]) == ("Loss chart", upload.file_id)
    assert [c.method for c in fake_slack.calls[1:]] == [
        "files.getUploadURLExternal",
        "upload",
        "files.completeUploadExternal",
    ]


# -- FakeSlack: refusals ---------------------------------------------------------------------------


async def test_upload_url_arguments_are_checked(fake_slack: FakeSlack, slack: AsyncWebClient) -> None:
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {fake_slack.bot_token}"}) as http:
        url = f"{fake_slack.api_url}files.getUploadURLExternal"
        for form in ({"length": "10"}, {"filename": "a.png"}, {"filename": "a.png", "length": "0"}):
            answer = (await http.post(url, data=form)).json()
            assert (answer["ok"], answer["error"]) == (False, "invalid_arguments"), form
        assert (await http.post(url, data={"filename": "a.png", "length": "ten"})).json()["error"] == (
            "invalid_arguments"
        )
        as_json = (await http.post(url, json={"filename": "a.png", "length": 10})).json()
        assert as_json["ok"] is True
    too_long = await _error(slack.files_getUploadURLExternal(filename="a.png", length=10, alt_txt="x" * 1001))
    assert too_long["error"] == "alt_txt_too_large"
    assert (await slack.files_getUploadURLExternal(filename="a.png", length=10, alt_txt="x" * 1000))["ok"]


async def test_missing_files_write_scope(fake_slack: FakeSlack, slack: AsyncWebClient) -> None:
    assert "files:write" in (await slack.auth_test()).headers["x-oauth-scopes"].split(",")
    granted = await slack.files_getUploadURLExternal(filename="a.png", length=len(PNG))
    async with httpx.AsyncClient() as http:
        await http.post(granted["upload_url"], content=PNG)

    fake_slack.revoke_scope("files:write")
    assert "files:write" not in (await slack.auth_test()).headers["x-oauth-scopes"].split(",")
    for call in (
        slack.files_getUploadURLExternal(filename="a.png", length=10),
        slack.files_completeUploadExternal(files=[{"id": granted["file_id"]}], channel_id="C1"),
        slack.files_upload_v2(channel="C1", content=PNG, filename="a.png"),
    ):
        refused = await _error(call)
        assert (refused["error"], refused["needed"]) == ("missing_scope", "files:write")
        assert refused["provided"] == ",".join(fake_slack.scopes)
        assert "chat:write" in refused["provided"].split(",")
    assert fake_slack.uploads == [] and (await slack.chat_postMessage(channel="C1", text="still posts"))["ok"]

    fake_slack.grant_scope("files:write")
    await slack.files_completeUploadExternal(files=[{"id": granted["file_id"]}], channel_id="C1")
    assert [u.file_id for u in fake_slack.uploads] == [granted["file_id"]]


async def test_failing_uploads(fake_slack: FakeSlack, slack: AsyncWebClient) -> None:
    step1 = await slack.files_getUploadURLExternal(filename="a.png", length=len(PNG))
    fake_slack.fail_next("upload", status=500, times=2)
    async with httpx.AsyncClient() as http:
        statuses = [(await http.post(step1["upload_url"], content=PNG)).status_code for _ in range(3)]
        assert statuses == [500, 500, 200]  # a retry of the same URL succeeds once the faults are spent
        unknown = await http.post(f"{fake_slack.origin}/upload/v1/never-issued", content=PNG)
        assert unknown.status_code == 404
    assert [(c.params["file_id"], c.status) for c in fake_slack.calls_to("upload")] == [
        (step1["file_id"], 500),
        (step1["file_id"], 500),
        (step1["file_id"], 200),
        (None, 404),
    ]

    fake_slack.fail_next("upload", status=503)
    with pytest.raises(SlackRequestError, match="status: 503"):
        await slack.files_upload_v2(channel="C1", content=PNG, filename="b.png")
    assert fake_slack.calls[-1].method == "upload"  # slack_sdk gives up before completing
    assert fake_slack.uploads == [] and fake_slack.messages_in("C1") == []


async def test_complete_needs_uploaded_bytes_and_only_once(
    fake_slack: FakeSlack, slack: AsyncWebClient
) -> None:
    async def complete(file_id: str) -> Any:
        return await slack.files_completeUploadExternal(files=[{"id": file_id}], channel_id="C1")

    unknown = await _error(complete("F0000000000"))
    assert unknown["error"] == "file_not_found"

    step1 = await slack.files_getUploadURLExternal(filename="a.png", length=len(PNG))
    no_bytes = await _error(complete(step1["file_id"]))
    assert no_bytes["error"] == "file_not_found"
    assert "no bytes" in no_bytes["response_metadata"]["messages"][0]

    async with httpx.AsyncClient() as http:
        await http.post(step1["upload_url"], content=PNG[:-1])
        short = await _error(complete(step1["file_id"]))
        assert short["error"] == "file_not_found"
        assert (
            f"{len(PNG) - 1} bytes uploaded but length {len(PNG)}"
            in short["response_metadata"]["messages"][0]
        )

        await http.post(step1["upload_url"], content=PNG)  # the retried upload replaces the bytes
        assert (await complete(step1["file_id"]))["ok"]
        twice = await _error(complete(step1["file_id"]))
        assert twice["error"] == "file_not_found"
        assert "only be called once" in twice["response_metadata"]["messages"][0]
        assert (await http.post(step1["upload_url"], content=PNG)).status_code == 404  # URL spent

    malformed = await _error(
        slack.api_call("files.completeUploadExternal", params={"files": "not json", "channel_id": "C1"})
    )
    assert malformed["error"] == "invalid_arguments"
    assert len(fake_slack.uploads) == 1
    assert [m.files and m.files[0]["id"] for m in fake_slack.messages_in("C1")] == [step1["file_id"]]


async def test_completion_refusals_leave_the_upload_completable(
    fake_slack: FakeSlack, slack: AsyncWebClient
) -> None:
    step1 = await slack.files_getUploadURLExternal(filename="a.png", length=len(PNG))
    async with httpx.AsyncClient() as http:
        await http.post(step1["upload_url"], content=PNG)
    files = [{"id": step1["file_id"]}]
    fake_slack.fail_next("files.completeUploadExternal", error="not_in_channel", channel="C9")
    fake_slack.fail_next("files.completeUploadExternal", error="channel_not_found")
    fake_slack.fail_next("files.completeUploadExternal", retry_after=3)

    assert (await _error(slack.files_completeUploadExternal(files=files, channel_id="C9")))["error"] == (
        "not_in_channel"
    )
    assert (await _error(slack.files_completeUploadExternal(files=files, channel_id="C8")))["error"] == (
        "channel_not_found"
    )
    with pytest.raises(SlackApiError) as limited:
        await slack.files_completeUploadExternal(files=files, channel_id="C8")
    assert (limited.value.response.status_code, limited.value.response.headers["Retry-After"]) == (429, "3")
    assert fake_slack.uploads == []

    assert (await slack.files_completeUploadExternal(files=files, channel_id="C8"))["ok"]
    assert [u.channel for u in fake_slack.uploads] == ["C8"]


async def test_private_upload_delayed_and_dropped_shares(
    fake_slack: FakeSlack, slack: AsyncWebClient
) -> None:
    async def upload(name: str, **complete: Any) -> str:
        step1 = await slack.files_getUploadURLExternal(filename=name, length=len(PNG))
        async with httpx.AsyncClient() as http:
            await http.post(step1["upload_url"], content=PNG)
        await slack.files_completeUploadExternal(files=[{"id": step1["file_id"]}], **complete)
        return str(step1["file_id"])

    private = await upload("private.png")
    assert [(u.file_id, u.channel, u.ts) for u in fake_slack.uploads] == [(private, None, None)]
    assert fake_slack.messages == []

    fake_slack.drop_shares()
    dropped = await upload("dropped.png", channel_id="C1")
    assert fake_slack.uploads[-1].file_id == dropped
    assert (fake_slack.uploads[-1].dropped, fake_slack.uploads[-1].ts) == (True, None)
    assert fake_slack.messages_in("C1") == []

    fake_slack.share_delay = 1.0
    delayed = await upload("delayed.png", channel_id="C1")
    assert fake_slack.messages_in("C1") == []  # ok came back; the share is still being processed
    [share] = await fake_slack.wait_for_async(lambda s: s.messages_in("C1"))
    assert share.files is not None and share.files[0]["id"] == delayed
    assert fake_slack.uploads[-1].ts == share.ts


async def test_clear_and_reset_forget_uploads(fake_slack: FakeSlack, slack: AsyncWebClient) -> None:
    await slack.files_upload_v2(channel="C1", content=PNG, filename="a.png")
    pending = await slack.files_getUploadURLExternal(filename="b.png", length=len(PNG))
    fake_slack.revoke_scope("files:write")
    fake_slack.clear()
    assert (fake_slack.uploads, fake_slack.calls) == ([], [])
    assert len(fake_slack.messages) == 1 and fake_slack.upload_url(pending["file_id"]) is not None

    fake_slack.share_delay = 5.0
    fake_slack.reset()
    assert (fake_slack.uploads, fake_slack.messages, fake_slack.share_delay) == ([], [], 0.0)
    assert fake_slack.upload_url(pending["file_id"]) is None
    assert "files:write" in fake_slack.scopes


# -- FakeOpenAI: result files ----------------------------------------------------------------------


def _openai(fake: FakeOpenAI) -> httpx.Client:
    return httpx.Client(base_url=fake.base_url, headers={"Authorization": f"Bearer {fake.api_key}"})


def test_result_file_served_plain_and_base64(fake_openai: FakeOpenAI) -> None:
    job = fake_openai.add_job(status="running")
    plain = fake_openai.add_result_file(job["id"], CSV)
    fake_openai.set_status(job["id"], "succeeded")
    with _openai(fake_openai) as client:
        served = client.get(f"/fine_tuning/jobs/{job['id']}").json()
        assert served["result_files"] == [plain]
        meta = client.get(f"/files/{plain}").json()
        assert (meta["filename"], meta["purpose"], meta["bytes"]) == (
            "step_metrics.csv",
            "fine-tune-results",
            len(CSV),
        )
        assert client.get(f"/files/{plain}/content").content == CSV.encode()

        encoded = fake_openai.add_result_file(job["id"], CSV.encode(), base64_encoded=True)
        assert client.get(f"/fine_tuning/jobs/{job['id']}").json()["result_files"] == [encoded]
        body = client.get(f"/files/{encoded}/content").content
        assert not body.startswith(b"step") and base64.b64decode(body) == CSV.encode()
        assert client.get(f"/files/{encoded}").json()["bytes"] == len(body)
        # Result files are not training files.
        assert plain not in [
            f["id"] for f in client.get("/files", params={"purpose": "fine-tune"}).json()["data"]
        ]
    with pytest.raises(KeyError):
        fake_openai.add_result_file("ftjob-nope", CSV)


@pytest.mark.parametrize("content_length", [True, False])
def test_large_content_is_streamed(fake_openai: FakeOpenAI, content_length: bool) -> None:
    job = fake_openai.add_job(status="succeeded", finished_at=None)
    file_id = fake_openai.add_result_file(job["id"], CSV)
    size = 50 * 1024 * 1024
    fake_openai.serve_large_content(file_id, size, content_length=content_length)
    with _openai(fake_openai) as client:
        assert client.get(f"/files/{file_id}").json()["bytes"] == size
        with client.stream("GET", f"/files/{file_id}/content") as response:
            assert response.headers.get("content-length") == (str(size) if content_length else None)
            read = b""
            for chunk in response.iter_bytes():
                read += chunk
                if len(read) > 1024 * 1024:
                    break  # a reader with a 1 MB cap hangs up here
        assert read.startswith(b"step,train_loss,")
        with client.stream("GET", f"/files/{file_id}/content") as response:
            assert sum(len(chunk) for chunk in response.iter_bytes()) == size
        # The server survived the hang-up and still answers.
        assert client.get(f"/fine_tuning/jobs/{job['id']}").status_code == 200
    with pytest.raises(KeyError):
        fake_openai.serve_large_content("file-nope", 10)


# -- FakeOpenAI: paging through metrics events and checkpoints -------------------------------------


async def test_events_paging_over_300_metrics_events(fake_openai: FakeOpenAI) -> None:
    job = fake_openai.add_job(status="running")
    points = [
        {"step": step, "total_steps": 350, "train_loss": 3.0 / step, "train_mean_token_accuracy": 0.5}
        for step in range(1, 351)
    ]
    added = fake_openai.add_metrics_events(job["id"], points)
    assert [e["data"]["step"] for e in added] == list(range(1, 351))
    assert added[-1]["message"] == "Step 350/350: training loss=0.01"
    fake_openai.set_status(job["id"], "succeeded")  # a status event newer than every metric

    async with httpx.AsyncClient() as http:
        client = FineTuningClient(http, api_key=fake_openai.api_key, base_url=fake_openai.base_url)
        first = await client.list_events(job["id"])
        assert (len(first.data), first.has_more) == (20, True)  # the API's default page
        assert first.data[0].type == "message" and first.data[1].data["step"] == 350

        pages, after = [], None
        while True:
            page = await client.list_events(job["id"], after=after, limit=100)
            pages.append(page)
            if not page.has_more:
                break
            after = page.last_id
    events = [e for page in pages for e in page.data]
    assert [len(p.data) for p in pages] == [100, 100, 100, 52]  # 350 metrics + created + succeeded
    assert [e.data["step"] for e in events if e.type == "metrics"] == list(range(350, 0, -1))
    assert events[-1].message.startswith("Created fine-tuning job")
    assert [e.created_at for e in events] == sorted((e.created_at for e in events), reverse=True)
    assert len({e.id for e in events}) == len(events)
    assert events[1].data == points[-1]


async def test_checkpoints_paging(fake_openai: FakeOpenAI) -> None:
    job = fake_openai.add_job(status="succeeded", finished_at=None)
    for step in (100, 200, 300):
        fake_openai.add_checkpoint(
            job["id"], step, metrics={"step": float(step), "valid_loss": 1000.0 / step}
        )
    async with httpx.AsyncClient() as http:
        client = FineTuningClient(http, api_key=fake_openai.api_key, base_url=fake_openai.base_url)
        first = await client.list_checkpoints(job["id"], limit=2)
        assert ([c.step_number for c in first.data], first.has_more) == ([300, 200], True)
        rest = await client.list_checkpoints(job["id"], after=first.data[-1].id, limit=2)
        assert ([c.step_number for c in rest.data], rest.has_more) == ([100], False)
        assert rest.data[0].metrics == {"step": 100.0, "valid_loss": 10.0}
