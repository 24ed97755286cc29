"""The fakes behind training data from Slack (issue 14): FakeSlack's modals and trigger ids, files
users shared (files.info, url_private_download) and interaction payloads, and FakeOpenAI's
multipart uploads. Driven with the clients the bot uses (slack_sdk, httpx) and, for payload
shapes, Bolt itself."""

from __future__ import annotations

import copy
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import httpx
import pytest
from slack_bolt.async_app import AsyncApp
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from tests.fakes import FakeOpenAI, FakeSlack, sign_slack_request

SECRET = "test-signing-secret"
TRAIN = '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n' * 12


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


def modal(*blocks: dict[str, Any], **fields: Any) -> dict[str, Any]:
    view: dict[str, Any] = {
        "type": "modal",
        "callback_id": "create_job",
        "title": {"type": "plain_text", "text": "New fine-tuning job"},
        "submit": {"type": "plain_text", "text": "Check"},
        "close": {"type": "plain_text", "text": "Cancel"},
        "private_metadata": json.dumps({"channel_id": "C123"}),
        "blocks": list(blocks),
    }
    view.update(fields)
    return view


def input_block(block_id: str, element: dict[str, Any], *, optional: bool = False) -> dict[str, Any]:
    return {
        "type": "input",
        "block_id": block_id,
        "optional": optional,
        "label": {"type": "plain_text", "text": block_id.replace("_", " ")},
        "element": element,
    }


def option(value: str, text: str | None = None) -> dict[str, Any]:
    return {"text": {"type": "plain_text", "text": text or value}, "value": value}


def create_form() -> dict[str, Any]:
    """The shape of C's form: a file_input and an external select per data set (same action_id
    in both blocks), a static model select, text and number inputs."""
    return modal(
        input_block(
            "training_upload",
            {"type": "file_input", "action_id": "upload", "filetypes": ["jsonl"], "max_files": 1},
            optional=True,
        ),
        input_block(
            "training_openai", {"type": "external_select", "action_id": "openai_file"}, optional=True
        ),
        input_block(
            "validation_openai", {"type": "external_select", "action_id": "openai_file"}, optional=True
        ),
        input_block(
            "model",
            {
                "type": "static_select",
                "action_id": "model",
                "options": [option("gpt-4o-mini-2024-07-18"), option("gpt-4.1-mini-2025-04-14")],
                "initial_option": option("gpt-4o-mini-2024-07-18"),
            },
        ),
        input_block(
            "method",
            {
                "type": "radio_buttons",
                "action_id": "method",
                "options": [option("supervised"), option("dpo")],
            },
        ),
        input_block(
            "suffix", {"type": "plain_text_input", "action_id": "suffix", "max_length": 64}, optional=True
        ),
        input_block(
            "epochs",
            {"type": "number_input", "action_id": "epochs", "is_decimal_allowed": False},
            optional=True,
        ),
        {"type": "context", "elements": [{"type": "mrkdwn", "text": "Files up to 512 MB"}]},
    )


# -- trigger ids and views.open ---------------------------------------------------------------------


async def test_views_open_takes_a_command_trigger_once(fake_slack: FakeSlack, slack: AsyncWebClient) -> None:
    trigger = fake_slack.slash_command_payload("create", user_id="U777")["trigger_id"]
    opened = await slack.views_open(trigger_id=trigger, view=create_form())
    view = opened["view"]
    assert view["id"].startswith("V") and view["root_view_id"] == view["id"] and view["hash"]
    assert view["state"] == {"values": {}} and view["callback_id"] == "create_job"
    assert view["private_metadata"] == '{"channel_id": "C123"}'
    # Slack names blocks the view left unnamed; the bot's own ids are kept.
    assert [b["block_id"] for b in view["blocks"]][:2] == ["training_upload", "training_openai"]
    assert view["blocks"][-1]["block_id"]

    again = await _error(slack.views_open(trigger_id=trigger, view=create_form()))
    assert again["error"] == "exchanged_trigger_id"
    unknown = await _error(slack.views_open(trigger_id="1.2.3", view=create_form()))
    assert unknown["error"] == "invalid_trigger_id"

    [first, second, third] = fake_slack.views
    assert (first.method, first.ok, first.view_id, first.user_id, first.trigger_id) == (
        "views.open",
        True,
        view["id"],
        "U777",
        trigger,
    )
    assert first.view == view == fake_slack.view(view["id"])
    assert (second.error, second.view_id, third.error) == ("exchanged_trigger_id", None, "invalid_trigger_id")


async def test_expired_triggers_and_every_payload_kind_carries_a_fresh_one(
    fake_slack: FakeSlack, slack: AsyncWebClient
) -> None:
    triggers = [
        fake_slack.trigger_id(),
        fake_slack.slash_command_payload("create")["trigger_id"],
        fake_slack.slash_command_payload("create", trigger_id="t.1")["trigger_id"],  # given: registered
        fake_slack.block_actions_payload("open_create_form", "")["trigger_id"],
        fake_slack.message_action_payload("finetune_on_file", fake_slack.user_message("x"))["trigger_id"],
    ]
    assert len(set(triggers)) == len(triggers)
    fake_slack.trigger_ttl = 0.0  # every trigger is now too old, without sleeping 3 s
    late = await _error(slack.views_open(trigger_id=triggers[0], view=create_form()))
    assert late["error"] == "expired_trigger_id"
    fake_slack.trigger_ttl = 3.0
    for trigger in triggers:
        assert (await slack.views_open(trigger_id=trigger, view=create_form()))["ok"]
    missing = await _error(slack.api_call("views.open", json={"view": create_form()}))
    assert missing["error"] == "invalid_arguments"
    fake_slack.reset()
    assert fake_slack.trigger_ttl == 3.0 and fake_slack.views == []
    assert (await _error(slack.views_open(trigger_id=triggers[1], view=create_form())))["error"] == (
        "invalid_trigger_id"
    )


def _too_many_blocks() -> dict[str, Any]:
    return modal(*[{"type": "divider"} for _ in range(101)])


@pytest.mark.parametrize(
    ("view", "pointer"),
    [
        (modal(title={"type": "plain_text", "text": "x" * 25}), "/view/title/text"),
        (modal(submit={"type": "plain_text", "text": "x" * 25}), "/view/submit/text"),
        (modal(close={"type": "mrkdwn", "text": "Cancel"}), "/view/close"),
        (modal(type="home"), "/view/type"),
        (modal(private_metadata="x" * 3001), "/view/private_metadata"),
        (modal(callback_id="c" * 256), "/view/callback_id"),
        (_too_many_blocks(), "/view/blocks"),
        ({**create_form(), "submit": None}, "/view/submit"),
        (
            modal(
                input_block("a", {"type": "plain_text_input", "action_id": "a"}),
                input_block("a", {"type": "plain_text_input", "action_id": "b"}),
            ),
            "/view/blocks/1/block_id",
        ),
        (
            modal(input_block("a", {"type": "rich_text_input_v9", "action_id": "a"})),
            "/view/blocks/0/element/type",
        ),
        (modal(input_block("a", {"type": "number_input", "action_id": "a"})), "/view/blocks/0/element"),
        (
            modal(input_block("a", {"type": "file_input", "action_id": "a", "max_files": 11})),
            "/view/blocks/0/element/max_files",
        ),
        (
            modal(
                input_block(
                    "a",
                    {
                        "type": "static_select",
                        "action_id": "a",
                        "options": [option("x")],
                        "initial_option": option("y"),
                    },
                )
            ),
            "/view/blocks/0/element/initial_option",
        ),
        (
            modal(input_block("a", {"type": "static_select", "action_id": "a", "options": []})),
            "/element/options",
        ),
        (
            modal(
                input_block("a", {"type": "radio_buttons", "action_id": "a", "options": [option("v" * 151)]})
            ),
            "/value",
        ),
        (
            {
                **modal(input_block("a", {"type": "plain_text_input"})),
                "blocks": [{"type": "input", "block_id": "a"}],
            },
            "/label",
        ),
    ],
)
async def test_views_open_refuses_what_slack_refuses(
    fake_slack: FakeSlack, slack: AsyncWebClient, view: dict[str, Any], pointer: str
) -> None:
    view = {k: v for k, v in view.items() if v is not None}
    trigger = fake_slack.trigger_id()
    refused = await _error(slack.views_open(trigger_id=trigger, view=view))
    assert refused["error"] == "invalid_arguments"
    messages = refused["response_metadata"]["messages"]
    assert any(pointer in m for m in messages), messages
    assert all(m.startswith("[ERROR] ") for m in messages)
    assert fake_slack.views[-1].messages == messages
    # A refused view does not spend the trigger.
    assert (await slack.views_open(trigger_id=trigger, view=create_form()))["ok"]


async def test_view_too_large(fake_slack: FakeSlack, slack: AsyncWebClient) -> None:
    sections = [{"type": "section", "text": {"type": "mrkdwn", "text": "x" * 2900}} for _ in range(90)]
    refused = await _error(slack.views_open(trigger_id=fake_slack.trigger_id(), view=modal(*sections)))
    assert refused["error"] == "view_too_large"


async def test_views_update_and_push(fake_slack: FakeSlack, slack: AsyncWebClient) -> None:
    form = create_form()
    opened = (
        await slack.views_open(trigger_id=fake_slack.trigger_id(), view={**form, "external_id": "ext-1"})
    )["view"]
    changed = modal(
        input_block("suffix", {"type": "plain_text_input", "action_id": "suffix"}),
        title={"type": "plain_text", "text": "Checking…"},
    )
    updated = (await slack.views_update(view_id=opened["id"], hash=opened["hash"], view=changed))["view"]
    assert updated["id"] == opened["id"] and updated["hash"] != opened["hash"]
    assert updated["title"]["text"] == "Checking…" and updated["external_id"] == "ext-1"
    stale = await _error(slack.views_update(view_id=opened["id"], hash=opened["hash"], view=changed))
    assert stale["error"] == "hash_conflict"
    by_external = await slack.views_update(external_id="ext-1", view=form)
    assert by_external["view"]["id"] == opened["id"]
    assert (await _error(slack.views_update(view_id="VNOPE", view=form)))["error"] == "not_found"
    duplicate = await _error(
        slack.views_open(trigger_id=fake_slack.trigger_id(), view={**form, "external_id": "ext-1"})
    )
    assert duplicate["error"] == "duplicate_external_id"
    assert [v.method for v in fake_slack.views] == ["views.open", *["views.update"] * 4, "views.open"]

    # Pushing from a submission of that view stacks on it, up to Slack's three views.
    submission = fake_slack.view_submission_payload(fake_slack.view(opened["id"]), {})
    second = (await slack.views_push(trigger_id=submission["trigger_id"], view=form))["view"]
    assert (second["previous_view_id"], second["root_view_id"]) == (opened["id"], opened["id"])
    third = (
        await slack.views_push(
            trigger_id=fake_slack.view_submission_payload(second, {})["trigger_id"], view=form
        )
    )["view"]
    fourth = await _error(
        slack.views_push(trigger_id=fake_slack.view_submission_payload(third, {})["trigger_id"], view=form)
    )
    assert fourth["error"] == "push_limit_reached"


# -- files users shared -------------------------------------------------------------------------------


async def test_files_info_and_its_errors(fake_slack: FakeSlack, slack: AsyncWebClient) -> None:
    shared = fake_slack.add_file("train.jsonl", TRAIN, channel="C123", user="U777")
    assert shared["id"].startswith("F") and shared["size"] == len(TRAIN.encode())
    assert shared["channels"] == ["C123"] and shared["user"] == "U777" and shared["title"] == "train.jsonl"
    assert shared["url_private_download"].startswith(
        f"{fake_slack.origin}/files-pri/T0001-{shared['id']}/download/"
    )
    info = await slack.files_info(file=shared["id"])
    assert info["file"] == shared == fake_slack.file(shared["id"])

    private = fake_slack.add_file("mine.jsonl", TRAIN, channel=None)
    assert private["channels"] == [] and "shares" not in private
    hidden = fake_slack.add_file("elsewhere.jsonl", TRAIN, visible=False)
    assert (await _error(slack.files_info(file=hidden["id"])))["error"] == "file_not_found"
    assert (await _error(slack.files_info(file="FNOPE000000")))["error"] == "file_not_found"

    fake_slack.revoke_scope("files:read")
    no_scope = await _error(slack.files_info(file=shared["id"]))
    assert (no_scope["error"], no_scope["needed"]) == ("missing_scope", "files:read")
    fake_slack.grant_scope("files:read")
    fake_slack.delete_file(shared["id"])
    assert (await _error(slack.files_info(file=shared["id"])))["error"] == "file_deleted"


async def test_download_needs_the_bot_token_and_streams(fake_slack: FakeSlack) -> None:
    shared = fake_slack.add_file("train.jsonl", TRAIN * 2000, mimetype="application/json")  # ~1.9 MB
    url = shared["url_private_download"]
    auth = {"Authorization": f"Bearer {fake_slack.bot_token}"}
    async with httpx.AsyncClient() as http:
        chunks: list[bytes] = []
        async with http.stream("GET", url, headers=auth) as response:
            assert response.status_code == 200
            assert response.headers["content-type"] == "application/json"
            assert int(response.headers["content-length"]) == shared["size"]
            async for chunk in response.aiter_raw():
                chunks.append(chunk)
        assert b"".join(chunks) == (TRAIN * 2000).encode() and len(chunks) > 1
        # url_private serves the same bytes.
        assert (await http.get(shared["url_private"], headers=auth)).content == (TRAIN * 2000).encode()

        # Without a (valid) token, or without files:read: Slack's sign-in page, HTTP 200.
        for headers in ({}, {"Authorization": "Bearer xoxb-someone-else"}):
            page = await http.get(url, headers=headers)
            assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
            assert b"messages" not in page.content
        fake_slack.revoke_scope("files:read")
        assert (await http.get(url, headers=auth)).headers["content-type"].startswith("text/html")
        fake_slack.grant_scope("files:read")

        fake_slack.fail_next("download", status=503, times=2, retry_after=1)
        assert [(await http.get(url, headers=auth)).status_code for _ in range(3)] == [503, 503, 200]
        fake_slack.fail_next("download", status=403)
        assert (await http.get(url, headers=auth)).status_code == 403

        fake_slack.delete_file(shared["id"])
        assert (await http.get(url, headers=auth)).status_code == 404
        hidden = fake_slack.add_file("elsewhere.jsonl", TRAIN, visible=False)
        assert (await http.get(hidden["url_private_download"], headers=auth)).status_code == 404

    served = fake_slack.downloads_of(shared["id"])
    assert len(served) == 3 and all(d.authorized and d.bytes_sent == shared["size"] for d in served)
    assert [(d.status, d.authorized, d.served) for d in fake_slack.downloads][2:6] == [
        (200, False, False),
        (200, False, False),
        (200, False, False),
        (503, True, False),
    ]


async def test_large_generated_file_is_exact_valid_jsonl(fake_slack: FakeSlack) -> None:
    shared = fake_slack.add_file("big.jsonl", b"")
    size = 3 * 1024**2 + 17
    fake_slack.serve_large_file(shared["id"], size)
    assert fake_slack.file(shared["id"])["size"] == size
    received, lines, tail = 0, 0, b""
    async with httpx.AsyncClient() as http:
        headers = {"Authorization": f"Bearer {fake_slack.bot_token}"}
        async with http.stream("GET", shared["url_private_download"], headers=headers) as response:
            assert int(response.headers["content-length"]) == size
            async for chunk in response.aiter_raw():
                received += len(chunk)
                *complete, tail = (tail + chunk).split(b"\n")
                for line in complete:
                    assert json.loads(line)["messages"][-1]["role"] == "assistant"
                    lines += 1
    assert (received, tail) == (size, b"") and lines > 10_000
    with pytest.raises(ValueError):
        fake_slack.serve_large_file(shared["id"], 10)


# -- interaction payloads, as Bolt sees them ---------------------------------------------------------


async def test_payloads_reach_the_right_bolt_listeners(fake_slack: FakeSlack) -> None:
    app = AsyncApp(
        client=AsyncWebClient(token=fake_slack.bot_token, base_url=fake_slack.api_url), signing_secret=SECRET
    )
    seen: dict[str, dict[str, Any]] = {}

    @app.view("create_job")
    async def submitted(ack: Any, body: dict[str, Any]) -> None:
        seen["view"] = body
        await ack(response_action="errors", errors={"suffix": "Too long"})

    @app.options({"action_id": "openai_file", "block_id": "validation_openai"})
    async def options(ack: Any, body: dict[str, Any]) -> None:
        seen["options"] = body
        await ack(options=[option("file-abc123", "train.jsonl")])

    @app.message_shortcut("finetune_on_file")
    async def shortcut(ack: Any, body: dict[str, Any]) -> None:
        seen["shortcut"] = body
        await ack()

    async def dispatch(payload: dict[str, Any]) -> Any:
        body = FakeSlack.interactive_form(payload)
        return await app.async_dispatch(AsyncBoltRequest(body=body, headers=sign_slack_request(body, SECRET)))

    shared = fake_slack.add_file("train.jsonl", TRAIN, channel=None)
    opened = (await app.client.views_open(trigger_id=fake_slack.trigger_id(), view=create_form()))["view"]

    payload = fake_slack.view_submission_payload(
        opened,
        {
            "training_upload": shared["id"],
            "model": "gpt-4.1-mini-2025-04-14",
            "method": "dpo",
            "suffix": "x" * 80,
        },
        user_id="U777",
    )
    response = await dispatch(payload)
    assert response.status == 200
    assert json.loads(response.body) == {"response_action": "errors", "errors": {"suffix": "Too long"}}
    values = seen["view"]["view"]["state"]["values"]
    assert values["training_upload"]["upload"] == {"type": "file_input", "files": [shared]}
    assert values["model"]["model"]["selected_option"] == option("gpt-4.1-mini-2025-04-14")
    assert values["method"]["method"]["selected_option"]["value"] == "dpo"
    assert values["suffix"]["suffix"] == {"type": "plain_text_input", "value": "x" * 80}
    # Inputs left empty are there, with null values, like Slack's.
    assert values["epochs"]["epochs"] == {"type": "number_input", "value": None}
    assert values["training_openai"]["openai_file"] == {"type": "external_select", "selected_option": None}
    assert (payload["user"]["id"], payload["view"]["id"], payload["response_urls"]) == (
        "U777",
        opened["id"],
        [],
    )
    assert payload["view"]["private_metadata"] == opened["private_metadata"]

    suggestion = fake_slack.block_suggestion_payload("openai_file", "trai", block_id="validation_openai")
    assert (
        suggestion["container"] == {"type": "view", "view_id": opened["id"]}
        and "trigger_id" not in suggestion
    )
    response = await dispatch(suggestion)
    assert json.loads(response.body)["options"][0]["value"] == "file-abc123"
    assert seen["options"]["value"] == "trai"

    message = fake_slack.user_message("here it is", files=[shared["id"]], user_id="U888")
    action = fake_slack.message_action_payload("finetune_on_file", message, channel_id="C999")
    assert (await dispatch(action)).status == 200
    got = seen["shortcut"]
    assert got["message"]["files"][0]["url_private_download"] == shared["url_private_download"]
    assert (got["channel"]["id"], got["user"]["id"], got["message"]["user"]) == ("C999", "U123", "U888")
    assert got["response_url"].startswith(fake_slack.origin) and got["message_ts"] == message["ts"]


def test_submission_values_that_could_not_come_from_the_view(fake_slack: FakeSlack) -> None:
    form = create_form()
    with pytest.raises(ValueError, match="no input block"):
        fake_slack.view_submission_payload(form, {"nope": "x"})
    with pytest.raises(ValueError, match="not an option"):
        fake_slack.view_submission_payload(form, {"model": "gpt-5"})
    with pytest.raises(ValueError, match="no file"):
        fake_slack.view_submission_payload(form, {"training_upload": "FNOPE"})
    a, b = fake_slack.add_file("a.jsonl", TRAIN), fake_slack.add_file("b.jsonl", TRAIN)
    with pytest.raises(ValueError, match="at most 1"):
        fake_slack.view_submission_payload(form, {"training_upload": [a, b]})
    # A view never opened is completed the way Slack would hold it; raw entries pass as they are.
    raw = {"type": "external_select", "selected_option": option("file-x", "x.jsonl · 2 KB")}
    payload = fake_slack.view_submission_payload(copy.deepcopy(form), {"training_openai": raw, "epochs": 3})
    assert payload["view"]["id"].startswith("V") and payload["view"]["callback_id"] == "create_job"
    assert payload["view"]["state"]["values"]["training_openai"]["openai_file"] == raw
    assert payload["view"]["state"]["values"]["epochs"]["epochs"]["value"] == "3"
    bare = fake_slack.block_suggestion_payload("openai_file", "", block_id="somewhere")
    assert bare["view"]["blocks"][0]["block_id"] == "somewhere"


# -- FakeOpenAI: multipart uploads -------------------------------------------------------------------


def _upload(
    client: httpx.Client,
    name: str = "train.jsonl",
    data: bytes = TRAIN.encode(),
    purpose: str = "fine-tune",
    **kw: Any,
) -> httpx.Response:
    return client.post("/files", data={"purpose": purpose}, files={"file": (name, data)}, **kw)


def _client(fake: FakeOpenAI) -> httpx.Client:
    return httpx.Client(
        base_url=fake.base_url, headers={"Authorization": f"Bearer {fake.api_key}"}, timeout=5
    )


def test_upload_list_and_content(fake_openai: FakeOpenAI) -> None:
    with _client(fake_openai) as client:
        created = _upload(client)
        assert created.status_code == 200, created.text
        file = created.json()
        assert (file["filename"], file["purpose"], file["bytes"], file["status"]) == (
            "train.jsonl",
            "fine-tune",
            len(TRAIN.encode()),
            "processed",
        )
        assert client.get(f"/files/{file['id']}/content").content == TRAIN.encode()
        listed = client.get("/files", params={"purpose": "fine-tune", "order": "desc", "limit": 2}).json()
        assert [f["id"] for f in listed["data"]] == [file["id"], "file-val456"] and listed["has_more"]
        assert _upload(client, "data.jsonl", purpose="batch").status_code == 200
        only = client.get("/files", params={"purpose": "fine-tune"}).json()["data"]
        assert "data.jsonl" not in [f["filename"] for f in only]
    [upload, _batch] = fake_openai.uploads
    assert (upload.file_id, upload.filename, upload.purpose, upload.data) == (
        file["id"],
        "train.jsonl",
        "fine-tune",
        TRAIN.encode(),
    )
    assert fake_openai.requests_to("/files", "POST")[0].form == {
        "purpose": "fine-tune",
        "file": "<file train.jsonl>",
    }


def test_upload_refusals(fake_openai: FakeOpenAI) -> None:
    with _client(fake_openai) as client:
        wrong_purpose = _upload(client, purpose="training")
        assert wrong_purpose.status_code == 400 and wrong_purpose.json()["error"]["param"] == "purpose"
        not_jsonl = _upload(client, "train.csv")
        assert (not_jsonl.status_code, not_jsonl.json()["error"]["code"]) == (400, "invalid_file_format")
        fake_openai.max_upload_bytes = 100
        too_big = _upload(client)
        assert (too_big.status_code, too_big.json()["error"]["code"]) == (400, "file_too_large")
        no_file = client.post("/files", data={"purpose": "fine-tune"}, files={"other": ("x", b"y")})
        assert no_file.status_code == 400
        as_json = client.post("/files", json={"purpose": "fine-tune", "file": "x"})
        assert as_json.status_code == 400
    assert fake_openai.uploads == [] and set(fake_openai.files) == {"file-abc123", "file-val456"}
    fake_openai.reset()
    assert fake_openai.max_upload_bytes == 512 * 1024**2


def test_upload_faults(fake_openai: FakeOpenAI) -> None:
    with _client(fake_openai) as client:
        fake_openai.fail_next(500, path="/files", method="POST")
        fake_openai.fail_next(429, path="/files", method="POST", retry_after=2)
        assert _upload(client).status_code == 500
        limited = _upload(client)
        assert (limited.status_code, limited.headers["retry-after"]) == (429, "2")
        assert fake_openai.uploads == []
        # The upload lands, then the connection drops before the answer: the client cannot know.
        fake_openai.fail_next(path="/files", method="POST", kind="close", processed=True)
        with pytest.raises(httpx.TransportError):
            _upload(client)
        [landed] = fake_openai.uploads
        assert landed.file_id in fake_openai.files
        listed = client.get("/files", params={"purpose": "fine-tune", "limit": 1}).json()["data"]
        assert listed[0]["id"] == landed.file_id


def test_upload_idempotency_key(fake_openai: FakeOpenAI) -> None:
    with _client(fake_openai) as client:
        key = {"Idempotency-Key": "start-1"}
        first = _upload(client, headers=key).json()
        assert _upload(client, headers=key).json() == first  # the same file, not a second one
        reused = _upload(client, data=b'{"other": 1}\n', headers=key)
        assert (reused.status_code, reused.json()["error"]["code"]) == (400, "idempotency_key_reused")
        assert len(fake_openai.uploads) == 1
        fake_openai.idempotent_uploads = False  # OpenAI honouring it on uploads is unconfirmed
        assert _upload(client, headers=key).json()["id"] != first["id"]
        assert len(fake_openai.uploads) == 2


async def test_interactive_envelope_over_socket_mode(fake_slack: FakeSlack) -> None:
    async with aiohttp.ClientSession() as session:
        opened = await session.post(
            f"{fake_slack.api_url}apps.connections.open",
            headers={"Authorization": f"Bearer {fake_slack.app_token}"},
        )
        async with session.ws_connect((await opened.json())["url"]) as ws:
            assert (await ws.receive_json(timeout=2))["type"] == "hello"
            await fake_slack.wait_connected_async()
            payload = fake_slack.block_suggestion_payload("openai_file", "tra", block_id="training_openai")
            envelope_id = await fake_slack.send_interactive_async(payload)
            envelope = await ws.receive_json(timeout=2)
            assert (envelope["envelope_id"], envelope["type"]) == (envelope_id, "interactive")
            assert envelope["payload"] == payload and envelope["accepts_response_payload"]
            await ws.send_json({"envelope_id": envelope_id, "payload": {"options": []}})
            assert (await fake_slack.wait_for_ack_async(envelope_id))["payload"] == {"options": []}
