"""Drive a running bot the way Slack does, and read what reached the fakes."""

from __future__ import annotations

import time
import urllib.parse
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.bot_process import BOT_TOKEN, OPENAI_KEY, SIGNING_SECRET, BotProcess
from tests.fakes import FakeOpenAI, FakeSlack, sign_slack_request


def bot_env(openai: FakeOpenAI, slack: FakeSlack, **extra: str) -> dict[str, str]:
    return {
        "SLACK_BOT_TOKEN": BOT_TOKEN,
        "SLACK_SIGNING_SECRET": SIGNING_SECRET,
        "SLACK_API_URL": slack.api_url,
        "OPENAI_API_KEY": OPENAI_KEY,
        "OPENAI_BASE_URL": openai.base_url,
        # Most tests read jobs seeded straight into the fake OpenAI (not started from Slack), which
        # the default read policy hides; tests/test_read_access.py covers every policy and the default.
        "FINETUNE_READ_ACCESS": "org",
        **extra,
    }


def start_bot(openai: FakeOpenAI, slack: FakeSlack, workdir: Path, **extra: str) -> BotProcess:
    return BotProcess(bot_env(openai, slack, **extra), workdir).start()


@dataclass
class Harness:
    bot: BotProcess
    openai: FakeOpenAI
    slack: FakeSlack

    def command(
        self,
        text: str,
        *,
        user_id: str = "U123",
        channel_id: str = "C123",
        secret: str = SIGNING_SECRET,
        timestamp: int | None = None,
        skew: int = 0,
        tamper: bool = False,
    ) -> tuple[httpx.Response, str]:
        key = uuid.uuid4().hex
        fields = self.slack.slash_command_payload(
            text, user_id=user_id, channel_id=channel_id, response_url=self.slack.response_url(key)
        )
        body = urllib.parse.urlencode(fields)
        if skew:
            timestamp = (timestamp or int(time.time())) + skew
        headers = sign_slack_request(body, secret, timestamp)
        if tamper:
            body = body.replace("U123", "U999")
        response = httpx.post(f"{self.bot.url}/slack/events", content=body, headers=headers, timeout=10)
        return response, key

    def reply(self, key: str, timeout: float = 10.0) -> dict[str, Any]:
        self.slack.wait_for(lambda s: s.responses_for(key), timeout=timeout)
        return self.slack.responses_for(key)[0].json

    def assert_no_secrets(self) -> None:
        everything = self.bot.logs + repr([c.params for c in self.slack.calls])
        everything += repr([r.json for r in self.slack.responses])
        for secret in (OPENAI_KEY, BOT_TOKEN, SIGNING_SECRET):
            assert secret not in everything


def all_text(message: dict[str, Any]) -> str:
    """Every string in a message, blocks included, joined: what a reader could see."""
    out: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, str):
            out.append(value)
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(message)
    return "\n".join(out)
