"""The pure parts of buttons and the new subcommands: bot/buttons.py, the parser, the renderers,
and the fake Slack's Block Kit checks for interactive elements (it must refuse what Slack would)."""

from __future__ import annotations

from typing import Any

import pytest
from slack_sdk.models.blocks import Block

from bot import buttons, render
from bot.commands import (
    CheckpointsCommand,
    ListCommand,
    ParseError,
    PauseCommand,
    ResumeCommand,
    parse_command,
)
from bot.models import Checkpoint, FineTuningJob
from tests.fakes.slack import _block_errors

NOW = 1_700_000_000
JOB_ID = "ftjob-abc123"


def job(status: str, job_id: str = JOB_ID) -> FineTuningJob:
    return FineTuningJob(id=job_id, status=status, model="gpt-4o-mini-2024-07-18", created_at=NOW - 60)


def action_ids(block: dict[str, Any]) -> list[str]:
    return [element["action_id"] for element in block["elements"]]


# -- job_actions ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("running", ["job_refresh", "job_events", "job_pause", "job_cancel", "job_checkpoints"]),
        ("paused", ["job_refresh", "job_events", "job_resume", "job_cancel", "job_checkpoints"]),
        ("queued", ["job_refresh", "job_events", "job_cancel"]),
        ("validating_files", ["job_refresh", "job_events", "job_cancel"]),
        ("succeeded", ["job_refresh", "job_events", "job_checkpoints"]),
        ("failed", ["job_refresh", "job_events", "job_checkpoints"]),
        ("cancelled", ["job_refresh", "job_events", "job_checkpoints"]),
        ("some_new_status", ["job_refresh", "job_events"]),
    ],
)
def test_buttons_fit_the_status(status: str, expected: list[str]) -> None:
    block = buttons.job_actions(job(status))
    assert block["type"] == "actions" and block["block_id"] == "job_actions"
    assert action_ids(block) == expected
    # Only the job id travels in a button; everything else is read fresh on click.
    assert {element["value"] for element in block["elements"]} == {JOB_ID}
    assert _block_errors([block]) == []
    Block.parse(block).validate_json()  # type: ignore[union-attr]


def test_cancel_asks_for_confirmation() -> None:
    [cancel] = [e for e in buttons.job_actions(job("running"))["elements"] if e["action_id"] == "job_cancel"]
    assert cancel["style"] == "danger"
    confirm = cancel["confirm"]
    assert confirm["text"]["text"] == f"Cancel {JOB_ID}? This cannot be undone."
    assert confirm["style"] == "danger"
    assert {"title", "text", "confirm", "deny"} <= set(confirm)


def test_longest_job_id_still_fits() -> None:
    long_id = "ftjob-" + "x" * 64
    block = buttons.job_actions(job("running", long_id))
    assert _block_errors([block]) == []
    Block.parse(block).validate_json()  # type: ignore[union-attr]


def test_a_value_that_is_no_job_id_is_not_put_in_a_button() -> None:
    block = buttons.job_actions(job("running", "ftjob-<!channel>"))
    assert all("value" not in element for element in block["elements"])
    assert "<!channel>" not in str(block)


def test_get_reply_carries_the_buttons() -> None:
    reply = render.render_job(job("paused"), NOW)
    assert reply.blocks[-1]["block_id"] == "job_actions"
    assert "job_resume" in action_ids(reply.blocks[-1])
    assert _block_errors(reply.blocks) == []


def test_list_with_a_next_page_has_the_button_and_stays_valid() -> None:
    jobs = [job("running", f"ftjob-{i:03d}{'x' * 60}") for i in range(100)]
    reply = render.render_job_list(jobs, True, NOW, next_page="list limit=100 after=ftjob-099")
    assert len(reply.blocks) <= 50
    assert reply.blocks[-1]["elements"][0]["action_id"] == "list_next_page"
    assert reply.blocks[-1]["elements"][0]["value"] == "list limit=100 after=ftjob-099"
    assert _block_errors(reply.blocks) == []


# -- the fake refuses what Slack would ----------------------------------------------------------------


def _button(action_id: str = "a", **extra: Any) -> dict[str, Any]:
    return {"type": "button", "action_id": action_id, "text": {"type": "plain_text", "text": "Go"}, **extra}


@pytest.mark.parametrize(
    ("blocks", "fragment"),
    [
        ([{"type": "actions", "elements": [_button("a"), _button("a")]}], "already exists"),
        (
            [
                {"type": "actions", "elements": [_button("a")]},
                {"type": "actions", "elements": [_button("a")]},
            ],
            "already exists",
        ),
        ([{"type": "actions", "elements": [_button(str(i)) for i in range(26)]}], "between 1 and 25"),
        ([{"type": "actions", "elements": [_button(text={"type": "plain_text", "text": "x" * 76})]}], "76"),
        ([{"type": "actions", "elements": [_button(value="v" * 2001)]}], "/value"),
        ([{"type": "actions", "elements": [_button("a" * 256)]}], "/action_id"),
        ([{"type": "actions", "elements": [_button(style="red")]}], "/style"),
        (
            [
                {
                    "type": "actions",
                    "elements": [
                        _button(
                            confirm={
                                **buttons.cancel_confirm(JOB_ID),
                                "confirm": {"type": "plain_text", "text": "y" * 31},
                            }
                        )
                    ],
                }
            ],
            "/confirm/confirm",
        ),
        (
            [
                {
                    "type": "actions",
                    "elements": [_button(confirm={"title": {"type": "plain_text", "text": "t"}})],
                }
            ],
            "missing required field",
        ),
    ],
)
def test_fake_slack_refuses_invalid_interactive_blocks(blocks: list[dict[str, Any]], fragment: str) -> None:
    errors = _block_errors(blocks)
    assert any(fragment in error for error in errors), errors


# -- the parser -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("pause ftjob-abc", PauseCommand("ftjob-abc")),
        ("resume ftjob-abc", ResumeCommand("ftjob-abc")),
        ("unpause ftjob-abc", ResumeCommand("ftjob-abc")),
        ("checkpoints ftjob-abc", CheckpointsCommand("ftjob-abc", 10)),
        ("checkpoints ftjob-abc limit=3", CheckpointsCommand("ftjob-abc", 3)),
        ("list status=running", ListCommand(status="running")),
        ("list status=Canceled", ListCommand(status="cancelled")),
        ("list mine", ListCommand(mine=True)),
        ("list mine status=paused limit=5", ListCommand(limit=5, status="paused", mine=True)),
        ("list status=validating-files", ListCommand(status="validating_files")),
        ("list after=ftjob-x limit=3", ListCommand(limit=3, after="ftjob-x")),
    ],
)
def test_new_subcommands_parse(text: str, expected: object) -> None:
    assert parse_command(text, default_model="m") == expected


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("pause", "needs a job id"),
        ("resume ftjob-a/../x", "not a job id"),
        ("checkpoints ftjob-a limit=0", "from 1 to 100"),
        ("list status=done", "`status` must be one of"),
        ("list yours", "didn't expect"),
        ("list mine mine", "didn't expect"),
        ("list after=../x", "`after` must be a job id"),
        ("pause ftjob-a limit=3", "not an option"),
    ],
)
def test_bad_new_subcommands_say_what_is_wrong(text: str, fragment: str) -> None:
    parsed = parse_command(text, default_model="m")
    assert isinstance(parsed, ParseError)
    assert fragment in parsed.message


def test_list_command_round_trips_through_its_text() -> None:
    command = ListCommand(limit=7, status="running", mine=True, after="ftjob-zzz")
    assert parse_command(command.as_text(), default_model="m") == command


def test_help_mentions_the_new_subcommands() -> None:
    text = str(render.render_help().blocks)
    for word in ("pause", "resume", "checkpoints", "status=running", "mine"):
        assert word in text


# -- renderers ------------------------------------------------------------------------------------------


def test_checkpoints_show_step_metrics_and_a_copyable_model_name() -> None:
    checkpoint = Checkpoint(
        id="ftckpt_1",
        created_at=NOW,
        fine_tuned_model_checkpoint="ft:gpt-4o-mini:acme::abc:ckpt-step-30",
        step_number=30,
        metrics={"step": 30.0, "train_loss": 0.25, "valid_loss": 0.5},
    )
    reply = render.render_checkpoints(JOB_ID, [checkpoint], False)
    text = str(reply.blocks)
    assert "*Step 30*" in text and "train loss 0.25" in text and "valid loss 0.5" in text
    assert "`ft:gpt-4o-mini:acme::abc:ckpt-step-30`" in text
    assert _block_errors(reply.blocks) == []


def test_no_checkpoints_yet() -> None:
    assert "No checkpoints yet" in render.render_checkpoints(JOB_ID, [], False).text


def test_a_stale_action_answers_with_the_current_state() -> None:
    reply = render.render_action_not_applicable(job("succeeded"), "cancel")
    assert "Nothing to cancel" in reply.text and "Succeeded" in reply.text
    assert "already ended" in str(reply.blocks)
