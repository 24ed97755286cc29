"""`/finetune report` parses like the other one-job commands; its replies are plain and escaped."""

from __future__ import annotations

import pytest

from bot import render
from bot.commands import ParseError, ReportCommand, parse_command
from tests.harness import all_text


@pytest.mark.parametrize("text", ["report ftjob-abc", "chart ftjob-abc", "REPORT ftjob-abc"])
def test_report_and_its_alias_parse(text: str) -> None:
    assert parse_command(text, default_model="m") == ReportCommand("ftjob-abc")


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("report", "needs a job id"),
        ("chart ftjob-a/../x", "not a job id"),
        ("report ftjob-a limit=3", "limit"),
    ],
)
def test_bad_report_commands_say_what_would_work(text: str, fragment: str) -> None:
    error = parse_command(text, default_model="m")
    assert isinstance(error, ParseError) and fragment in error.message
    assert error.usage == "report <job-id>"


def test_help_lists_report() -> None:
    assert "report ftjob-abc123" in all_text(render.render_help().as_kwargs())


def test_report_replies() -> None:
    assert "in the job's thread" in all_text(
        render.render_report_posted("ftjob-a", in_thread=True).as_kwargs()
    )
    assert "in this channel" in all_text(render.render_report_posted("ftjob-a", in_thread=False).as_kwargs())
    private = render.render_report_private("*numbers*", "only you see this").as_kwargs()
    assert "*numbers*" in all_text(private) and "only you see this" in all_text(private)
    assert "already being made" in all_text(render.render_report_busy("ftjob-<!channel>").as_kwargs())
    assert "<!channel>" not in all_text(render.render_report_busy("ftjob-<!channel>").as_kwargs())
