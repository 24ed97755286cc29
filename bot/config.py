"""Configuration from the environment, checked all at once so an operator sees every problem.

`load_settings` never raises for bad input: it returns the list of problems, one line each naming
the variable, and `python -m bot` prints them and exits 2 (no traceback). Secret values are kept out
of `repr` so a stray log line of the settings cannot leak them.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from bot.access import DEFAULT_READ_ACCESS, ReadAccess
from bot.commands import MODEL_NAME
from bot.pricing import PRICES, Price, load_prices

DEFAULT_SLACK_API_URL = "https://slack.com/api/"
DEFAULT_OPENAI_BASE_URL = "https://api.openai.com/v1"
# A current fine-tunable snapshot (OpenAI's fine-tuning guide lists it); override with DEFAULT_MODEL.
DEFAULT_MODEL = "gpt-4o-mini-2024-07-18"
DEFAULT_DATABASE_URL = "sqlite:///finetune-bot.db"
# A bearer token shorter than this is refused: it would be guessable.
MIN_METRICS_TOKEN = 16


@dataclass(frozen=True)
class Settings:
    slack_bot_token: str = field(repr=False)
    openai_api_key: str = field(repr=False)
    slack_signing_secret: str | None = field(default=None, repr=False)
    slack_app_token: str | None = field(default=None, repr=False)
    slack_api_url: str = DEFAULT_SLACK_API_URL
    openai_base_url: str = DEFAULT_OPENAI_BASE_URL
    openai_organization: str | None = None
    openai_project: str | None = None
    default_model: str = DEFAULT_MODEL
    database_url: str = field(default=DEFAULT_DATABASE_URL, repr=False)  # may embed a password
    poll_interval_seconds: float = 30.0
    host: str = "0.0.0.0"
    port: int = 3000
    log_level: str = "INFO"
    log_format: str = "plain"  # plain text, or json: one JSON object per line (bot/logs.py)
    # Audit rows (bot/audit.py) older than this are deleted by the poll cycle.
    audit_retention_days: int = 90
    openai_timeout_seconds: float = 15.0
    openai_max_connections: int = 20
    poll_concurrency: int = 8
    admins: frozenset[str] = frozenset()
    allowed_channels: frozenset[str] = frozenset()
    openai_webhook_secret: str | None = field(default=None, repr=False)
    reconcile_interval_seconds: float = 300.0
    database_wait_seconds: float = 30.0
    read_access: ReadAccess = DEFAULT_READ_ACCESS
    # After SIGTERM: how long replies, poll cycles and notifications may still take. It covers
    # OpenAI's retry budget (~20 s) and fits Heroku's 30 s before SIGKILL.
    shutdown_grace_seconds: float = 25.0
    # The live card: each card is edited at most once per this many seconds, and all cards
    # together at most CARD_EDITS_PER_MINUTE times a minute (chat.update is Tier 3: ~50/minute).
    card_update_seconds: float = 30.0
    card_edits_per_minute: int = 40
    # Training files sent through the create form: refused before download above this size (the
    # Files API's own limit is 512 MB), and priced with this table for the cost estimate.
    max_upload_mb: int = 512
    training_prices: dict[str, Price] = field(default_factory=lambda: dict(PRICES))
    # GET /metrics: on PORT behind this bearer token, and/or on METRICS_PORT bound to 127.0.0.1.
    metrics_token: str | None = field(default=None, repr=False)
    metrics_port: int | None = None

    @property
    def socket_mode(self) -> bool:
        return self.slack_app_token is not None

    @property
    def webhooks_enabled(self) -> bool:
        return self.openai_webhook_secret is not None

    @property
    def effective_poll_interval(self) -> float:
        """With webhooks, polling is only the safety net that catches a missed delivery."""
        return self.reconcile_interval_seconds if self.webhooks_enabled else self.poll_interval_seconds

    def secrets(self) -> list[str]:
        """Every value that must never appear in a log line or a message."""
        values = [
            self.slack_bot_token,
            self.openai_api_key,
            self.slack_signing_secret,
            self.slack_app_token,
            self.openai_webhook_secret,
            self.metrics_token,
        ]
        password = urlsplit(self.database_url).password
        return [v for v in [*values, password] if v]


def database_url_problem(url: str) -> str | None:
    """Cheap syntax checks, so a mistyped DATABASE_URL is reported with the other configuration
    problems (connecting, and what can go wrong there, is bot/database.py's business)."""
    if re.match(r"^(sqlite|postgres(ql)?)(\+\w+)?://", url) is None:
        return "DATABASE_URL must be a sqlite:/// path or a postgresql:// URL"
    parts = urlsplit(url)
    if "@" not in parts.netloc and "@" in url.split("://", 1)[1]:
        # The password has a character that ends the host part early; echoing what was parsed
        # as a host or port would echo part of the password.
        return (
            "DATABASE_URL cannot be read: percent-encode special characters in the password "
            "(/ # ? @ : as %2F %23 %3F %40 %3A)"
        )
    if "," in parts.netloc:
        return None  # libpq's several hosts (h1:5432,h2:5432): leave them to the driver
    try:
        parts.port  # noqa: B018 - urlsplit checks the port only when asked
    except ValueError:
        port = parts.netloc.rpartition("@")[2].rpartition(":")[2]
        return f"DATABASE_URL: port {port!r} is not a number from 1 to 65535"
    return None


def _usable_webhook_secret(secret: str) -> bool:
    from standardwebhooks.webhooks import Webhook

    try:
        Webhook(secret)
    except Exception:  # binascii.Error, EmptyWebhookSecretError: either way, unusable
        return False
    return True


def load_settings(env: Mapping[str, str]) -> Settings | list[str]:
    problems: list[str] = []

    def text(name: str) -> str | None:
        value = env.get(name, "").strip()
        return value or None

    def required(name: str, hint: str) -> str:
        value = text(name)
        if value is None:
            problems.append(f"{name} is not set: {hint}")
            return ""
        return value

    def url(name: str, default: str) -> str:
        value = text(name) or default
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            problems.append(f"{name} must be an http(s) URL, like {default}")
        return value

    def number(name: str, default: float, low: float, high: float, *, integer: bool = False) -> float:
        raw = text(name)
        if raw is None:
            return default
        try:
            value = int(raw) if integer else float(raw)
        except ValueError:
            value = None
        if value is None or not low <= value <= high:
            kind = "a whole number" if integer else "a number"
            problems.append(f"{name} must be {kind} from {low:g} to {high:g}, got {raw!r}")
            return default
        return value

    bot_token = required(
        "SLACK_BOT_TOKEN", "the bot token (xoxb-…) from the Slack app's OAuth & Permissions page"
    )
    if bot_token and not bot_token.startswith("xoxb-"):
        problems.append("SLACK_BOT_TOKEN must be a bot token starting with xoxb-")
    app_token = text("SLACK_APP_TOKEN")
    if app_token is not None and not app_token.startswith("xapp-"):
        problems.append(
            "SLACK_APP_TOKEN must be an app-level token starting with xapp- (or unset for HTTP mode)"
        )
    signing_secret = text("SLACK_SIGNING_SECRET")
    if app_token is None and signing_secret is None:
        problems.append(
            "SLACK_SIGNING_SECRET is not set: HTTP mode needs it (Basic Information → Signing Secret); "
            "or set SLACK_APP_TOKEN to use Socket Mode"
        )
    openai_key = required("OPENAI_API_KEY", "an OpenAI API key allowed to use fine-tuning")

    slack_api_url = url("SLACK_API_URL", DEFAULT_SLACK_API_URL)
    if not slack_api_url.endswith("/"):
        slack_api_url += "/"  # slack_sdk joins method names onto it
    openai_base_url = url("OPENAI_BASE_URL", DEFAULT_OPENAI_BASE_URL).rstrip("/")

    default_model = text("DEFAULT_MODEL") or DEFAULT_MODEL
    if MODEL_NAME.fullmatch(default_model) is None:
        problems.append(f"DEFAULT_MODEL is not a model name: {default_model!r}")

    database_url = text("DATABASE_URL") or DEFAULT_DATABASE_URL
    database_problem = database_url_problem(database_url)
    if database_problem is not None:
        problems.append(database_problem)

    webhook_secret = text("OPENAI_WEBHOOK_SECRET")
    if webhook_secret is not None and not _usable_webhook_secret(webhook_secret):
        problems.append(
            "OPENAI_WEBHOOK_SECRET must be the whsec_… signing secret shown when the endpoint was created"
        )

    def id_list(name: str, pattern: str, example: str) -> frozenset[str]:
        values = [v for v in re.split(r"[\s,]+", text(name) or "") if v]
        bad = [v for v in values if re.fullmatch(pattern, v) is None]
        if bad:
            problems.append(
                f"{name} must list Slack ids separated by commas, like {example}; not: {', '.join(bad)[:200]}"
            )
        return frozenset(values)

    admins = id_list("FINETUNE_ADMINS", r"[UW][A-Z0-9]{2,20}", "U012AB3CD,U045EF6GH")
    allowed_channels = id_list("FINETUNE_ALLOWED_CHANNELS", r"[CGD][A-Z0-9]{2,20}", "C012AB3CD,G045EF6GH")

    read_access = DEFAULT_READ_ACCESS
    raw_access = (text("FINETUNE_READ_ACCESS") or DEFAULT_READ_ACCESS.value).lower()
    if raw_access in {policy.value for policy in ReadAccess}:
        read_access = ReadAccess(raw_access)
    else:
        problems.append(
            "FINETUNE_READ_ACCESS must be org (every job), slack (jobs started from Slack) or channel "
            f"(jobs started in the channel asking), got {raw_access[:40]!r}"
        )

    typed_level = text("LOG_LEVEL") or "INFO"
    log_level = typed_level.upper()
    if log_level not in logging.getLevelNamesMapping():
        # Echo what the operator typed, not our upper-cased copy of it.
        problems.append(f"LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR, got {typed_level!r}")

    log_format = (text("LOG_FORMAT") or "plain").lower()
    if log_format not in ("plain", "json"):
        problems.append(f"LOG_FORMAT must be plain or json, got {log_format[:40]!r}")
        log_format = "plain"

    metrics_token = text("METRICS_TOKEN")
    if metrics_token is not None and len(metrics_token) < MIN_METRICS_TOKEN:
        problems.append(
            f"METRICS_TOKEN must be at least {MIN_METRICS_TOKEN} characters (a random one, e.g. "
            "`openssl rand -hex 32`): it is all that guards /metrics on PORT"
        )
    port = int(number("PORT", 3000, 1, 65_535, integer=True))
    metrics_port: int | None = None
    if text("METRICS_PORT") is not None:
        metrics_port = int(number("METRICS_PORT", 0, 1, 65_535, integer=True)) or None
        if metrics_port == port:
            problems.append("METRICS_PORT must differ from PORT (it is served apart, on 127.0.0.1)")

    prices = load_prices(env)
    if isinstance(prices, str):
        problems.append(prices)
        prices = dict(PRICES)

    settings = Settings(
        slack_bot_token=bot_token,
        openai_api_key=openai_key,
        slack_signing_secret=signing_secret,
        slack_app_token=app_token,
        slack_api_url=slack_api_url,
        openai_base_url=openai_base_url,
        openai_organization=text("OPENAI_ORGANIZATION"),
        openai_project=text("OPENAI_PROJECT"),
        default_model=default_model,
        database_url=database_url,
        poll_interval_seconds=number("POLL_INTERVAL_SECONDS", 30.0, 1, 86_400),
        host=text("HOST") or "0.0.0.0",
        port=port,
        log_level=log_level,
        log_format=log_format,
        audit_retention_days=int(number("AUDIT_RETENTION_DAYS", 90, 1, 3650, integer=True)),
        openai_timeout_seconds=number("OPENAI_TIMEOUT_SECONDS", 15.0, 1, 120),
        openai_max_connections=int(number("OPENAI_MAX_CONNECTIONS", 20, 1, 1000, integer=True)),
        poll_concurrency=int(number("POLL_CONCURRENCY", 8, 1, 100, integer=True)),
        admins=admins,
        allowed_channels=allowed_channels,
        openai_webhook_secret=webhook_secret,
        reconcile_interval_seconds=number("RECONCILE_INTERVAL_SECONDS", 300.0, 1, 86_400),
        database_wait_seconds=number("DATABASE_WAIT_SECONDS", 30.0, 0, 600),
        read_access=read_access,
        shutdown_grace_seconds=number("SHUTDOWN_GRACE_SECONDS", 25.0, 0, 3600),
        card_update_seconds=number("CARD_UPDATE_SECONDS", 30.0, 1, 86_400),
        card_edits_per_minute=int(number("CARD_EDITS_PER_MINUTE", 40, 1, 50, integer=True)),
        max_upload_mb=int(number("FINETUNE_MAX_UPLOAD_MB", 512, 1, 512, integer=True)),
        training_prices=prices,
        metrics_token=metrics_token,
        metrics_port=metrics_port,
    )
    return problems or settings
