"""End to end, against `python -m bot` with LOG_FORMAT=json and the fakes: the audit trail records
each action (refused ones too), the card says who cancelled, `history` shows the trail to the
starter and admins only, and every log line is a JSON object carrying its context and no secret."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.harness import Harness, all_text, fresh, module_bot, query_db, wait_until
from tests.test_e2e_actions import click, started_job

ADMIN = "UADMIN01"


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    with module_bot(
        tmp_path_factory.mktemp("bot"), POLL_INTERVAL_SECONDS="1", LOG_FORMAT="json", FINETUNE_ADMINS=ADMIN
    ) as harness:
        yield harness


@pytest.fixture
def h(harness: Harness) -> Iterator[Harness]:
    yield from fresh(harness)


def audit_rows(h: Harness, job_id: str) -> list[tuple[Any, ...]]:
    rows = query_db(
        h.db_url,
        "SELECT user_id, channel_id, action, result, reason FROM finetune_audit"
        " WHERE job_id = :job ORDER BY id",
        job=job_id,
    )
    return [tuple(r) for r in rows]


def log_lines(h: Harness) -> list[dict[str, Any]]:
    return [json.loads(line) for line in h.bot.logs.splitlines() if line.strip()]


def test_cancel_refused_then_done_is_audited_and_the_card_says_who(h: Harness) -> None:
    job_id, ts = started_job(h)
    _, key = click(h, "job_cancel", job_id, message_ts=ts, user_id="U999")
    assert "can't cancel" in all_text(h.reply(key))
    _, key = click(h, "job_cancel", job_id, message_ts=ts)
    assert "Cancellation requested" in all_text(h.reply(key))
    assert audit_rows(h, job_id) == [
        ("U123", "C123", "create", "ok", None),
        ("U999", "C123", "cancel", "refused", "not allowed"),
        ("U123", "C123", "cancel", "ok", None),
    ]
    h.slack.wait_for(
        lambda s: any("Cancelled by <@U123> <!date^" in all_text({"b": u.blocks}) for u in s.updates)
    )


def test_pause_of_an_ended_job_is_audited_as_a_bad_state(h: Harness) -> None:
    job_id, _ = started_job(h, status="succeeded")
    _, key = h.command(f"pause {job_id}")
    assert "Nothing to pause" in all_text(h.reply(key))
    assert audit_rows(h, job_id)[-1] == ("U123", "C123", "pause", "refused", "bad state: succeeded")


def test_history_is_for_the_starter_and_admins(h: Harness) -> None:
    job_id, _ = started_job(h)
    _, key = h.command(f"pause {job_id}")
    assert "Pause requested" in all_text(h.reply(key))
    for user in ("U123", ADMIN):
        _, key = h.command(f"history {job_id}", user_id=user)
        text = all_text(h.reply(key))
        assert "Audit trail of" in text and "*pause*" in text and "*create*" in text, text
        assert text.index("*pause*") < text.index("*create*")  # newest first
    _, key = h.command(f"history {job_id}", user_id="U999")
    text = all_text(h.reply(key))
    assert "No fine-tuning job" in text and "Audit trail" not in text
    # Exactly the answer for a job that does not exist.
    _, key = h.command("history ftjob-doesnotexist1", user_id="U999")
    assert all_text(h.reply(key)).replace("ftjob-doesnotexist1", job_id) == text


def test_json_logs_parse_line_by_line_with_context_and_no_secret(h: Harness) -> None:
    job_id, ts = started_job(h)
    _, key = click(h, "job_pause", job_id, message_ts=ts, user_id="U999")
    h.reply(key)
    lines = wait_until(
        lambda: [e for e in log_lines(h) if e["message"].startswith(f"audit: <@U999> pause {job_id}")],
        10,
        "the audit log line",
    )
    [entry] = lines
    assert entry["level"] == "INFO" and entry["logger"] == "bot.audit"
    assert entry["message"] == f"audit: <@U999> pause {job_id} in C123: refused (not allowed)"
    assert entry["job_id"] == job_id and entry["channel"] == "C123" and entry["user"] == "U999"
    assert entry["command"] == "job_pause" and entry["slack_request"]
    assert entry["replica"].endswith(f":{h.bot.process.pid}")  # type: ignore[union-attr]
    every = log_lines(h)  # every line of the whole run parses (the secret check is `fresh`'s)
    assert all({"time", "level", "logger", "message"} <= set(e) for e in every)
