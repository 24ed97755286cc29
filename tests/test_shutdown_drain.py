"""Deploys never drop answers (issue 11, item 4).

After SIGTERM the bot keeps going for SHUTDOWN_GRACE_SECONDS (default 25, which covers OpenAI's
retry budget), refuses commands that arrive meanwhile, and tells the user of anything that still
cannot finish, through its response_url. Every acknowledged command gets an answer.
"""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

from tests.bot_process import APP_TOKEN, BOT_TOKEN, OPENAI_KEY, BotProcess
from tests.fakes import FakeOpenAI, FakeSlack
from tests.harness import Harness, all_text, start_bot

SLOW = 6.0  # seconds OpenAI takes to answer: longer than the old 4-second drain
UNFINISHED = "I was restarting and could not finish"


def sigterm(bot: BotProcess) -> subprocess.Popen[bytes]:
    assert bot.process is not None
    bot.process.send_signal(signal.SIGTERM)
    return bot.process


def test_sigterm_with_slow_openai_answers_every_acknowledged_command(
    fake_openai: FakeOpenAI, fake_slack: FakeSlack, tmp_path: Path
) -> None:
    existing = [fake_openai.add_job()["id"] for _ in range(2)]
    h = Harness(start_bot(fake_openai, fake_slack, tmp_path), fake_openai, fake_slack)
    fake_openai.latency = SLOW
    lists = []
    creates = []
    for i in range(6):
        response, key = h.command("list")
        assert response.status_code == 200 and response.content in (b"", b"{}"), response.content
        lists.append(key)
        if i < 3:
            response, _ = h.command("create file-abc123", channel_id=f"C{i}00")
            assert response.status_code == 200
            creates.append(f"C{i}00")
    process = sigterm(h.bot)
    # Safety deadline: the default window (25 s) plus the farewell time and a loaded machine.
    assert process.wait(timeout=40) == 0, h.bot.logs
    for key in lists:
        [reply] = h.slack.responses_for(key)
        text = all_text(reply.json)
        assert UNFINISHED not in text and all(job_id in text for job_id in existing), text
    for channel in creates:
        [announcement] = h.slack.messages_in(channel)
        assert "started a fine-tuning job" in all_text({"t": announcement.text, "b": announcement.blocks})
    assert len(fake_openai.jobs) == len(existing) + len(creates)


def test_what_cannot_finish_in_the_window_is_told_so(
    fake_openai: FakeOpenAI, fake_slack: FakeSlack, tmp_path: Path
) -> None:
    grace = 2
    h = Harness(
        start_bot(fake_openai, fake_slack, tmp_path, SHUTDOWN_GRACE_SECONDS=str(grace)),
        fake_openai,
        fake_slack,
    )
    fake_openai.latency = 12.0  # under the 15 s request timeout: one attempt that outlasts the window
    _, list_key = h.command("list")
    _, create_key = h.command("create file-abc123")
    h.openai.wait_for(lambda o: len(o.requests) >= 2, timeout=10)  # both reached OpenAI
    process = sigterm(h.bot)
    # Exits within the window (2 s), the farewell time (3 s) and a margin, well before OpenAI answers.
    assert process.wait(timeout=grace + 3 + 5) == 0, h.bot.logs
    list_text = all_text(h.slack.responses_for(list_key)[0].json)
    assert f"{UNFINISHED} `/finetune list`; please run it again" in list_text, list_text
    create_text = all_text(h.slack.responses_for(create_key)[0].json)
    # OpenAI never answered: the job may exist, so the bot must not say it was not created.
    assert "may or may not have been created" in create_text and "/finetune list" in create_text
    assert "not created" not in create_text and "wasn't created" not in create_text
    assert h.slack.messages_in("C123") == []  # no announcement claims a job either


def test_commands_arriving_during_the_drain_are_refused(tmp_path: Path) -> None:
    # Socket Mode: the connection to Slack stays open during the drain, so commands can still
    # arrive (over HTTP, uvicorn stops accepting connections at SIGTERM).
    with FakeOpenAI() as openai, FakeSlack() as slack:
        job = openai.add_job()
        bot = BotProcess(
            {
                "SLACK_BOT_TOKEN": BOT_TOKEN,
                "SLACK_APP_TOKEN": APP_TOKEN,
                "SLACK_API_URL": slack.api_url,
                "OPENAI_API_KEY": OPENAI_KEY,
                "OPENAI_BASE_URL": openai.base_url,
                "FINETUNE_READ_ACCESS": "org",  # the job was seeded at the fake, not started here
            },
            tmp_path,
        ).start()
        try:
            slack.wait_connected(timeout=15)
            openai.latency = SLOW
            first = slack.send_slash_command("list", response_url=slack.response_url("first"))
            assert not slack.wait_for_ack(first, timeout=10).get("payload")  # accepted: answer later
            openai.wait_for(lambda o: o.requests_to(r"^/fine_tuning/jobs$", "GET"), timeout=10)
            sigterm(bot)
            slack.wait_for(lambda s: "Shutting down" in bot.logs, timeout=10)
            second = slack.send_slash_command("list", response_url=slack.response_url("second"))
            refusal = slack.wait_for_ack(second, timeout=10)
            assert "restarting" in all_text(refusal.get("payload")), refusal
            assert bot.process is not None and bot.process.wait(timeout=40) == 0, bot.logs
            # The command accepted before the signal got its real answer; the refused one nothing more.
            assert job["id"] in all_text(slack.responses_for("first")[0].json)
            assert slack.responses_for("second") == []
        finally:
            bot.kill()
