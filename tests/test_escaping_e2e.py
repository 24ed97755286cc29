"""Hostile strings from OpenAI reach Slack inert, end to end.

OpenAI controls model names, fine-tuned model names, error codes and messages, event messages and
metadata. Each is set (through the fake, which accepts only what the spec allows) to markup Slack
would act on — `<!channel>`, `<!here>`, `<@U123>`, `<https://x|y>`, `&`, backticks, ``` fences — and
every reply and post the bot makes from it is checked: in mrkdwn nothing of it is live, yet it is
still shown (escaped), and a backtick cannot break out of a code span.

Here a served process answers `get` on a job hostile in every field; the other commands, the
posts (announcements, outcomes, the card's final edit) and OpenAI's hostile rejection run on the
production parts in-process: tests/test_inprocess_escaping.py, with this module's checks.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import pytest

from bot.render import escape
from tests.fakes.slack import RecordedMessage, _block_errors
from tests.harness import Harness, fresh, module_bot

USER = "U42"  # the person running the commands; <@U42> is the bot's own, legitimate mention
CHANNEL = "CESC"

PING = "<!channel> <!here> <!everyone> <@U123> <!subteam^S1|@ml>"
LINK = "<https://x.example|y> <mailto:a@b.example|m> <#C999|general>"
HOSTILE = f"{PING} {LINK} & &amp; &lt;!channel&gt; `tick` ```fence <!here>```"
HOSTILE_MODEL = "gpt-4o`<!channel>`&<@U123>"
HOSTILE_FT_MODEL = "ft:gpt-4o:<!here>:<https://x.example|y>:`x`"
HOSTILE_ERROR = {"code": "bad_<!channel>`x`", "message": f"Training failed: {HOSTILE}", "param": "<@U123>"}
HOSTILE_METADATA = {"team<!here>": HOSTILE[:500], "owner": "<@U123> & <!channel>", "`k`": "```<!here>```"}

# The bot's own markup: date tokens, and the mention of the user who ran the command.
_LEGIT = re.compile(r"<!date\^\d+\^[^|<>]*\|[^<>]*>|<@" + USER + r">")


def mrkdwn_texts(message: dict[str, Any]) -> list[str]:
    """Every string Slack parses as mrkdwn: the top-level text (notifications) and mrkdwn objects.

    plain_text objects (headers) are shown exactly as sent, so markup there is inert already."""
    found = [message.get("text") or ""]

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            if value.get("type") == "mrkdwn" and isinstance(value.get("text"), str):
                found.append(value["text"])
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(message.get("blocks") or [])
    return found


def assert_inert(message: dict[str, Any]) -> str:
    """No live mention, link or entity from OpenAI; returns the mrkdwn joined, for `in` checks."""
    texts = mrkdwn_texts(message)
    for text in texts:
        rest = _LEGIT.sub("", text)
        assert "<" not in rest and ">" not in rest, f"raw markup in mrkdwn: {text!r}"
        assert re.search(r"&(?!amp;|lt;|gt;)", rest) is None, f"raw & in mrkdwn: {text!r}"
        assert not re.search(r"&(?:a|am|amp|l|lt|g|gt)?…", rest), f"an entity cut in half: {text!r}"
    assert _block_errors(message.get("blocks") or []) == []
    return "\n".join(texts)


def as_message(m: RecordedMessage) -> dict[str, Any]:
    return {"text": m.text, "blocks": m.blocks}


def code_span(value: str) -> str:
    """How a value must look inside a code span: backticks neutralised, then escaped."""
    return "`" + escape(value.replace("`", "'")) + "`"


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    workdir = tmp_path_factory.mktemp("escaping")
    with module_bot(workdir, FINETUNE_ADMINS=USER) as harness:
        yield harness


@pytest.fixture
def h(harness: Harness) -> Iterator[Harness]:
    yield from fresh(harness)


def reply_to(h: Harness, text: str) -> dict[str, Any]:
    _, key = h.command(text, user_id=USER, channel_id=CHANNEL)
    reply = h.reply(key)
    assert "Something went wrong" not in str(reply)
    return reply


# -- read commands ---------------------------------------------------------------------------------


def test_get_shows_hostile_fields_inert(h: Harness) -> None:
    job = h.openai.add_job(
        model=HOSTILE_MODEL,
        fine_tuned_model=HOSTILE_FT_MODEL,
        training_file="file-<!channel>",
        validation_file="file-`x`<@U123>",
        status="failed",
        finished_at=int(time.time()),
        error=HOSTILE_ERROR,
        metadata=HOSTILE_METADATA,
    )
    text = assert_inert(reply_to(h, f"get {job['id']}"))
    assert code_span(HOSTILE_MODEL) in text
    assert code_span(HOSTILE_FT_MODEL) in text
    assert code_span("file-<!channel>") in text and code_span("file-`x`<@U123>") in text
    assert code_span(HOSTILE_ERROR["code"]) in text and code_span(HOSTILE_ERROR["param"]) in text
    assert "Training failed: &lt;!channel&gt; &lt;!here&gt;" in text
    assert "&amp;lt;!channel&amp;gt;" in text  # already-escaped text is shown as typed, not unescaped
    assert code_span("team<!here>") in text and "&lt;@U123&gt; &amp; &lt;!channel&gt;" in text
