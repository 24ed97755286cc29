"""Start-up as an operator meets it: bad configuration, .env files, Socket Mode, shutdown."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from tests.bot_process import APP_TOKEN, BOT_TOKEN, OPENAI_KEY, BotProcess, run_bot_once
from tests.fakes import FakeOpenAI, FakeSlack


def test_missing_configuration_exits_2_naming_each_variable(tmp_path: Path) -> None:
    result = run_bot_once({"PORT": "not-a-port"}, tmp_path)
    assert result.returncode == 2
    for name in ("SLACK_BOT_TOKEN", "SLACK_SIGNING_SECRET", "OPENAI_API_KEY", "PORT"):
        assert name in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_invalid_values_are_named_without_echoing_secrets(tmp_path: Path) -> None:
    result = run_bot_once(
        {"SLACK_BOT_TOKEN": "not-a-token-value-123", "SLACK_SIGNING_SECRET": "x", "OPENAI_API_KEY": "sk-1"},
        tmp_path,
    )
    assert result.returncode == 2
    assert "SLACK_BOT_TOKEN" in result.stderr
    assert "not-a-token-value-123" not in result.stderr


def test_dotenv_in_working_directory_is_read(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("SLACK_BOT_TOKEN=xoxb-from-dotenv\nOPENAI_API_KEY=sk-from-dotenv\n")
    result = run_bot_once({"PORT": "0"}, tmp_path)  # still fails: PORT=0 and no signing secret
    assert result.returncode == 2
    assert "SLACK_BOT_TOKEN" not in result.stderr and "OPENAI_API_KEY" not in result.stderr
    assert "SLACK_SIGNING_SECRET" in result.stderr and "PORT" in result.stderr


def test_socket_mode_acks_the_envelope_and_replies_through_response_url(tmp_path: Path) -> None:
    with FakeOpenAI() as openai, FakeSlack() as slack:
        job = openai.add_job()
        bot = BotProcess(
            {
                "SLACK_BOT_TOKEN": BOT_TOKEN,
                "SLACK_APP_TOKEN": APP_TOKEN,
                "SLACK_API_URL": slack.api_url,
                "OPENAI_API_KEY": OPENAI_KEY,
                "OPENAI_BASE_URL": openai.base_url,
            },
            tmp_path,
        ).start()
        try:
            assert httpx.get(f"{bot.url}/healthz").json()["mode"] == "socket"
            # No HTTP endpoint for Slack events in Socket Mode.
            assert httpx.post(f"{bot.url}/slack/events", content="x").status_code in (404, 405)
            slack.wait_connected(timeout=15)
            response_url = slack.response_url("socket")
            envelope_id = slack.send_envelope(
                "slash_commands", slack.slash_command_payload(f"get {job['id']}", response_url=response_url)
            )
            slack.wait_for(lambda s: any(a.get("envelope_id") == envelope_id for a in s.socket_acks))
            slack.wait_for(lambda s: s.responses_for("socket"), timeout=10)
            reply = slack.responses_for("socket")[0].json
            assert reply["response_type"] == "ephemeral"
            assert job["id"] in str(reply)
            # Help comes back inside the ack itself.
            help_id = slack.send_envelope("slash_commands", slack.slash_command_payload("help"))
            slack.wait_for(
                lambda s: any(a.get("envelope_id") == help_id and a.get("payload") for a in s.socket_acks)
            )
            calls = slack.calls_to("apps.connections.open")
            assert calls and calls[0].headers["authorization"] == f"Bearer {APP_TOKEN}"
        finally:
            assert bot.stop() == 0, bot.logs
        for secret in (OPENAI_KEY, BOT_TOKEN, APP_TOKEN):
            assert secret not in bot.logs


def test_sigterm_exits_cleanly(tmp_path: Path) -> None:
    with FakeOpenAI() as openai, FakeSlack() as slack:
        bot = BotProcess(
            {
                "SLACK_BOT_TOKEN": BOT_TOKEN,
                "SLACK_SIGNING_SECRET": "secret",
                "SLACK_API_URL": slack.api_url,
                "OPENAI_API_KEY": OPENAI_KEY,
                "OPENAI_BASE_URL": openai.base_url,
            },
            tmp_path,
        ).start()
        started = time.monotonic()
        assert bot.stop() == 0, bot.logs
        assert time.monotonic() - started < 10
        assert "stopped" in bot.logs


def test_a_token_slack_refuses_exits_2(tmp_path: Path) -> None:
    with FakeSlack(bot_token="xoxb-the-real-one") as slack:
        result = run_bot_once(
            {
                "SLACK_BOT_TOKEN": "xoxb-a-revoked-token-12345",
                "SLACK_SIGNING_SECRET": "secret",
                "SLACK_API_URL": slack.api_url,
                "OPENAI_API_KEY": OPENAI_KEY,
            },
            tmp_path,
        )
    assert result.returncode == 2
    assert "SLACK_BOT_TOKEN was refused by Slack (invalid_auth)" in result.stderr
    assert "xoxb-a-revoked-token-12345" not in result.stderr + result.stdout
