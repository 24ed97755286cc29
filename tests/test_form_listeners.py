"""The create form's Slack surfaces, in-process: a real Bolt AsyncApp with every listener the
server registers, a real CommandRunner, FineTuningClient and SQLite store, against the fake Slack
and fake OpenAI. Requests are dispatched to Bolt directly (no HTTP server, no signatures: the
end-to-end tests cover those), and each test waits for the lazy listeners it started to finish.

The fake Slack does not serve views.open yet (helper B adds it), so each test serves it here.
"""

from __future__ import annotations

import asyncio
import json
import urllib.parse
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from slack_bolt.async_app import AsyncApp
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_bolt.response import BoltResponse
from slack_sdk.web.async_client import AsyncWebClient

from bot import modal
from bot.database import open_database
from bot.inflight import InFlight
from bot.listeners import register_listeners, views
from bot.openai_client import FineTuningClient, build_http_client
from bot.runner import CommandRunner, Invocation
from bot.slack_app import BotIdentity, WorkspaceAuthorizer
from tests.fakes import DEFAULT_BOT_TOKEN, FakeOpenAI, FakeSlack

MODEL = "gpt-4o-mini-2024-07-18"
TRAIN = {"id": "F0TRAIN1", "name": "train.jsonl", "size": 2_400_000, "filetype": "text"}


@dataclass
class Bot:
    app: AsyncApp
    runner: CommandRunner
    inflight: InFlight
    slack: FakeSlack
    openai: FakeOpenAI
    opened: list[dict[str, Any]] = field(default_factory=list)  # views.open calls
    open_error: str | None = None

    async def send(self, body: str) -> BoltResponse:
        """Dispatch like Slack's POST to /slack/events, then let the lazy listeners it started finish."""
        before = asyncio.all_tasks()
        request = AsyncBoltRequest(body=body, headers={"content-type": ["application/x-www-form-urlencoded"]})
        response = await self.app.async_dispatch(request)
        started = asyncio.all_tasks() - before - {asyncio.current_task()}
        if started:
            await asyncio.wait_for(asyncio.gather(*started), 20)
        return response

    async def interact(self, payload: dict[str, Any]) -> BoltResponse:
        return await self.send(urllib.parse.urlencode({"payload": json.dumps(payload)}))

    async def command(self, text: str, **kwargs: Any) -> tuple[BoltResponse, dict[str, str]]:
        payload = self.slack.slash_command_payload(text, **kwargs)
        return await self.send(urllib.parse.urlencode(payload)), payload

    def replies(self, response_url: str) -> list[str]:
        return [json.dumps(r.json) for r in self.slack.responses_for(FakeSlack.response_key(response_url))]


@pytest.fixture
async def bot(fake_slack: FakeSlack, fake_openai: FakeOpenAI, tmp_path: Path) -> AsyncIterator[Bot]:
    yield await build_bot(fake_slack, fake_openai, tmp_path)


async def build_bot(
    fake_slack: FakeSlack, fake_openai: FakeOpenAI, tmp_path: Path, allowed: frozenset[str] = frozenset()
) -> Bot:
    store = open_database(f"sqlite:///{tmp_path / 'bot.db'}", wait_seconds=0)
    http = build_http_client(timeout=5)
    openai = FineTuningClient(http, api_key=fake_openai.api_key, base_url=fake_openai.base_url)
    slack_client = AsyncWebClient(token=DEFAULT_BOT_TOKEN, base_url=fake_slack.api_url)
    runner = CommandRunner(openai, slack_client, store, default_model=MODEL)
    identity = BotIdentity(team_id="T0001", user_id="UBOT", bot_id="BBOT")
    app = AsyncApp(
        client=AsyncWebClient(base_url=fake_slack.api_url),
        authorize=WorkspaceAuthorizer(DEFAULT_BOT_TOKEN, identity, slack_client),
        signing_secret="unused",
        request_verification_enabled=False,
        process_before_response=True,
    )
    inflight = InFlight()
    register_listeners(app, runner, default_model=MODEL, inflight=inflight, allowed_channels=allowed)
    bot = Bot(app, runner, inflight, fake_slack, fake_openai)

    def views_open(params: dict[str, Any]) -> dict[str, Any]:
        view = params["view"] if isinstance(params["view"], dict) else json.loads(params["view"])
        bot.opened.append({"trigger_id": params.get("trigger_id"), "view": view})
        if bot.open_error:
            return {"ok": False, "error": bot.open_error}
        return {"ok": True, "view": {**view, "id": f"V{len(bot.opened):08d}"}}

    fake_slack.add_method("views.open", views_open)
    return bot


# ---------------------------------------------------------------------------------------------- payloads
# Minimal builders until helper B's FakeSlack.view_submission_payload & co. land.


def submission(view: dict[str, Any], values: dict[str, Any], *, user_id: str = "U123") -> dict[str, Any]:
    return {
        "type": "view_submission",
        "team": {"id": "T0001", "domain": "acme"},
        "user": {"id": user_id, "username": "alice", "name": "alice", "team_id": "T0001"},
        "api_app_id": "A0001",
        "token": "fake-verification-token",
        "trigger_id": f"3000000.0001.{uuid.uuid4().hex}",
        "view": {**view, "id": "V0FORM", "state": {"values": values}},
        "response_urls": [],
        "is_enterprise_install": False,
    }


def suggestion(
    value: str, *, view: dict[str, Any] | None, block_id: str = modal.TRAINING_OPENAI
) -> dict[str, Any]:
    return {
        "type": "block_suggestion",
        "user": {"id": "U123", "username": "alice", "name": "alice", "team_id": "T0001"},
        "team": {"id": "T0001", "domain": "acme"},
        "api_app_id": "A0001",
        "token": "fake-verification-token",
        "action_id": modal.OPENAI_FILE_ACTION,
        "block_id": block_id,
        "value": value,
        "container": {"type": "view", "view_id": "V0FORM"},
        "view": view,
    }


def message_action(
    slack: FakeSlack, files: list[dict[str, Any]], *, channel_id: str = "C123"
) -> dict[str, Any]:
    return {
        "type": "message_action",
        "callback_id": "finetune_on_file",
        "trigger_id": f"4000000.0001.{uuid.uuid4().hex}",
        "team": {"id": "T0001", "domain": "acme"},
        "user": {"id": "U123", "username": "alice", "team_id": "T0001"},
        "channel": {"id": channel_id, "name": "ml"},
        "message_ts": "1700000000.000100",
        "message": {"type": "message", "user": "U123", "ts": "1700000000.000100", "text": "", "files": files},
        "response_url": slack.response_url(),
        "token": "fake-verification-token",
        "is_enterprise_install": False,
    }


def form_view(channel_id: str = "C123", **kwargs: Any) -> dict[str, Any]:
    return modal.create_view(channel_id=channel_id, default_model=MODEL, models=modal.BASE_MODELS, **kwargs)


def values(**fields: Any) -> dict[str, Any]:
    """state.values for the fields given (the rest empty, as Slack sends untouched optional inputs)."""
    out: dict[str, Any] = {}
    for block_id, value in fields.items():
        if block_id in (modal.TRAINING_UPLOAD, modal.VALIDATION_UPLOAD):
            out[block_id] = {modal.FILE_ACTION: {"type": "file_input", "files": value}}
        elif block_id in (modal.TRAINING_OPENAI, modal.VALIDATION_OPENAI):
            out[block_id] = {
                modal.OPENAI_FILE_ACTION: {"type": "external_select", "selected_option": {"value": value}}
            }
        else:
            out[block_id] = {modal.VALUE_ACTION: {"type": "plain_text_input", "value": value}}
    return out


def ack_body(response: BoltResponse) -> dict[str, Any]:
    return json.loads(response.body) if response.body else {}


# ---------------------------------------------------------------------------------------------- opening


async def test_create_alone_opens_the_form_before_asking_openai_anything(bot: Bot) -> None:
    response, payload = await bot.command("create", channel_id="C777")
    assert response.status == 200 and response.body == ""  # acknowledged empty, at once
    [opened] = bot.opened
    assert opened["trigger_id"] == payload["trigger_id"]
    assert opened["view"]["callback_id"] == modal.CREATE_VIEW_CALLBACK
    assert modal.channel_of(opened["view"]) == "C777"
    assert bot.openai.requests == []  # nothing before views.open: the trigger lives 3 seconds
    assert bot.replies(payload["response_url"]) == []


async def test_a_form_that_cannot_open_is_explained_with_what_to_type_instead(bot: Bot) -> None:
    bot.open_error = "expired_trigger_id"
    _, payload = await bot.command("create")
    [reply] = bot.replies(payload["response_url"])
    assert "only 3 seconds" in reply and "/finetune create file-abc123" in reply


async def test_the_help_button_opens_the_form(bot: Bot) -> None:
    response, _ = await bot.command("help")
    assert "open_create_form" in response.body  # the help (in the ack) carries the button
    click = bot.slack.block_actions_payload(
        "open_create_form", "", block_id="help_actions", is_ephemeral=True
    )
    assert (await bot.interact(click)).status == 200
    [opened] = bot.opened
    assert opened["trigger_id"] == click["trigger_id"]
    assert opened["view"]["callback_id"] == modal.CREATE_VIEW_CALLBACK


async def test_the_help_button_is_refused_outside_the_allowed_channels(
    fake_slack: FakeSlack, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    bot = await build_bot(fake_slack, fake_openai, tmp_path, allowed=frozenset({"CALLOWED"}))
    click = bot.slack.block_actions_payload("open_create_form", "", channel_id="COTHER", is_ephemeral=True)
    await bot.interact(click)
    assert bot.opened == []
    [reply] = bot.replies(click["response_url"])
    assert "isn't enabled in this channel" in reply


# ---------------------------------------------------------------------------------------------- submitting


async def test_problems_come_back_on_their_fields_and_nothing_starts(bot: Bot) -> None:
    response = await bot.interact(submission(form_view(), values(epochs="0", seed="-1")))
    body = ack_body(response)
    assert body["response_action"] == "errors"
    assert set(body["errors"]) == {modal.TRAINING_UPLOAD, modal.EPOCHS, modal.SEED}
    assert "from 1 to 50" in body["errors"][modal.EPOCHS]
    assert bot.openai.requests == [] and bot.slack.messages == [] and bot.slack.ephemerals == []


async def test_a_file_already_in_openai_starts_the_job_as_create_does_and_announces_it(bot: Bot) -> None:
    file = bot.openai.add_file("train.jsonl")
    payload = submission(
        form_view(channel_id="C555"),
        values(**{modal.TRAINING_OPENAI: file["id"], modal.SUFFIX: "support", modal.EPOCHS: "3"}),
    )
    response = await bot.interact(payload)
    assert response.status == 200 and response.body == ""  # closes the form
    [create] = bot.openai.requests_to("/fine_tuning/jobs", "POST")
    assert create.json["training_file"] == file["id"] and create.json["model"] == MODEL
    assert create.json["suffix"] == "support"
    assert create.json["method"] == {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 3}}}
    # The submission's trigger_id is the create's key, like a command's.
    assert create.headers["idempotency-key"] == payload["trigger_id"]
    assert create.json["metadata"]["slack_channel"] == "C555"
    [announcement] = bot.slack.messages_in("C555")
    assert "<@U123>" in (announcement.text or "") + json.dumps(announcement.blocks)
    assert bot.slack.ephemerals == []  # the announcement says it all


async def test_an_openai_refusal_reaches_the_submitter_privately(bot: Bot) -> None:
    bot.openai.fail_next(400, path="/fine_tuning/jobs", method="POST")
    await bot.interact(submission(form_view(), values(**{modal.TRAINING_OPENAI: "file-abc"})))
    [ephemeral] = bot.slack.ephemerals
    assert (ephemeral.channel, ephemeral.user) == ("C123", "U123")
    assert bot.slack.messages == []


async def test_when_the_channel_refuses_an_ephemeral_the_submitter_gets_a_dm(bot: Bot) -> None:
    bot.openai.fail_next(400, path="/fine_tuning/jobs", method="POST")
    bot.slack.fail_next("chat.postEphemeral", error="channel_not_found")
    await bot.interact(submission(form_view(), values(**{modal.TRAINING_OPENAI: "file-abc"})))
    assert bot.slack.ephemerals == []
    [dm] = bot.slack.messages
    assert dm.channel == "DU123"


async def test_an_uploaded_file_is_handed_to_the_training_check(
    bot: Bot, monkeypatch: pytest.MonkeyPatch
) -> None:
    checked: list[tuple[modal.CreateForm, Invocation]] = []

    async def check(form: modal.CreateForm, invocation: Invocation) -> None:
        checked.append((form, invocation))

    monkeypatch.setattr(bot.runner, "check_training_upload", check)
    payload = submission(form_view(channel_id="C555"), values(**{modal.TRAINING_UPLOAD: [TRAIN]}))
    assert (await bot.interact(payload)).body == ""
    [(form, invocation)] = checked
    assert form.training_upload is not None and form.training_upload.id == "F0TRAIN1"
    assert invocation == Invocation(
        "T0001", "C555", "U123", trigger_id=payload["trigger_id"], response_url=None
    )
    assert bot.openai.requests == []


async def test_a_failing_training_check_is_told_not_swallowed(bot: Bot) -> None:
    # Until the lead's training flow replaces the stub, it raises: the user still hears something.
    await bot.interact(submission(form_view(), values(**{modal.TRAINING_UPLOAD: [TRAIN]})))
    [ephemeral] = bot.slack.ephemerals
    assert ephemeral.user == "U123" and "went wrong" in (ephemeral.text or "").lower()


async def test_a_form_from_a_channel_not_allowed_is_refused_on_the_form(
    fake_slack: FakeSlack, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    bot = await build_bot(fake_slack, fake_openai, tmp_path, allowed=frozenset({"CALLOWED"}))
    response = await bot.interact(
        submission(form_view("COTHER"), values(**{modal.TRAINING_OPENAI: "file-a"}))
    )
    body = ack_body(response)
    assert body["response_action"] == "errors"
    assert "isn't enabled" in body["errors"][modal.TRAINING_UPLOAD]
    assert bot.openai.requests == []


async def test_a_submission_during_shutdown_keeps_the_form_open(bot: Bot) -> None:
    bot.inflight.close()
    ref = modal.SlackFileRef("F0ABC", "t.jsonl", 1, None)
    response = await bot.interact(submission(form_view(preselected_upload=ref), {}))
    body = ack_body(response)
    assert body["response_action"] == "errors"
    assert "restarting" in body["errors"][modal.VALIDATION_UPLOAD]  # the first field this form has


# ------------------------------------------------------------------------------------------ the file menus


async def test_the_menu_lists_fine_tune_files_newest_first_filtered_by_name(bot: Bot) -> None:
    bot.openai.add_file("support-old.jsonl", created_at=1_700_000_000)
    bot.openai.add_file("other.jsonl", created_at=1_700_000_100)
    newest = bot.openai.add_file("SUPPORT-new.jsonl", created_at=1_700_000_200)
    bot.openai.add_file("results.csv", purpose="fine-tune-results", created_at=1_700_000_300)
    body = ack_body(await bot.interact(suggestion("support", view=form_view())))
    texts = [o["text"]["text"] for o in body["options"]]
    assert [t.split(" · ")[0] for t in texts] == ["SUPPORT-new.jsonl", "support-old.jsonl"]
    assert body["options"][0]["value"] == newest["id"]
    # Nothing typed: every fine-tune file (the fake's seed files too), newest first, no result files.
    everything = ack_body(await bot.interact(suggestion("", view=form_view())))
    shown = [o["value"] for o in everything["options"]]
    files = bot.openai.files
    assert {files[v]["purpose"] for v in shown} == {"fine-tune"}
    assert len(shown) == sum(f["purpose"] == "fine-tune" for f in files.values())
    created = [files[v]["created_at"] for v in shown]
    assert created == sorted(created, reverse=True)
    [listing, *_] = bot.openai.requests_to("/files", "GET")
    assert listing.query["purpose"] == "fine-tune" and listing.query["order"] == "desc"


async def test_a_slow_openai_gets_a_menu_that_says_so_in_time(
    bot: Bot, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(views, "OPTIONS_SECONDS", 0.05)
    bot.openai.latency = 2.0
    body = ack_body(await bot.interact(suggestion("", view=form_view())))
    [option] = body["options"]
    assert "slow" in option["text"]["text"] and option["value"] == modal.NO_FILE_VALUE


async def test_a_failing_openai_gets_a_menu_that_says_so(bot: Bot) -> None:
    bot.openai.fail_next(401, path="/files", method="GET")
    body = ack_body(await bot.interact(suggestion("", view=form_view())))
    [option] = body["options"]
    assert "couldn't list" in option["text"]["text"]


async def test_the_menu_lists_nothing_for_a_channel_not_allowed(
    fake_slack: FakeSlack, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    bot = await build_bot(fake_slack, fake_openai, tmp_path, allowed=frozenset({"CALLOWED"}))
    bot.openai.add_file("secret.jsonl")
    body = ack_body(await bot.interact(suggestion("", view=form_view("COTHER"))))
    assert [o["value"] for o in body["options"]] == [modal.NO_FILE_VALUE]
    assert bot.openai.requests == []


# ---------------------------------------------------------------------------------------------- the shortcut


async def test_the_shortcut_opens_the_form_with_the_messages_jsonl(bot: Bot) -> None:
    payload = message_action(bot.slack, [{"id": "F0PNG", "name": "loss.png"}, TRAIN])
    assert (await bot.interact(payload)).body == ""
    [opened] = bot.opened
    assert opened["trigger_id"] == payload["trigger_id"]
    metadata = json.loads(opened["view"]["private_metadata"])
    assert metadata == {
        "channel_id": "C123",
        "upload": {"id": "F0TRAIN1", "name": "train.jsonl", "size": 2_400_000, "filetype": "text"},
    }
    assert bot.replies(payload["response_url"]) == []


@pytest.mark.parametrize(
    ("files", "fragment"),
    [
        ([{"id": "F0CSV", "name": "train.csv"}], "no `.jsonl` file (only `train.csv`)"),
        ([TRAIN, {**TRAIN, "id": "F0OTHER"}], "has 2 `.jsonl` files"),
        ([], "has no file"),
    ],
)
async def test_the_shortcut_explains_a_message_without_one_jsonl(
    bot: Bot, files: list[dict[str, Any]], fragment: str
) -> None:
    payload = message_action(bot.slack, files)
    await bot.interact(payload)
    assert bot.opened == []
    [reply] = bot.replies(payload["response_url"])
    assert fragment in reply


async def test_the_shortcut_is_refused_outside_the_allowed_channels(
    fake_slack: FakeSlack, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    bot = await build_bot(fake_slack, fake_openai, tmp_path, allowed=frozenset({"CALLOWED"}))
    payload = message_action(bot.slack, [TRAIN], channel_id="COTHER")
    await bot.interact(payload)
    assert bot.opened == []
    [reply] = bot.replies(payload["response_url"])
    assert "isn't enabled in this channel" in reply


# ---------------------------------------------------------------------------------------------- files


async def test_files_lists_the_fine_tune_files(bot: Bot) -> None:
    latest = max(f["created_at"] for f in bot.openai.files.values())  # the fake's seed files
    bot.openai.add_file("a.jsonl", created_at=latest + 100)
    bot.openai.add_file("b.jsonl", created_at=latest + 200)
    _, payload = await bot.command("files limit=1")
    [reply] = bot.replies(payload["response_url"])
    assert "b.jsonl" in reply and "a.jsonl" not in reply and "most recent" in reply
    [listing] = bot.openai.requests_to("/files", "GET")
    assert listing.query == {"purpose": "fine-tune", "order": "desc", "limit": "1"}
