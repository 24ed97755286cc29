"""Hostile strings from OpenAI reach Slack inert, end to end.

OpenAI controls model names, fine-tuned model names, error codes and messages, event messages and
metadata. Each is set (through the fake, which accepts only what the spec allows) to markup Slack
would act on — `<!channel>`, `<!here>`, `<@U123>`, `<https://x|y>`, `&`, backticks, ``` fences — and
every reply and post the bot makes from it is checked: in mrkdwn nothing of it is live, yet it is
still shown (escaped), and a backtick cannot break out of a code span.
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
    with module_bot(workdir, POLL_INTERVAL_SECONDS="1", FINETUNE_ADMINS=USER) as harness:
        yield harness


@pytest.fixture
def h(harness: Harness) -> Iterator[Harness]:
    yield from fresh(harness)


def reply_to(h: Harness, text: str) -> dict[str, Any]:
    _, key = h.command(text, user_id=USER, channel_id=CHANNEL)
    reply = h.reply(key)
    assert "Something went wrong" not in str(reply)
    return reply


def outcome_of(h: Harness, job_id: str) -> list[RecordedMessage]:
    return [
        m
        for m in h.slack.messages
        if str(((m.params.get("metadata") or {}).get("event_payload") or {}).get("key", "")).startswith(
            job_id + ":"
        )
    ]


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


def test_get_shows_an_unknown_hostile_status_inert(h: Harness) -> None:
    job = h.openai.add_job(status="<!channel>_<@U123>")
    text = assert_inert(reply_to(h, f"get {job['id']}"))
    assert "&lt;!channel&gt;" in text


def test_list_shows_hostile_jobs_inert(h: Harness) -> None:
    now = int(time.time())
    h.openai.add_job(model=HOSTILE_MODEL, created_at=now - 30)
    h.openai.add_job(model="m", fine_tuned_model=HOSTILE_FT_MODEL, status="succeeded", created_at=now - 20)
    h.openai.add_job(id="ftjob-<!here>`x`", status="<@U123>", created_at=now - 10)
    text = assert_inert(reply_to(h, "list"))
    assert code_span(HOSTILE_MODEL) in text and code_span(HOSTILE_FT_MODEL) in text
    assert code_span("ftjob-<!here>`x`") in text


def test_events_show_hostile_messages_inert(h: Harness) -> None:
    job = h.openai.add_job(created_at=int(time.time()) - 100)
    for i, level in enumerate(["info", "warn", "error"]):
        h.openai.add_event(
            job["id"], f"{level}: {HOSTILE}", level=level, created_at=int(time.time()) - 50 + i
        )
    # A metrics event whose data is not numbers falls back to its (hostile) message.
    h.openai.add_event(job["id"], f"metrics {PING}", type="metrics", data={"step": PING, "train_loss": LINK})
    h.openai.add_event(job["id"], "x" * 297 + "<!channel>")  # the cut lands inside an entity
    text = assert_inert(reply_to(h, f"events {job['id']} limit=10"))
    assert "warn: &lt;!channel&gt;" in text and "error: &lt;!channel&gt;" in text
    assert "metrics &lt;!channel&gt;" in text


def test_long_hostile_error_is_cut_without_breaking_an_entity(h: Harness) -> None:
    for pad in range(1494, 1501):
        job = h.openai.add_job(
            status="failed", error={"code": "x", "message": "y" * pad + "<!channel>", "param": None}
        )
        assert_inert(reply_to(h, f"get {job['id']}"))


# -- posts in the channel ------------------------------------------------------------------------


def test_watch_announcement_of_a_hostile_job_is_inert(h: Harness) -> None:
    job = h.openai.add_job(model=HOSTILE_MODEL, training_file="file-<https://x.example|y>", status="running")
    response, _ = h.command(f"watch {job['id']}", user_id=USER, channel_id=CHANNEL)
    assert response.status_code == 200
    [post] = h.slack.wait_for(lambda s: s.messages_in(CHANNEL))
    text = assert_inert(as_message(post))
    assert code_span(HOSTILE_MODEL) in text and "<@U42>" in text
    # Finish it so the watch ends within this test.
    h.openai.set_status(job["id"], "cancelled")
    h.slack.wait_for(lambda s: outcome_of(h, job["id"]), timeout=15)
    assert_inert(as_message(outcome_of(h, job["id"])[0]))


@pytest.mark.parametrize(
    ("status", "fields", "shown"),
    [
        (
            "succeeded",
            {"fine_tuned_model": HOSTILE_FT_MODEL, "model": HOSTILE_MODEL, "metadata": HOSTILE_METADATA},
            [code_span(HOSTILE_FT_MODEL)],
        ),
        (
            "failed",
            {"error": HOSTILE_ERROR, "model": HOSTILE_MODEL},
            [code_span(HOSTILE_ERROR["code"]), "Training failed: &lt;!channel&gt;"],
        ),
        (
            "failed",
            {"error": {"code": "e", "message": "z" * 1495 + "<!channel>", "param": None}},
            [":x:"],
        ),
        ("cancelled", {"model": HOSTILE_MODEL, "metadata": HOSTILE_METADATA}, ["was cancelled"]),
    ],
    ids=["succeeded", "failed", "failed-long-message", "cancelled"],
)
def test_outcome_notification_of_a_hostile_job_is_inert(
    h: Harness, status: str, fields: dict[str, Any], shown: list[str]
) -> None:
    response, _ = h.command("create file-abc123 suffix=esc", user_id=USER, channel_id=CHANNEL)
    assert response.status_code == 200
    [announcement] = h.slack.wait_for(lambda s: s.messages_in(CHANNEL))
    [job_id] = h.openai.jobs
    h.openai.set_status(job_id, status, **fields)
    h.slack.wait_for(lambda s: outcome_of(h, job_id), timeout=15)
    [outcome] = outcome_of(h, job_id)
    assert outcome.thread_ts == announcement.ts
    text = assert_inert(as_message(outcome))
    for fragment in shown:
        assert fragment in text
    # The announcement is edited to show the final state (with the hostile model, if any): inert too.
    # Wait for the edit that shows the end (the card's status line names it), not merely an edit.
    h.slack.wait_for(
        lambda s: any(
            m.ts == announcement.ts and status.capitalize() in (m.text or "") + repr(m.blocks)
            for m in s.messages_in(CHANNEL)
        ),
        timeout=10,
        message=f"the card to show {status}",
    )
    [edited] = [m for m in h.slack.messages_in(CHANNEL) if m.ts == announcement.ts]
    edited_text = assert_inert(as_message(edited))
    if "model" in fields:
        assert code_span(HOSTILE_MODEL) in edited_text


def test_create_reply_echoes_openais_hostile_rejection_inert(h: Harness) -> None:
    h.openai.fail_next(
        400,
        path="/fine_tuning/jobs",
        method="POST",
        body={
            "error": {
                "message": f"Model {HOSTILE_MODEL} is not available: {HOSTILE}",
                "type": "invalid_request_error",
                "param": "<!channel>",
                "code": "model_not_available",
            }
        },
    )
    text = assert_inert(reply_to(h, "create file-abc123"))
    assert "is not available" in text and code_span("<!channel>") in text
    assert h.slack.messages == []
