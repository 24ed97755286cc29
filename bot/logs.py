"""Logging set-up with a last line of defence: every configured secret is masked in every record,
whoever logged it (our code, Bolt, slack_sdk, httpx), before it reaches a handler.

The same masking guards what goes to Slack: `configure_logging` also installs the secrets for
`redact` / `redact_value`, which every message passes through on its way out (`render.Reply`),
so an OpenAI error that quotes the key is as harmless in a reply as in a log line.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from typing import Any

REDACTED = "[redacted]"
# Shorter values would mask ordinary words; every real token and key is far longer.
MIN_SECRET_CHARS = 6


class Redactor:
    def __init__(self, secrets: Iterable[str] = ()) -> None:
        # Longest first, so a secret that contains another is masked whole.
        self._secrets = sorted({s for s in secrets if len(s) >= MIN_SECRET_CHARS}, key=len, reverse=True)

    def text(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text

    def value(self, value: Any) -> Any:
        """Every string inside `value` (dicts, lists, tuples) masked; other values as they are."""
        if not self._secrets:
            return value
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {key: self.value(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(self.value(item) for item in value)
        return value


# The process's secrets, installed once at start-up by `configure_logging`.
_redactor = Redactor()


def redact(text: str) -> str:
    return _redactor.text(text)


def redact_value(value: Any) -> Any:
    return _redactor.value(value)


def install_secrets(secrets: Iterable[str]) -> None:
    global _redactor
    _redactor = Redactor(secrets)


class RedactSecrets(logging.Filter):
    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self._redactor = Redactor(secrets)

    def redact(self, text: str) -> str:
        return self._redactor.text(text)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        redacted = self.redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        return True


def configure_logging(level: str, secrets: Iterable[str]) -> None:
    secrets = list(secrets)
    install_secrets(secrets)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactSecrets(secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # httpx logs every request at INFO; that is noise at our default level.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, root.level))
    logging.getLogger("httpcore").setLevel(max(logging.WARNING, root.level))
