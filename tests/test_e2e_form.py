"""End to end: the create form opens within Slack's trigger window while OpenAI is slow.

`/finetune create` opens the form with the command's trigger_id before anything talks to OpenAI,
and the form's OpenAI-file menu loads its options separately, giving OpenAI part of Slack's 3 s and
saying so when that was not enough. The checks are Slack's own rules as the fake applies them (a
trigger_id refused 3 s after it was issued: `expired_trigger_id`) and what the menu answered; how
fast, in figures, is `python -m bench --only modal`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bot import modal
from tests.fakes import FakeOpenAI, FakeSlack
from tests.harness import Harness, start_bot

SLOW_OPENAI = 5.0  # every OpenAI call: longer than Slack's 3 s for a trigger or an options answer


@pytest.fixture
def h(fake_openai: FakeOpenAI, fake_slack: FakeSlack, tmp_path: Path) -> Iterator[Harness]:
    bot = start_bot(fake_openai, fake_slack, tmp_path)
    harness = Harness(bot, fake_openai, fake_slack)
    try:
        yield harness
    finally:
        fake_openai.latency = 0.0  # so the bot's shutdown does not wait on the slow fake
        assert bot.stop() == 0, bot.logs
    harness.assert_no_secrets()
    assert fake_openai.schema_errors == []


def menu_options(h: Harness, view: dict[str, Any], typed: str = "") -> list[dict[str, Any]]:
    """What the training-file menu of `view` offers when `typed` is typed into it."""
    payload = h.slack.block_suggestion_payload(
        modal.OPENAI_FILE_ACTION, typed, block_id=modal.TRAINING_OPENAI, view=view
    )
    response = h.interact(payload)
    assert response.status_code == 200, response.text
    options = response.json()["options"]
    assert isinstance(options, list)
    return options


def test_a_slow_openai_neither_stops_the_form_opening_nor_its_menu_answering(h: Harness) -> None:
    h.openai.add_file("support-tickets.jsonl")
    h.openai.latency = SLOW_OPENAI

    response, key = h.command("create")
    assert response.status_code == 200 and response.text == ""
    [opened] = h.slack.wait_for(lambda s: [v for v in s.views if v.method == "views.open"], timeout=10)
    # Slack accepted the trigger: the fake refuses one used 3 s or more after it was issued.
    assert opened.ok, (opened.error, opened.messages)
    assert opened.view["callback_id"] == modal.CREATE_VIEW_CALLBACK
    # Nothing was asked of OpenAI's files before the form opened: the menu loads them itself.
    assert all(r.time >= opened.time for r in h.openai.requests_to("/files", "GET"))

    view = h.slack.view(opened.view_id or "")
    [option] = menu_options(h, view)
    # OpenAI (5 s) had not answered when the menu did: the one option says why there are no files.
    assert option["value"] == modal.NO_FILE_VALUE
    assert "OpenAI is slow" in option["text"]["text"]
    [listing] = h.openai.requests_to("/files", "GET")
    assert listing.query["purpose"] == "fine-tune"

    # As the option suggests, typing again once OpenAI answers in time lists the files.
    h.openai.latency = 0.0
    values = [o["value"] for o in menu_options(h, view, "support")]
    assert values == [f["id"] for f in h.openai.files.values() if f["filename"] == "support-tickets.jsonl"]
    assert h.slack.responses_for(key) == []  # the command needed no "couldn't open the form" reply
