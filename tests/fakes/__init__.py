"""Fake OpenAI and Slack servers (real HTTP on 127.0.0.1) for testing finetune-bot end to end."""

from .openai import DEFAULT_API_KEY, FakeOpenAI, RecordedRequest
from .signing import sign_slack_request
from .slack import (
    DEFAULT_APP_TOKEN,
    DEFAULT_BOT_TOKEN,
    FakeSlack,
    RecordedCall,
    RecordedDownload,
    RecordedEphemeral,
    RecordedMessage,
    RecordedResponse,
    RecordedUpdate,
    RecordedUpload,
    RecordedView,
)

__all__ = [
    "DEFAULT_API_KEY",
    "DEFAULT_APP_TOKEN",
    "DEFAULT_BOT_TOKEN",
    "FakeOpenAI",
    "FakeSlack",
    "RecordedCall",
    "RecordedDownload",
    "RecordedEphemeral",
    "RecordedMessage",
    "RecordedRequest",
    "RecordedResponse",
    "RecordedUpdate",
    "RecordedUpload",
    "RecordedView",
    "sign_slack_request",
]
