"""Table-driven tests of parse_command: plain values in, typed commands or errors out."""

from __future__ import annotations

import pytest

from bot.commands import (
    CancelCommand,
    CreateCommand,
    EventsCommand,
    FilesCommand,
    GetCommand,
    HelpCommand,
    ListCommand,
    OpenCreateFormCommand,
    ParseError,
    parse_command,
)

MODEL = "gpt-4o-mini-2024-07-18"


def parse(text: str):
    return parse_command(text, default_model=MODEL)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", HelpCommand()),
        ("   ", HelpCommand()),
        ("help", HelpCommand()),
        ("HELP", HelpCommand()),
        ("list", ListCommand(limit=10)),
        ("list limit=100", ListCommand(limit=100)),
        ("ls LIMIT=3", ListCommand(limit=3)),
        ("get ftjob-abc123", GetCommand("ftjob-abc123")),
        ("status ftjob-abc123", GetCommand("ftjob-abc123")),
        ("retrieve `ftjob-abc123`", GetCommand("ftjob-abc123")),
        ("events ftjob-a_b-c", EventsCommand("ftjob-a_b-c", 20)),
        ("events ftjob-abc limit=1", EventsCommand("ftjob-abc", 1)),
        ("cancel ftjob-abc", CancelCommand("ftjob-abc")),
        ("create file-abc123", CreateCommand(training_file="file-abc123", model=MODEL)),
        # Nothing after `create` (issue 14): the create form opens instead of an error.
        ("create", OpenCreateFormCommand()),
        ("start  ", OpenCreateFormCommand()),
        ("files", FilesCommand(limit=10)),
        ("file limit=100", FilesCommand(limit=100)),
        (
            "create file-abc123 model=gpt-4.1-mini-2025-04-14 validation_file=file-val suffix=support.v2 "
            "epochs=3 batch_size=auto learning_rate_multiplier=0.5 seed=42",
            CreateCommand(
                training_file="file-abc123",
                model="gpt-4.1-mini-2025-04-14",
                validation_file="file-val",
                suffix="support.v2",
                seed=42,
                hyperparameters={"n_epochs": 3, "batch_size": "auto", "learning_rate_multiplier": 0.5},
            ),
        ),
        (
            "create file-abc method=dpo beta=0.1 n_epochs=auto",
            CreateCommand(
                training_file="file-abc",
                model=MODEL,
                method="dpo",
                hyperparameters={"beta": 0.1, "n_epochs": "auto"},
            ),
        ),
        (
            "create file-abc seed=0 epochs=50 batch_size=256",
            CreateCommand(
                training_file="file-abc",
                model=MODEL,
                seed=0,
                hyperparameters={"n_epochs": 50, "batch_size": 256},
            ),
        ),
        (
            "create file-abc seed=2147483647",
            CreateCommand(training_file="file-abc", model=MODEL, seed=2147483647),
        ),
    ],
)
def test_valid_commands(text: str, expected: object) -> None:
    assert parse(text) == expected


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("frobnicate", "don't know the command"),
        ("get", "needs a job id"),
        ("get ../../files", "is not a job id"),
        ("get ftjob-abc/../../files", "is not a job id"),
        ("get ftjob-" + "a" * 65, "is not a job id"),
        ("get file-abc123", "is not a job id"),
        ("get ftjob-abc ftjob-def", "didn't expect"),
        ("get ftjob-abc limit=3", "not an option of `get`"),
        ("cancel ftjob-ab%2F..", "is not a job id"),
        ("list limit=0", "from 1 to 100"),
        ("list limit=101", "from 1 to 100"),
        ("list limit=ten", "from 1 to 100"),
        ("list limit=", "needs a value"),
        ("list extra", "didn't expect"),
        ("list limit=3 limit=4", "given twice"),
        ("events ftjob-abc limit=-1", "from 1 to 100"),
        # Bare `create` opens the form (below); options without a file still need one.
        ("create model=gpt-4o-mini-2024-07-18", "needs a training file id"),
        ("files limit=0", "from 1 to 100"),
        ("files file-abc", "didn't expect"),
        ("files status=running", "not an option of `files`"),
        ("create ftjob-abc", "is not a training file id"),
        ("create file-abc colour=blue", "`colour` is not an option of `create`"),
        ("create file-abc epochs=0", "from 1 to 50"),
        ("create file-abc epochs=51", "from 1 to 50"),
        ("create file-abc batch_size=257", "from 1 to 256"),
        ("create file-abc learning_rate_multiplier=0", "greater than 0"),
        ("create file-abc learning_rate_multiplier=-1", "greater than 0"),
        ("create file-abc learning_rate_multiplier=nan", "greater than 0"),
        ("create file-abc learning_rate_multiplier=inf", "greater than 0"),
        ("create file-abc seed=-1", "from 0 to 2147483647"),
        ("create file-abc seed=2147483648", "from 0 to 2147483647"),
        ("create file-abc suffix=" + "s" * 65, "`suffix` must be 1 to 64"),
        ("create file-abc suffix=<!channel>", "`suffix` must be"),
        ("create file-abc model=gpt/../../x", "not a model name"),
        ("create file-abc validation_file=abc", "`validation_file` must be a file id"),
        ("create file-abc method=reinforcement", "`method` must be"),
        ("create file-abc beta=0.1", "only applies to `method=dpo`"),
        ("create file-abc method=dpo beta=3", "at most 2"),
    ],
)
def test_invalid_commands(text: str, fragment: str) -> None:
    result = parse(text)
    assert isinstance(result, ParseError), result
    assert fragment in result.message


def test_unknown_option_names_the_valid_ones() -> None:
    result = parse("create file-abc colour=blue")
    assert isinstance(result, ParseError)
    for option in ("model", "validation_file", "suffix", "epochs", "batch_size", "seed", "method"):
        assert f"`{option}`" in result.message
    assert result.usage is not None and result.usage.startswith("create")


def test_unknown_command_offers_help() -> None:
    result = parse("frobnicate now")
    assert isinstance(result, ParseError) and result.show_help


def test_slack_escaped_input_is_judged_as_typed() -> None:
    result = parse("get &lt;ftjob-abc&gt;")
    assert isinstance(result, ParseError)
    assert "<ftjob-abc>" in result.message


def test_long_input_is_not_echoed_whole() -> None:
    result = parse("get " + "x" * 4000)
    assert isinstance(result, ParseError)
    assert len(result.message) < 400


def test_method_payload_uses_the_spec_shape() -> None:
    command = parse("create file-abc method=dpo epochs=2 beta=0.5")
    assert isinstance(command, CreateCommand)
    assert command.method_payload() == {
        "type": "dpo",
        "dpo": {"hyperparameters": {"n_epochs": 2, "beta": 0.5}},
    }
    assert parse("create file-abc").method_payload() == {"type": "supervised"}  # type: ignore[union-attr]
