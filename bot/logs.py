"""Logging set-up with last lines of defence, applied to every record whoever logged it (our code,
Bolt, slack_sdk, httpx, asyncio, uvicorn) before it reaches the handler:

- every configured secret is masked;
- Bolt's and slack_sdk's records below WARNING are dropped: at INFO and DEBUG they dump request
  bodies ("Invalid request signature detected (… body: …)", "request body: …"), message payloads
  and `response_url`s, which are attacker-controlled or capabilities;
- every message is one line (control characters escaped) of bounded length, so no request can
  forge log lines or write megabytes of log;
- a message repeated more than `RateLimit.burst` times in `RateLimit.window` seconds is suppressed,
  and the next one let through says how many were (an accept-error storm at the open-file limit,
  a flood of forged requests).

The same masking guards what goes to Slack: `configure_logging` also installs the secrets for
`redact` / `redact_value`, which every message passes through on its way out (`render.Reply`),
so an OpenAI error that quotes the key is as harmless in a reply as in a log line.

`LOG_FORMAT=json` writes one JSON object per line instead (`JsonFormatter`): time, level, logger,
message, the exception if any, and the context of the request or job being handled (`log_context`,
set with `contextvars` at the edges: listeners, poller, notifier), so no log call has to name it.
The same filters apply, to every field: the context is masked like the message.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
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


# -- context: what a log line is about, set at the edges ------------------------------------------

# The fields a JSON line may carry besides time/level/logger/message (unknown names are ignored,
# so a typo cannot add an unbounded field): the subcommand or action, the job, the Slack channel
# and user, and Slack's id of the request (its trigger_id: the same on every redelivery, and the
# key of a create; see README "Logs").
CONTEXT_FIELDS = ("command", "job_id", "channel", "user", "slack_request")
CONTEXT_ATTRIBUTE = "finetune_context"
MAX_CONTEXT_VALUE = 200
_context: contextvars.ContextVar[dict[str, str]] = contextvars.ContextVar("finetune_log_context")
# This process (the bot's owner id, the same on its leases and heartbeats); set once at start.
_replica = ""


def set_replica(replica: str) -> None:
    global _replica
    _replica = replica


def current_context() -> dict[str, str]:
    return dict(_context.get({}))


def bind_context(**fields: str | None) -> contextvars.Token[dict[str, str]]:
    """Add `fields` to the context of everything logged from here in this task (and the tasks it
    starts); None or empty leaves a field out. Returns the token `unbind_context` takes."""
    merged = dict(_context.get({}))
    for name, value in fields.items():
        if name in CONTEXT_FIELDS and value:
            merged[name] = one_line(str(value), MAX_CONTEXT_VALUE)
    return _context.set(merged)


def unbind_context(token: contextvars.Token[dict[str, str]]) -> None:
    _context.reset(token)


@contextlib.contextmanager
def log_context(**fields: str | None) -> Iterator[None]:
    token = bind_context(**fields)
    try:
        yield
    finally:
        unbind_context(token)


class AddContext(logging.Filter):
    """Copies the current context (and the replica) onto the record, before the secret filter."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = dict(_context.get({}))
        if _replica:
            context["replica"] = _replica
        setattr(record, CONTEXT_ATTRIBUTE, context)
        return True


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
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        # The context is written as fields of its own (LOG_FORMAT=json): masked like the message.
        context = getattr(record, CONTEXT_ATTRIBUTE, None)
        if context:
            setattr(record, CONTEXT_ATTRIBUTE, {k: self.redact(v) for k, v in context.items()})
        return True


# Loggers whose records below WARNING may carry request bodies, payloads or response_urls. Bolt's
# own loggers are named after the app's logger (bot.slack, from slack_app.py) or slack_bolt.*.
CHATTY_LIBRARIES = ("slack_bolt", "slack_sdk", "bot.slack")
MAX_MESSAGE = 2000


class QuietLibraries(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            return True
        return not any(
            record.name == name or record.name.startswith((f"{name}.", f"{name}:"))
            for name in CHATTY_LIBRARIES
        )


def one_line(text: str, limit: int = MAX_MESSAGE) -> str:
    """`text` with control characters escaped (no forged lines) and cut to `limit` characters."""
    if text.isprintable() and len(text) <= limit:
        return text
    cut = text[:limit]
    escaped = "".join(c if c.isprintable() else repr(c)[1:-1] for c in cut)
    return escaped + (f"… [{len(text) - limit} more characters]" if len(text) > limit else "")


class OneLine(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = one_line(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_text and len(record.exc_text) > 10 * MAX_MESSAGE:
            record.exc_text = record.exc_text[: 10 * MAX_MESSAGE] + "… [traceback cut]"
        return True


class RateLimit(logging.Filter):
    """At most `burst` identical messages (same logger, level and first 200 characters) per
    `window` seconds; the first one let through afterwards says how many were suppressed."""

    def __init__(
        self, burst: int = 10, window: float = 10.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self.burst, self.window, self._clock = burst, window, clock
        # key -> [window start, lines let through in it, lines suppressed since the last report]
        self._seen: dict[tuple[str, int, str], list[float]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        now = self._clock()
        key = (record.name, record.levelno, record.getMessage()[:200])
        state = self._seen.get(key)
        if state is None or now - state[0] >= self.window:
            suppressed = int(state[2]) if state else 0
            self._forget_old(now)
            self._seen[key] = [now, 1, 0]
            if suppressed:
                record.msg = f"{record.getMessage()} [{suppressed} similar lines suppressed]"
                record.args = None
            return True
        if state[1] < self.burst:
            state[1] += 1
            return True
        state[2] += 1
        return False

    def _forget_old(self, now: float) -> None:
        # Bounded memory however many distinct messages there are; a forgotten key only loses
        # its "suppressed" count, never a line.
        if len(self._seen) > 1000:
            self._seen = {k: v for k, v in self._seen.items() if now - v[0] < self.window}


class JsonFormatter(logging.Formatter):
    """One JSON object per line. `json.dumps` escapes every control character (and, with ASCII
    output, U+2028/U+2029 too), so nothing in a message, context value or traceback can end the
    line early: the traceback is one string field whose line breaks are `\\n` escapes."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, value in (getattr(record, CONTEXT_ATTRIBUTE, None) or {}).items():
            entry.setdefault(name, value)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = record.stack_info
        return json.dumps(entry, ensure_ascii=True, default=str)


LOG_FORMATS = ("plain", "json")


def configure_logging(level: str, secrets: Iterable[str], log_format: str = "plain") -> None:
    secrets = list(secrets)
    install_secrets(secrets)
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    # Order matters: the context is attached before secrets are masked (so it is masked too), and
    # secrets are masked before a message is cut, so no part of one survives.
    handler.addFilter(QuietLibraries())
    handler.addFilter(AddContext())
    handler.addFilter(RedactSecrets(secrets))
    handler.addFilter(OneLine())
    handler.addFilter(RateLimit())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # httpx logs every request at INFO; that is noise at our default level.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, root.level))
    logging.getLogger("httpcore").setLevel(max(logging.WARNING, root.level))
    # APScheduler logs two INFO lines per poll cycle ("Running job…", "executed successfully"):
    # newcomers read them as problems. Shown only when LOG_LEVEL=DEBUG.
    logging.getLogger("apscheduler").setLevel(logging.WARNING if root.level > logging.DEBUG else root.level)
