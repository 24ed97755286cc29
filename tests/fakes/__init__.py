"""Fake OpenAI and Slack servers (real HTTP on 127.0.0.1) for testing finetune-bot end to end."""

from .openai import DEFAULT_API_KEY, FakeOpenAI, RecordedRequest
from .signing import sign_slack_request
from .slack import (
    DEFAULT_APP_TOKEN,
    DEFAULT_BOT_TOKEN,
    FakeSlack,
    RecordedCall,
    RecordedEphemeral,
    RecordedMessage,
    RecordedResponse,
    RecordedUpdate,
    RecordedUpload,
)

__all__ = [
    "DEFAULT_API_KEY",
    "DEFAULT_APP_TOKEN",
    "DEFAULT_BOT_TOKEN",
    "FakeOpenAI",
    "FakeSlack",
    "RecordedCall",
    "RecordedEphemeral",
    "RecordedMessage",
    "RecordedRequest",
    "RecordedResponse",
    "RecordedUpdate",
    "RecordedUpload",
    "sign_slack_request",
]
