"""Unit tests for bot.render: escaping, words, limits. Plain values in, Slack payloads out."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from slack_sdk.models.blocks import Block

from bot import render
from bot.commands import EXAMPLES, USAGE, ParseError
from bot.models import FineTuningJob, JobEvent, OpenAIFile
from bot.openai_client import (
    AuthenticationError,
    BadRequestError,
    ConflictError,
    NotFoundError,
    OpenAIError,
    PermissionDeniedError,
    QuotaExceededError,
    RateLimitError,
    ServerError,
    UnavailableError,
)
from bot.render import Reply

NOW = 1_700_000_000
HOSTILE = "<!channel> <!here> <@U123> <https://evil|click> & `tick` ```fence``` <!subteam^S1>"
# What must never survive from HOSTILE into mrkdwn: each would ping, link or mention.
LIVE = ("<!channel", "<!here", "<@U123>", "<https://evil", "<!subteam")


def job(**overrides: Any) -> FineTuningJob:
    data: dict[str, Any] = {
        "object": "fine_tuning.job",
        "id": "ftjob-abc123",
        "model": "gpt-4o-mini-2024-07-18",
        "created_at": NOW - 7500,
        "finished_at": None,
        "fine_tuned_model": None,
        "organization_id": "org-123",
        "result_files": [],
        "status": "running",
        "validation_file": None,
        "training_file": "file-train1",
        "hyperparameters": {"n_epochs": "auto", "batch_size": "auto", "learning_rate_multiplier": "auto"},
        "trained_tokens": None,
        "error": None,
        "seed": 42,
        "estimated_finish": NOW + 1200,
        "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 3}}},
        "metadata": None,
    }
    data.update(overrides)
    return FineTuningJob.from_api(data)


def event(message: str, created_at: int = NOW, level: str = "info", **extra: Any) -> JobEvent:
    return JobEvent.from_api(
        {
            "object": "fine_tuning.job.event",
            "id": f"ftevent-{created_at}",
            "created_at": created_at,
            "level": level,
            "message": message,
            **extra,
        }
    )


def strings(value: Any, plain: bool = False) -> Iterator[tuple[str, bool]]:
    """Every string in a payload, flagged when it sits in a plain_text object (shown as typed)."""
    if isinstance(value, str):
        yield value, plain
    elif isinstance(value, dict):
        inside = plain or value.get("type") == "plain_text"
        for item in value.values():
            yield from strings(item, inside)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item, plain)


def mrkdwn(reply: Reply) -> list[str]:
    return [text for text, plain in strings(reply.as_kwargs()) if not plain]


def everything(reply: Reply) -> str:
    return "\n".join(text for text, _ in strings(reply.as_kwargs()))


def assert_fits_slack(reply: Reply) -> None:
    assert len(reply.blocks) <= 50
    assert len(reply.text) <= 40000
    for block in reply.blocks:
        Block.parse(block).validate_json()  # type: ignore[union-attr]
        if block["type"] == "section":
            assert len(block.get("text", {}).get("text", "")) <= 3000
            assert len(block.get("fields", [])) <= 10
            assert all(len(field["text"]) <= 2000 for field in block.get("fields", []))
        if block["type"] == "header":
            assert len(block["text"]["text"]) <= 150
        if block["type"] == "context":
            assert len(block["elements"]) <= 10


# ---------------------------------------------------------------------------------------------- pieces


@pytest.mark.parametrize(
    ("raw", "escaped"),
    [
        ("plain", "plain"),
        ("a & b", "a &amp; b"),
        ("<!channel>", "&lt;!channel&gt;"),
        ("&lt;", "&amp;lt;"),
        ("`code` *bold*", "`code` *bold*"),
    ],
)
def test_escape(raw: str, escaped: str) -> None:
    assert render.escape(raw) == escaped


@pytest.mark.parametrize(
    ("text", "limit", "expected"),
    [
        ("abc", 3, "abc"),
        ("abcdef", 4, "abc…"),
        ("x&amp;yz", 5, "x…"),  # would end in `&am`
        ("x&amp;yz", 7, "x&amp;…"),
        ("ab&lt;cd", 5, "ab…"),
        ("ab&gt;", 4, "ab…"),
        ("abc", 0, ""),
    ],
)
def test_truncate_never_splits_an_entity(text: str, limit: int, expected: str) -> None:
    assert render._truncate(text, limit) == expected
    assert len(render._truncate(text, limit)) <= limit


@pytest.mark.parametrize(
    ("ts", "fmt", "expected"),
    [
        (1_700_000_000, None, "<!date^1700000000^{date_short_pretty} at {time}|2023-11-14 22:13 UTC>"),
        (0, "{time}", "<!date^0^{time}|1970-01-01 00:00 UTC>"),
    ],
)
def test_date_token(ts: int, fmt: str | None, expected: str) -> None:
    assert (render.date_token(ts) if fmt is None else render.date_token(ts, fmt)) == expected


@pytest.mark.parametrize(
    ("seconds", "words"),
    [
        (0, "0 seconds"),
        (-5, "0 seconds"),
        (1, "1 second"),
        (45, "45 seconds"),
        (59.6, "1 minute"),
        (60, "1 minute"),
        (61, "1 minute 1 second"),
        (3600, "1 hour"),
        (7500, "2 hours 5 minutes"),
        (7505, "2 hours 5 minutes"),
        (86400 + 300, "1 day"),
        (3 * 86400 + 4 * 3600 + 59, "3 days 4 hours"),
        (86400 + 3600, "1 day 1 hour"),
    ],
)
def test_duration_words(seconds: float, words: str) -> None:
    assert render.duration_words(seconds) == words


@pytest.mark.parametrize(
    ("ago", "words"),
    [
        (0, "just now"),
        (-600, "just now"),
        (59, "just now"),
        (60, "1 minute ago"),
        (300, "5 minutes ago"),
        (3 * 3600 + 59, "3 hours ago"),
        (2 * 86400, "2 days ago"),
    ],
)
def test_age_words(ago: int, words: str) -> None:
    assert render.age_words(NOW - ago, NOW) == words


@pytest.mark.parametrize(
    ("status", "emoji", "label"),
    [
        ("validating_files", ":mag:", "Validating files"),
        ("queued", ":hourglass_flowing_sand:", "Queued"),
        ("running", ":arrows_counterclockwise:", "Running"),
        ("paused", ":double_vertical_bar:", "Paused"),
        ("succeeded", ":white_check_mark:", "Succeeded"),
        ("failed", ":x:", "Failed"),
        ("cancelled", ":no_entry_sign:", "Cancelled"),
        ("warming_up_gpus", ":grey_question:", "Warming up gpus"),
        ("<!channel>_now", ":grey_question:", "&lt;!channel&gt; now"),
    ],
)
def test_status_emoji_and_label(status: str, emoji: str, label: str) -> None:
    assert render.status_emoji(status) == emoji
    assert render.status_label(status) == label


def test_reply_as_kwargs() -> None:
    reply = render.render_internal_error()
    assert reply.as_kwargs() == {"text": reply.text, "blocks": reply.blocks}


# ---------------------------------------------------------------------------------------------- escaping


def _hostile_job() -> FineTuningJob:
    return job(
        id=HOSTILE,
        model=HOSTILE,
        status=HOSTILE,
        fine_tuned_model=HOSTILE,
        training_file=HOSTILE,
        validation_file=HOSTILE,
        finished_at=NOW,
        trained_tokens=10,
        error={"code": HOSTILE, "message": HOSTILE, "param": HOSTILE},
        method={"type": HOSTILE, HOSTILE: {"hyperparameters": {HOSTILE: HOSTILE}}},
        metadata={HOSTILE: HOSTILE},
    )


HOSTILE_RENDERS: dict[str, Callable[[], Reply]] = {
    "help": lambda: render.render_help(HOSTILE),
    "parse_error": lambda: render.render_parse_error(
        ParseError(HOSTILE, usage=HOSTILE, show_help=True), HOSTILE
    ),
    "job": lambda: render.render_job(_hostile_job(), NOW),
    "running_job": lambda: render.render_job(job(id=HOSTILE, metadata={"k": HOSTILE}), NOW),
    "job_list": lambda: render.render_job_list([_hostile_job()] * 3, True, NOW),
    "events": lambda: render.render_events(
        HOSTILE,
        [
            event(HOSTILE, level=HOSTILE),
            event(HOSTILE, level="error"),
            event(HOSTILE, type="metrics", data={"step": HOSTILE, "train_loss": HOSTILE}),
        ],
        True,
        NOW,
    ),
    "announcement": lambda: render.render_announcement(_hostile_job(), HOSTILE, NOW),
    "not_posted": lambda: render.render_announcement_not_posted(
        _hostile_job(), HOSTILE, HOSTILE, HOSTILE, NOW
    ),
    "cancel": lambda: render.render_cancel_requested(_hostile_job(), NOW),
    "files": lambda: render.render_files(
        [OpenAIFile(id=HOSTILE, filename=HOSTILE, purpose="fine-tune", bytes=5, created_at=NOW)] * 3,
        True,
        NOW,
    ),
    "create_form_not_opened": lambda: render.render_create_form_not_opened(HOSTILE, HOSTILE),
    "shortcut_needs_one_jsonl": lambda: render.render_shortcut_needs_one_jsonl(0, [HOSTILE] * 7),
    **{
        f"openai_{cls.__name__}": (
            lambda cls=cls: render.render_openai_error(
                cls(HOSTILE, status=400, param=HOSTILE, request_id=HOSTILE), job_id=HOSTILE, action=HOSTILE
            )
        )
        for cls in (
            OpenAIError,
            BadRequestError,
            AuthenticationError,
            PermissionDeniedError,
            NotFoundError,
            ConflictError,
            RateLimitError,
            QuotaExceededError,
            ServerError,
            UnavailableError,
        )
    },
}


@pytest.mark.parametrize("name", HOSTILE_RENDERS)
def test_hostile_strings_are_inert_everywhere(name: str) -> None:
    reply = HOSTILE_RENDERS[name]()
    assert_fits_slack(reply)
    for text in mrkdwn(reply):
        for live in LIVE:
            assert live not in text, f"{name}: {live!r} survived in {text!r}"
    assert reply.text
    assert "<!channel" not in reply.text


@pytest.mark.parametrize(
    "name",
    [
        "parse_error",
        "job",
        "job_list",
        "events",
        "announcement",
        "cancel",
        "files",
        "shortcut_needs_one_jsonl",
    ],
)
def test_hostile_strings_are_still_shown(name: str) -> None:
    # Escaped, not dropped: the reader still sees what OpenAI or the user sent.
    assert "&lt;!channel&gt;" in everything(HOSTILE_RENDERS[name]())


# ---------------------------------------------------------------------------------------------- jobs


def test_job_card_of_a_succeeded_job() -> None:
    reply = render.render_job(
        job(
            status="succeeded",
            fine_tuned_model="ft:gpt-4o-mini-2024-07-18:acme:support:abc123",
            finished_at=NOW - 7500 + 7505,
            trained_tokens=1234567,
            validation_file="file-valid1",
            error={"code": None, "message": None, "param": None},
            metadata={"team": "support"},
        ),
        NOW,
    )
    assert_fits_slack(reply)
    text = everything(reply)
    assert reply.blocks[0]["type"] == "header"
    assert ":white_check_mark: Succeeded" in text
    assert "`ft:gpt-4o-mini-2024-07-18:acme:support:abc123`" in text
    assert "`gpt-4o-mini-2024-07-18`" in text
    assert "`file-train1`" in text and "`file-valid1`" in text
    assert render.date_token(NOW - 7500) + " (2 hours ago)" in text
    assert render.date_token(NOW + 5) in text
    assert "2 hours 5 minutes" in text
    assert "1,234,567" in text
    assert "supervised" in text
    assert "`n_epochs=3`" in text
    assert "`team` support" in text
    assert "Estimated finish" not in text
    assert "Error" not in text


def test_job_card_of_a_running_job_shows_the_estimate() -> None:
    text = everything(render.render_job(job(), NOW))
    assert f"{render.date_token(NOW + 1200)} (in 20 minutes)" in text
    assert "Finished" not in text and "Duration" not in text and "Fine-tuned model" not in text


def test_job_card_of_a_failed_job_shows_the_error() -> None:
    reply = render.render_job(
        job(
            status="failed",
            finished_at=NOW,
            error={
                "code": "invalid_training_file",
                "message": "Line 3 is not JSON",
                "param": "training_file",
            },
        ),
        NOW,
    )
    text = everything(reply)
    assert ":x: Failed" in text
    assert "`invalid_training_file`" in text
    assert "Line 3 is not JSON" in text
    assert "`training_file`" in text


def test_job_list_lists_every_job() -> None:
    jobs = [
        job(
            id="ftjob-1", status="succeeded", fine_tuned_model="ft:gpt-4o-mini:acme::x1", created_at=NOW - 300
        ),
        job(id="ftjob-2", status="paused", created_at=NOW - 2 * 86400),
    ]
    reply = render.render_job_list(jobs, False, NOW)
    assert_fits_slack(reply)
    text = everything(reply)
    assert "`ftjob-1` :white_check_mark: Succeeded" in text
    assert "`ft:gpt-4o-mini:acme::x1`" in text and "5 minutes ago" in text
    assert "`ftjob-2` :double_vertical_bar: Paused" in text and "2 days ago" in text
    assert not any(block["type"] == "context" for block in reply.blocks)


@pytest.mark.parametrize(
    ("count", "note"),
    [
        (10, "Showing the 10 most recent jobs; `/finetune list limit=100` shows more."),
        (100, "older ones are not listed here"),
    ],
)
def test_job_list_says_when_there_are_more(count: int, note: str) -> None:
    reply = render.render_job_list([job(id=f"ftjob-{i}") for i in range(count)], True, NOW)
    assert reply.blocks[-1]["type"] == "context"
    assert note in reply.blocks[-1]["elements"][0]["text"]


def test_empty_job_list() -> None:
    reply = render.render_job_list([], False, NOW)
    assert "No fine-tuning jobs yet." in everything(reply)
    assert_fits_slack(reply)


@pytest.mark.parametrize("filler", ["x", "&", "<"])
def test_a_hundred_jobs_fit_slack(filler: str) -> None:
    jobs = [
        job(
            id=f"ftjob-{i:03d}{filler * 60}",
            status="succeeded",
            model="gpt-4o-mini-2024-07-18" + filler * 100,
            fine_tuned_model=f"ft:gpt-4o-mini-2024-07-18:acme:{filler * 60}:{i:03d}",
            created_at=NOW - i * 3600,
        )
        for i in range(100)
    ]
    reply = render.render_job_list(jobs, True, NOW)
    assert_fits_slack(reply)
    text = everything(reply)
    assert all(f"ftjob-{i:03d}" in text for i in range(100))


# ---------------------------------------------------------------------------------------------- events


def test_events_read_oldest_to_newest() -> None:
    newest_first = [
        event("third", NOW),
        event("second", NOW - 60, "warn"),
        event("first", NOW - 120, "error"),
    ]
    reply = render.render_events("ftjob-abc123", newest_first, False, NOW)
    text = everything(reply)
    assert text.index("first") < text.index("second") < text.index("third")
    assert ":red_circle: first" in text and ":warning: second" in text
    assert render.date_token(NOW - 120, "{date_short} {time}") in text
    assert not any(block["type"] == "context" for block in reply.blocks)


def test_metrics_events_are_compact() -> None:
    metrics = event(
        "Step 10/100: training loss=1.23",
        type="metrics",
        data={
            "step": 10,
            "total_steps": 100,
            "train_loss": 1.23456,
            "valid_loss": 0.987654,
            "train_mean_token_accuracy": 0.81234,
        },
    )
    text = everything(render.render_events("ftjob-abc123", [metrics], False, NOW))
    assert "Step 10/100 · train loss 1.23 · valid loss 0.988 · train accuracy 0.812" in text


def test_no_events() -> None:
    reply = render.render_events("ftjob-abc123", [], False, NOW)
    assert "No events yet." in everything(reply)
    assert_fits_slack(reply)


@pytest.mark.parametrize(
    ("count", "note"),
    [
        (20, "Showing the 20 most recent events; use `limit=` for more (max 100)"),
        (100, "older ones are not listed here"),
    ],
)
def test_events_say_when_there_are_more(count: int, note: str) -> None:
    events = [event(f"event {i}", NOW - i) for i in range(count)]
    reply = render.render_events("ftjob-abc123", events, True, NOW)
    assert note in reply.blocks[-1]["elements"][0]["text"]


@pytest.mark.parametrize("filler", ["x", "&", "<>"])
def test_a_hundred_long_events_fit_slack(filler: str) -> None:
    events = [
        event(f"event {i:03d} " + filler * 500, NOW - i, "warn" if i % 2 else "info") for i in range(100)
    ]
    reply = render.render_events("ftjob-abc123", events, True, NOW)
    assert_fits_slack(reply)
    text = everything(reply)
    assert all(f"event {i:03d}" in text for i in range(100))
    assert "…" in text


# ---------------------------------------------------------------------------------------------- help


def test_help_lists_every_subcommand_with_an_example() -> None:
    reply = render.render_help()
    assert_fits_slack(reply)
    text = everything(reply)
    for name, usage in USAGE.items():
        assert f"`/finetune {render.escape(usage)}`" in text
        assert f"`/finetune {render.escape(EXAMPLES[name])}`" in text
    assert "`/finetune help`" in text
    # The form: `create` alone, or the button (which opens it with the click's trigger_id).
    assert "`/finetune create` with nothing after it" in text
    assert reply.blocks[-1]["elements"][0]["action_id"] == "open_create_form"
    assert reply.blocks[-1]["elements"][0]["text"]["text"] == "New fine-tuning job"


@pytest.mark.parametrize(
    ("error", "present", "absent"),
    [
        (ParseError("`list` takes no id."), ["`list` takes no id."], ["Usage:", "create"]),
        (
            ParseError("Bad limit.", usage=USAGE["list"]),
            [f"Usage: `/finetune {render.escape(USAGE['list'])}`"],
            ["create"],
        ),
        (
            ParseError("I don't know the command `x`.", show_help=True),
            [render.escape(USAGE["get"]), "cancel"],
            ["Usage:"],
        ),
    ],
)
def test_parse_error(error: ParseError, present: list[str], absent: list[str]) -> None:
    reply = render.render_parse_error(error)
    assert_fits_slack(reply)
    text = everything(reply)
    assert reply.blocks[0]["text"]["text"].startswith(":warning: ")
    assert all(item in text for item in present)
    assert not any(item in text for item in absent)


# ---------------------------------------------------------------------------------------------- announcements


@pytest.mark.parametrize(
    ("user_id", "shown"),
    [
        ("U123ABC", "<@U123ABC> started a fine-tuning job `ftjob-abc123`"),
        ("W0ENTERPRISE1", "<@W0ENTERPRISE1> started"),
        ("U123ABC\n", "U123ABC started"),
        ("u123abc", "u123abc started"),
        ("<!channel>", "&lt;!channel&gt; started"),
    ],
)
def test_announcement_mentions_only_a_real_user_id(user_id: str, shown: str) -> None:
    reply = render.render_announcement(job(validation_file="file-valid1"), user_id, NOW)
    assert_fits_slack(reply)
    text = everything(reply)
    assert shown in text
    for item in (
        "`gpt-4o-mini-2024-07-18`",
        "`file-train1`",
        "`file-valid1`",
        ":arrows_counterclockwise: Running",
        render.date_token(NOW - 7500),
    ):
        assert item in text


@pytest.mark.parametrize("reason", ["not_in_channel", "channel_not_found", "is_archived", "something_new"])
def test_announcement_not_posted(reason: str) -> None:
    reply = render.render_announcement_not_posted(job(), "U123ABC", "C0123", reason, NOW)
    assert_fits_slack(reply)
    text = everything(reply)
    if reason == "something_new":
        # Not a refusal of the bot: inviting it would not help, so the reply does not say to.
        assert "Slack did not take my announcement in <#C0123>" in text and "/invite" not in text
    else:
        assert "The job was started, but I can't post in <#C0123>" in text
        assert "`/invite @finetune`" in text
    assert "<@U123ABC> started a fine-tuning job `ftjob-abc123`" in text
    assert "ftjob-abc123" in reply.text


def test_cancel_requested() -> None:
    reply = render.render_cancel_requested(job(status="cancelled"), NOW)
    assert_fits_slack(reply)
    text = everything(reply)
    assert ":no_entry_sign: Cancellation requested for `ftjob-abc123`" in text
    assert ":no_entry_sign: Cancelled" in text


# ---------------------------------------------------------------------------------------------- errors

SECRET = "Incorrect API key provided: sk-proj-abc***wxyz"


@pytest.mark.parametrize(
    ("error", "job_id", "present", "absent"),
    [
        (
            NotFoundError("nope", status=404),
            "ftjob-abc123",
            "No fine-tuning job `ftjob-abc123` was found (check the id with `/finetune list`).",
            "nope",
        ),
        (
            NotFoundError("The model `gpt-x` does not exist", status=404),
            None,
            "does not exist",
            "No fine-tuning job",
        ),
        (AuthenticationError(SECRET, status=401), None, "OpenAI refused the bot's credentials", "sk-proj"),
        (
            PermissionDeniedError(SECRET, status=403, param="sk-proj"),
            None,
            "check its OpenAI API key",
            "sk-proj",
        ),
        (QuotaExceededError("You exceeded your quota", status=429), None, "billing", "exceeded"),
        (
            BadRequestError("Invalid model", status=400, param="model"),
            None,
            "OpenAI rejected this: Invalid model (parameter `model`)",
            "unavailable",
        ),
        (
            ConflictError("Job is already done", status=409),
            None,
            "OpenAI rejected this: Job is already done",
            "param",
        ),
        (OpenAIError("Too big", status=413), None, "OpenAI rejected this: Too big", "unavailable"),
        (OpenAIError("Timed out", status=408), None, "unavailable right now", "Timed out"),
        (
            RateLimitError("Slow down", status=429),
            None,
            "OpenAI is unavailable right now, try again in a minute.",
            "Slow down",
        ),
        (ServerError("boom", status=500), None, "unavailable right now", "boom"),
        (UnavailableError("Could not reach OpenAI"), None, "unavailable right now", "reach"),
        (OpenAIError("weird"), None, "unavailable right now", "weird"),
    ],
)
def test_openai_errors(error: OpenAIError, job_id: str | None, present: str, absent: str) -> None:
    reply = render.render_openai_error(error, job_id=job_id)
    assert_fits_slack(reply)
    text = everything(reply)
    assert present in text
    assert absent not in text
    assert not any(block["type"] == "context" for block in reply.blocks)


def test_openai_error_shows_the_request_id() -> None:
    reply = render.render_openai_error(
        AuthenticationError(SECRET, status=401, request_id="req_abc<123>"), action="start the job"
    )
    assert reply.blocks[-1]["type"] == "context"
    assert "`req_abc&lt;123&gt;`" in reply.blocks[-1]["elements"][0]["text"]
    assert "sk-proj" not in everything(reply)


def test_openai_error_names_the_action() -> None:
    reply = render.render_openai_error(ServerError("boom", status=502), action="cancel the job")
    assert "I couldn't cancel the job: OpenAI is unavailable right now" in reply.text


def test_internal_error_has_no_details() -> None:
    reply = render.render_internal_error()
    assert_fits_slack(reply)
    assert "Something went wrong on my side; the team has been told (see the bot's logs)." in reply.text


# ---------------------------------------------------------------------------------- files and the form


@pytest.mark.parametrize(
    ("size", "words"),
    [
        (0, "0 bytes"),
        (1, "1 byte"),
        (999, "999 bytes"),
        (1000, "1.0 kB"),
        (2_400_000, "2.4 MB"),
        (512_000_000, "512 MB"),
        (999_999_999, "1.0 GB"),
        (10**16, "10000 TB"),
    ],
)
def test_size_words(size: int, words: str) -> None:
    assert render.size_words(size) == words


def test_files_list_the_id_create_takes_name_size_and_age() -> None:
    files = [
        OpenAIFile(
            id="file-new",
            filename="support.jsonl",
            purpose="fine-tune",
            bytes=2_400_000,
            created_at=NOW - 7200,
        ),
        OpenAIFile(id="file-old", filename="", purpose="fine-tune", bytes=None, created_at=None),
    ]
    reply = render.render_files(files, False, NOW)
    assert_fits_slack(reply)
    text = everything(reply)
    assert "2 fine-tune files in OpenAI" in text
    assert "`file-new` · support.jsonl · 2.4 MB · uploaded " + render.date_token(NOW - 7200) in text
    assert "(2 hours ago)" in text
    assert "`file-old` · (no name)" in text
    assert "/finetune create file-" in text
    more = everything(render.render_files(files, True, NOW))
    assert "The 2 most recent fine-tune files" in more


def test_no_files_says_how_to_upload_one() -> None:
    text = everything(render.render_files([], False, NOW))
    assert "No fine-tune files" in text and "/finetune create" in text


def test_many_files_fit_slack() -> None:
    files = [
        OpenAIFile(id=f"file-{n}", filename="x" * 300, purpose="fine-tune", bytes=n, created_at=NOW)
        for n in range(100)
    ]
    assert_fits_slack(render.render_files(files, True, NOW))


@pytest.mark.parametrize(
    ("reason", "fragment"),
    [
        ("expired_trigger_id", "only 3 seconds"),
        ("exchanged_trigger_id", "only 3 seconds"),
        ("view_too_large", "`view_too_large`"),
    ],
)
def test_form_not_opened_says_what_to_do_instead(reason: str, fragment: str) -> None:
    reply = render.render_create_form_not_opened(reason)
    assert_fits_slack(reply)
    text = everything(reply)
    assert fragment in text and "Try again" in text
    assert f"`/finetune {EXAMPLES['create']}`" in text


@pytest.mark.parametrize(
    ("found", "others", "fragment"),
    [
        (2, [], "has 2 `.jsonl` files"),
        (0, ["loss.png"], "no `.jsonl` file (only `loss.png`)"),
        (0, [], "has no file"),
    ],
)
def test_shortcut_explains_what_it_needs(found: int, others: list[str], fragment: str) -> None:
    reply = render.render_shortcut_needs_one_jsonl(found, others)
    assert_fits_slack(reply)
    assert fragment in everything(reply) and "/finetune create" in everything(reply)
