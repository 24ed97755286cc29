"""Start-up: read configuration, refuse clearly if it is wrong, then serve."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys

from dotenv import load_dotenv

from bot.config import Settings, load_settings
from bot.logs import configure_logging
from bot.preflight import Refused, run_check, scope_warnings, verify_app_token, verify_bot_token
from bot.slack_app import BotIdentity

log = logging.getLogger("bot")

USAGE = """\
Configuration comes from the environment, or from a .env file in the working directory (the
environment wins). Required: SLACK_BOT_TOKEN (xoxb-…), OPENAI_API_KEY, and either SLACK_APP_TOKEN
or SLACK_SIGNING_SECRET, which choose the mode:

  Socket Mode  SLACK_APP_TOKEN=xapp-… (scope connections:write). The bot connects out to Slack;
               no public URL is needed. GET /healthz is served on PORT at once, while it connects.
  HTTP mode    SLACK_SIGNING_SECRET=… (and no SLACK_APP_TOKEN). Slack sends commands to
               POST /slack/events on PORT, which needs a public https URL.

Optional: SLACK_API_URL, OPENAI_BASE_URL, OPENAI_ORGANIZATION, OPENAI_PROJECT, DEFAULT_MODEL,
DATABASE_URL (default sqlite:///finetune-bot.db; postgresql://… for replicas),
DATABASE_WAIT_SECONDS (30), POLL_INTERVAL_SECONDS (30), POLL_CONCURRENCY (8),
OPENAI_WEBHOOK_SECRET, RECONCILE_INTERVAL_SECONDS (300), PORT (3000), HOST (0.0.0.0),
LOG_LEVEL (INFO), LOG_FORMAT (plain; or json: one JSON object per line),
AUDIT_RETENTION_DAYS (90), OPENAI_TIMEOUT_SECONDS (15), OPENAI_MAX_CONNECTIONS (20),
SHUTDOWN_GRACE_SECONDS (25), CARD_UPDATE_SECONDS (30), CARD_EDITS_PER_MINUTE (40),
FINETUNE_ADMINS, FINETUNE_ALLOWED_CHANNELS, FINETUNE_READ_ACCESS (channel),
FINETUNE_MAX_UPLOAD_MB (512), FINETUNE_TRAINING_PRICES (built-in table; e.g.
gpt-4o-mini=3.00,gpt-4o=25: US dollars per million training tokens).
README.md explains each.

Metrics and readiness: GET /readyz on PORT (200 when the database answers, the scheduler runs
and, in Socket Mode, the socket is connected; else 503 naming what is down). GET /metrics
(Prometheus) is off unless METRICS_TOKEN (16+ characters: served on PORT, requests must send
"Authorization: Bearer <token>") or METRICS_PORT (served on 127.0.0.1 only, no token) is set.

Exit codes: 0 stopped normally (SIGTERM/SIGINT) or --check passed; 2 configuration problem,
one line per problem naming the variable."""


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bot",
        description="finetune-bot: start, inspect and cancel OpenAI fine-tuning jobs from Slack.",
        epilog=USAGE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="check the configuration, the Slack tokens, OpenAI and the database, then exit "
        "(0 all good, 2 with one line per problem) without serving",
    )
    return parser.parse_args(argv)


def refuse(problems: list[str]) -> int:
    print("finetune-bot cannot start; fix the configuration:", file=sys.stderr)
    for problem in problems:
        print(f"  - {problem}", file=sys.stderr)
    return 2


async def check_slack(settings: Settings) -> tuple[BotIdentity | None, str | None]:
    """A refused token is a configuration error worth stopping for; an unreachable Slack is
    not (HTTP mode works from what it knows, Socket Mode keeps connecting in the background).
    Both tokens are checked at once, so a Slack that does not answer delays start-up only once."""
    app_check = verify_app_token(settings) if settings.socket_mode else asyncio.sleep(0)
    found, app = await asyncio.gather(verify_bot_token(settings), app_check, return_exceptions=True)
    for outcome in (found, app):
        if isinstance(outcome, Refused):
            return None, str(outcome)
    identity: BotIdentity | None = None
    if isinstance(found, BaseException):
        log.warning("%s; starting anyway", found)
    else:
        identity = found
        log.info("Slack bot user %s in workspace %s", identity.user_id, identity.team)
        for line in scope_warnings(identity):
            log.warning("%s", line)
    if isinstance(app, BaseException):
        log.warning("%s; connecting in the background", app)
    return identity, None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    # A .env in the working directory fills in what the environment does not set.
    load_dotenv(os.path.join(os.getcwd(), ".env"), override=False)
    settings = load_settings(os.environ)
    if isinstance(settings, list):
        return refuse(settings)
    configure_logging(settings.log_level, settings.secrets(), settings.log_format)
    if args.check:
        return run_check(settings)
    # From here the settings are the one source of configuration: Bolt would otherwise read
    # SLACK_BOT_TOKEN from the environment by itself, and warn that one token goes unused.
    os.environ.pop("SLACK_BOT_TOKEN", None)
    from bot.database import DatabaseProblem, open_database
    from bot.server import ListenProblem, listen, serve  # heavy imports once the settings are good

    # The port first: a port in use is reported before the bot talks to Slack or waits for its
    # database, and nothing says "ready" on a port it does not hold.
    try:
        sock = listen(settings.host, settings.port)
    except ListenProblem as error:
        return refuse([str(error)])
    metrics_socket = None
    if settings.metrics_port is not None:
        try:
            # Localhost only: without a token, /metrics must not be reachable from elsewhere.
            metrics_socket = listen("127.0.0.1", settings.metrics_port, name="METRICS_PORT")
        except ListenProblem as error:
            sock.close()
            return refuse([str(error)])
    with sock, metrics_socket or contextlib.nullcontext():
        identity, problem = asyncio.run(check_slack(settings))
        if problem:
            return refuse([problem])
        try:
            store = open_database(settings.database_url, wait_seconds=settings.database_wait_seconds)
        except DatabaseProblem as error:
            return refuse([str(error)])
        serve(settings, store, sock, identity, metrics_socket)
    return 0
