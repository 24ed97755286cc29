"""A graceful stop: a reply still owed when SIGTERM arrives is sent before the process exits.

Who may cancel what, and the allowed channels, need no process of their own: they are in
tests/test_inprocess_commands.py, on the production listeners and runner.
"""

from __future__ import annotations

import signal
from pathlib import Path

from tests.fakes import FakeOpenAI, FakeSlack
from tests.harness import Harness, all_text, start_bot


def test_sigterm_finishes_the_reply_in_flight(
    fake_openai: FakeOpenAI, fake_slack: FakeSlack, tmp_path: Path
) -> None:
    bot = start_bot(fake_openai, fake_slack, tmp_path)
    h = Harness(bot, fake_openai, fake_slack)
    fake_openai.latency = 2.0
    response, key = h.command("list")
    assert response.status_code == 200 and h.slack.responses_for(key) == []
    assert bot.process is not None
    bot.process.send_signal(signal.SIGTERM)
    code = bot.process.wait(timeout=30)  # a safety net only; bot/server.py bounds the drain itself
    assert code == 0, bot.logs
    # The user who was promised an answer got it before the process exited.
    assert h.slack.responses_for(key), bot.logs
    assert "No fine-tuning jobs" in all_text(h.slack.responses_for(key)[0].json)
