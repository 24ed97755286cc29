"""LOG_FORMAT=json: one parseable JSON object per record, with the context set at the edges, and
every field (message, context, traceback) masked and kept to one line."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from bot import logs
from bot.logs import bind_context, configure_logging, current_context, log_context, set_replica

SECRET = "sk-test-SECRETSECRETSECRET"


@pytest.fixture
def json_logs() -> Iterator[None]:
    """The process's logging configured for JSON during the test's call (the handler must be made
    there: pytest swaps stderr between set-up and call), and restored afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        set_replica("")
        logs.install_secrets([])


def start() -> None:
    configure_logging("INFO", [SECRET], "json")


def lines(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    err = capsys.readouterr().err
    assert err.endswith("\n"), err
    assert err.startswith("{"), err
    return [json.loads(line) for line in err.splitlines()]


def test_a_record_is_one_json_object_with_time_level_logger_message(
    json_logs: None, capsys: pytest.CaptureFixture[str]
) -> None:
    start()
    logging.getLogger("bot.test").info("hello %s", "world")
    [entry] = lines(capsys)
    assert entry["level"] == "INFO"
    assert entry["logger"] == "bot.test"
    assert entry["message"] == "hello world"
    assert entry["time"].endswith("+00:00") and "T" in entry["time"]  # ISO 8601, UTC


def test_the_context_and_replica_are_fields(json_logs: None, capsys: pytest.CaptureFixture[str]) -> None:
    start()
    set_replica("host:3000:42")
    with log_context(command="cancel", job_id="ftjob-abc", channel="C1", user="U1", slack_request="1.2.3"):
        logging.getLogger("bot.test").warning("inside")
    logging.getLogger("bot.test").warning("outside")
    inside, outside = lines(capsys)
    assert {k: inside[k] for k in ("command", "job_id", "channel", "user", "slack_request", "replica")} == {
        "command": "cancel",
        "job_id": "ftjob-abc",
        "channel": "C1",
        "user": "U1",
        "slack_request": "1.2.3",
        "replica": "host:3000:42",
    }
    assert "job_id" not in outside and outside["replica"] == "host:3000:42"


def test_a_secret_is_masked_in_every_field(json_logs: None, capsys: pytest.CaptureFixture[str]) -> None:
    start()
    log = logging.getLogger("bot.test")
    log.error("key is %s", SECRET)
    try:
        raise RuntimeError(f"OpenAI said {SECRET}")
    except RuntimeError:
        log.exception("failed")
    with log_context(job_id=f"ftjob-{SECRET}", command=SECRET):
        log.info("with context")
    out = lines(capsys)
    assert len(out) == 3
    assert SECRET not in json.dumps(out)
    assert out[0]["message"] == "key is [redacted]"
    assert "RuntimeError: OpenAI said [redacted]" in out[1]["exception"]
    assert out[2]["job_id"] == "ftjob-[redacted]" and out[2]["command"] == "[redacted]"


def test_no_newline_anywhere_can_forge_a_second_record(
    json_logs: None, capsys: pytest.CaptureFixture[str]
) -> None:
    start()
    forged = 'x\n{"level": "ERROR", "message": "forged"}\r\u2028\u2029\x85'
    log = logging.getLogger("bot.test")
    with log_context(channel=forged):
        log.warning("a %s", forged)
        try:
            raise ValueError(forged)
        except ValueError:
            log.exception(forged)
    out = lines(capsys)
    assert len(out) == 2  # two records, two lines: nothing forged a third
    assert all(entry["level"] == "WARNING" or entry["level"] == "ERROR" for entry in out)
    assert "forged" in out[1]["exception"]  # the traceback is kept, as one string field
    assert "\n" not in out[0]["message"] and "\n" not in out[0]["channel"]


def test_unknown_context_fields_and_empty_values_are_left_out() -> None:
    token = bind_context(job_id="ftjob-1", colour="red", channel=None, user="")
    try:
        assert current_context() == {"job_id": "ftjob-1"}
    finally:
        logs.unbind_context(token)
    assert current_context() == {}


def test_context_stays_in_its_task() -> None:
    seen: dict[str, dict[str, str]] = {}

    async def request(name: str) -> None:
        bind_context(job_id=name)
        await asyncio.sleep(0)
        seen[name] = current_context()

    async def main() -> None:
        await asyncio.gather(request("ftjob-a"), request("ftjob-b"))

    asyncio.run(main())
    assert seen == {"ftjob-a": {"job_id": "ftjob-a"}, "ftjob-b": {"job_id": "ftjob-b"}}
    assert current_context() == {}


def test_plain_stays_the_default(json_logs: None, capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", [SECRET])
    with log_context(job_id="ftjob-abc"):
        logging.getLogger("bot.test").info("plain %s", SECRET)
    err = capsys.readouterr().err
    assert err.rstrip("\n").endswith("INFO bot.test: plain [redacted]")
    assert not err.startswith("{")
