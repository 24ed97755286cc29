"""Start-up never hangs, and every start-up problem is one clear line (issue 10, items 2, 4, 5).

Each test runs `python -m bot` as an operator would, against the fakes or against a Slack URL
where nothing listens.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.bot_process import (
    APP_TOKEN,
    BOT_TOKEN,
    OPENAI_KEY,
    REPO,
    BotProcess,
    free_port,
    run_bot_once,
)
from tests.fakes import FakeOpenAI, FakeSlack
from tests.harness import Harness, all_text, bot_env

SAFETY_DEADLINE = 15.0  # generous: a stop that works takes well under a second


def dead_slack_url() -> str:
    """A Slack API URL where nothing listens: connections are refused, as with Slack unreachable."""
    return f"http://127.0.0.1:{free_port()}/api/"


def socket_env(slack_api_url: str, openai: FakeOpenAI, **extra: str) -> dict[str, str]:
    return {
        "SLACK_BOT_TOKEN": BOT_TOKEN,
        "SLACK_APP_TOKEN": APP_TOKEN,
        "SLACK_API_URL": slack_api_url,
        "OPENAI_API_KEY": OPENAI_KEY,
        "OPENAI_BASE_URL": openai.base_url,
        **extra,
    }


def run_with_args(
    args: list[str], env: dict[str, str], workdir: Path, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bot", *args],
        cwd=workdir,
        env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(REPO), **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def wait_for_log(bot: BotProcess, predicate: object, what: str, timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        logs = bot.logs
        if predicate(logs):  # type: ignore[operator]
            return logs
        time.sleep(0.1)
    raise AssertionError(f"no {what} within {timeout}s:\n{bot.logs}")


def stop_with(bot: BotProcess, sig: signal.Signals) -> int:
    assert bot.process is not None
    bot.process.send_signal(sig)
    try:
        return bot.process.wait(SAFETY_DEADLINE)
    except subprocess.TimeoutExpired:
        bot.kill()
        raise AssertionError(f"bot ignored {sig.name} for {SAFETY_DEADLINE}s:\n{bot.logs}") from None


# -- item 2: Socket Mode ----------------------------------------------------------------------------


@pytest.mark.parametrize("reason", ["invalid_auth", "not_allowed_token_type"])
def test_a_refused_app_token_exits_2_naming_slack_app_token(tmp_path: Path, reason: str) -> None:
    with FakeOpenAI() as openai, FakeSlack(app_token="xapp-the-real-one") as slack:
        app_token = APP_TOKEN  # not the fake's own app token: invalid_auth
        if reason != "invalid_auth":
            app_token = "xapp-the-real-one"
            slack.fail_next("apps.connections.open", error=reason)
        result = run_bot_once(
            socket_env(slack.api_url, openai, SLACK_APP_TOKEN=app_token, PORT=str(free_port())), tmp_path
        )
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    problems = [line for line in result.stderr.splitlines() if line.startswith("  - ")]
    assert problems == [problems[0]] and f"SLACK_APP_TOKEN was refused by Slack ({reason})" in problems[0]
    assert "Traceback" not in output
    assert "finetune-bot ready" not in output
    assert app_token not in output


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_socket_mode_with_slack_unreachable_serves_healthz_retries_quietly_and_stops(
    tmp_path: Path, sig: signal.Signals
) -> None:
    with FakeOpenAI() as openai:
        bot = BotProcess(socket_env(dead_slack_url(), openai), tmp_path).start()  # waits for /healthz
        try:
            health = httpx.get(f"{bot.url}/healthz", timeout=5)
            assert health.status_code == 200
            assert health.json() == {"ok": True, "mode": "socket", "slack_connected": False}
            logs = wait_for_log(
                bot, lambda text: text.count("cannot reach Slack for Socket Mode") >= 2, "two attempts"
            )
            assert "attempt 1," in logs and "attempt 2," in logs
            assert "Traceback" not in logs
            assert "finetune-bot ready" not in logs  # not ready: Slack cannot reach it yet
        finally:
            code = stop_with(bot, sig)
        assert code == 0, bot.logs
        assert "finetune-bot stopped" in bot.logs
        assert "Traceback" not in bot.logs


def test_socket_mode_connects_once_slack_answers_and_only_then_says_ready(tmp_path: Path) -> None:
    with FakeOpenAI() as openai, FakeSlack() as slack:
        # Slack failing for a while: start-up's check and the first background attempt fail.
        slack.fail_next("apps.connections.open", status=503, times=2)
        bot = BotProcess(socket_env(slack.api_url, openai), tmp_path).start()
        try:
            slack.wait_connected(timeout=20)
            logs = wait_for_log(bot, lambda text: "finetune-bot ready" in text, "ready line")
            assert "Slack did not open a Socket Mode connection (internal_error)" in logs
            assert logs.index("connected to Slack in Socket Mode") < logs.index("finetune-bot ready")
            assert httpx.get(f"{bot.url}/healthz", timeout=5).json()["slack_connected"] is True
            envelope = slack.send_slash_command("help")
            assert "create" in all_text(slack.wait_for_ack(envelope, timeout=10))
            assert "Traceback" not in logs
        finally:
            assert bot.stop() == 0, bot.logs


# -- item 4: HTTP mode and the port -----------------------------------------------------------------


def test_http_mode_with_slack_unreachable_at_start_still_answers_commands(tmp_path: Path) -> None:
    with FakeOpenAI() as openai, FakeSlack() as slack:
        job = openai.add_job()
        env = bot_env(openai, slack, SLACK_API_URL=dead_slack_url())
        bot = BotProcess(env, tmp_path).start()
        try:
            h = Harness(bot, openai, slack)
            help_response, _ = h.command("help")
            assert help_response.status_code == 200
            assert "create" in all_text(help_response.json())
            response, key = h.command(f"get {job['id']}")
            assert response.status_code == 200, bot.logs
            assert job["id"] in all_text(h.reply(key))
            assert "Traceback" not in bot.logs
        finally:
            assert bot.stop() == 0, bot.logs


def test_a_port_in_use_exits_2_naming_port_before_saying_ready(tmp_path: Path) -> None:
    with FakeOpenAI() as openai, FakeSlack() as slack, socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        env = bot_env(openai, slack, HOST="127.0.0.1", PORT=str(port), DATABASE_URL="sqlite:///bot.db")
        result = run_bot_once(env, tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    problems = [line for line in result.stderr.splitlines() if line.startswith("  - ")]
    assert len(problems) == 1 and f"PORT {port} is already in use" in problems[0]
    assert "finetune-bot ready" not in output
    assert "Traceback" not in output


# -- item 5: noise ----------------------------------------------------------------------------------


def test_info_logs_have_no_token_warning_and_no_scheduler_chatter(tmp_path: Path) -> None:
    with FakeOpenAI() as openai, FakeSlack() as slack:
        env = bot_env(openai, slack, LOG_LEVEL="INFO", POLL_INTERVAL_SECONDS="1")
        bot = BotProcess(env, tmp_path).start()
        try:
            h = Harness(bot, openai, slack)
            response, _ = h.command("create file-abc123")  # a watch, so every poll cycle asks OpenAI
            assert response.status_code == 200
            slack.wait_for(lambda s: s.messages, timeout=10)  # announced, so the watch exists
            # Positive control: several poll cycles really ran while we listened.
            openai.wait_for(lambda o: len(o.requests_to(r"/fine_tuning/jobs", "GET")) >= 2, timeout=15)
            logs = bot.logs
            assert "finetune-bot ready" in logs
            assert "token will be unused" not in logs and "will be ignored" not in logs
            assert "apscheduler" not in logs and "Running job" not in logs
        finally:
            assert bot.stop() == 0, bot.logs


def test_help_prints_usage_and_exits_0_without_configuration(tmp_path: Path) -> None:
    result = run_with_args(["--help"], {}, tmp_path)
    assert result.returncode == 0, result.stderr
    for word in ("--check", "Socket Mode", "HTTP mode", "SLACK_APP_TOKEN", "SLACK_SIGNING_SECRET", "PORT"):
        assert word in result.stdout
    assert result.stderr == ""
    assert list(tmp_path.iterdir()) == []  # nothing started: no database file either


def test_check_passes_against_healthy_services(tmp_path: Path) -> None:
    with FakeOpenAI() as openai, FakeSlack() as slack:
        env = bot_env(openai, slack, SLACK_APP_TOKEN=APP_TOKEN, DATABASE_URL="sqlite:///check.db")
        result = run_with_args(["--check"], env, tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr
        assert slack.calls_to("auth.test") and slack.calls_to("apps.connections.open")
        assert openai.requests_to(r"/fine_tuning/jobs", "GET")
    for name in ("SLACK_BOT_TOKEN", "SLACK_APP_TOKEN", "OPENAI_API_KEY", "DATABASE_URL"):
        assert f"ok: {name}" in result.stdout
    assert "finetune-bot ready" not in result.stdout + result.stderr
    assert "warning" not in result.stdout  # the fake's token has every scope the manifest asks


def test_check_and_start_up_say_once_what_a_missing_optional_scope_costs(tmp_path: Path) -> None:
    """An app installed before files:write was added still runs; the operator hears what it loses."""
    with FakeOpenAI() as openai, FakeSlack() as slack:
        slack.revoke_scope("files:write")
        env = bot_env(openai, slack, DATABASE_URL="sqlite:///check.db")
        result = run_with_args(["--check"], env, tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr
        [line] = [line for line in result.stdout.splitlines() if line.startswith("warning:")]
        assert "files:write" in line and "without their chart" in line and "manifest.yml" in line


def test_check_exits_2_with_one_line_per_problem(tmp_path: Path) -> None:
    wrong_key = "sk-test-a-key-openai-refuses-9999"
    real = {"bot_token": "xoxb-the-real-one", "app_token": "xapp-the-real-one"}
    with FakeOpenAI() as openai, FakeSlack(**real) as slack:
        env = {
            "SLACK_BOT_TOKEN": BOT_TOKEN,
            "SLACK_APP_TOKEN": APP_TOKEN,
            "SLACK_API_URL": slack.api_url,
            "OPENAI_API_KEY": wrong_key,
            "OPENAI_BASE_URL": openai.base_url,
            "DATABASE_URL": f"sqlite:///{tmp_path}/no-such-directory/bot.db",
        }
        result = run_with_args(["--check"], env, tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    problems = [line for line in result.stderr.splitlines() if line.startswith("  - ")]
    assert len(problems) == 4, output
    for problem, name in zip(
        problems, ("SLACK_BOT_TOKEN", "SLACK_APP_TOKEN", "OPENAI_API_KEY", "DATABASE_URL"), strict=True
    ):
        assert problem.startswith(f"  - {name}"), output
    assert "Traceback" not in output
    for secret in (BOT_TOKEN, APP_TOKEN, wrong_key):
        assert secret not in output


def test_check_names_the_url_when_nothing_answers(tmp_path: Path) -> None:
    env = {
        "SLACK_BOT_TOKEN": BOT_TOKEN,
        "SLACK_APP_TOKEN": APP_TOKEN,  # Slack unreachable is one line, not one per token
        "SLACK_API_URL": dead_slack_url(),
        "OPENAI_API_KEY": OPENAI_KEY,
        "OPENAI_BASE_URL": f"http://127.0.0.1:{free_port()}/v1",
        "DATABASE_URL": "sqlite:///check.db",
    }
    result = run_with_args(["--check"], env, tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    problems = [line for line in result.stderr.splitlines() if line.startswith("  - ")]
    assert len(problems) == 2, output
    assert "SLACK_API_URL" in problems[0] and "OPENAI_BASE_URL" in problems[1]
    assert "ok: DATABASE_URL" in result.stdout
    assert "Traceback" not in output
