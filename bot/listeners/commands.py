"""The `/finetune` slash command: acknowledge at once, then do the work and reply.

Bad input, help and refusals are answered in the acknowledgement itself (no OpenAI call, nothing
to wait for). Everything else is acknowledged empty first, so Slack's 3-second limit holds whatever
OpenAI's latency, and the answer follows through `response_url`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from slack_bolt.async_app import AsyncAck, AsyncApp, AsyncRespond

from bot import render
from bot.commands import Command, HelpCommand, ParseError, parse_command, subcommand_name
from bot.inflight import InFlight
from bot.logs import bind_context
from bot.metrics import Metrics
from bot.openai_client import parse_retry_after
from bot.runner import CommandRunner, Invocation

COMMAND = "/finetune"
REPLY_ATTEMPTS = 3
# Where the acknowledgement leaves the InFlight ticket for the lazy listener (Bolt copies the
# context, so a plain value is what survives).
TICKET = "finetune_inflight_ticket"
# When the acknowledgement began (time.monotonic()), for the reply latency.
RECEIVED = "finetune_received_at"
# How a listener waits before retrying a reply: the process' clock (bot/clock.py), asyncio.sleep.
Sleep = Callable[[float], Awaitable[None]]


def bind_request(what: str, invocation: Invocation, job_id: str | None = None) -> None:
    """The log context of the rest of this lazy listener's task (Bolt runs each in a task of its
    own, so nothing leaks to the next request): every line logged while carrying the request out
    names it. Slack's request id is the trigger_id (see README "Logs")."""
    bind_context(
        command=what,
        job_id=job_id,
        channel=invocation.channel_id,
        user=invocation.user_id,
        slack_request=invocation.trigger_id,
    )


async def send_reply(
    respond: AsyncRespond,
    reply: render.Reply,
    logger: logging.Logger,
    *,
    what: str,
    sleep: Sleep = asyncio.sleep,
) -> bool:
    """Reply through response_url; True once Slack accepted it. slack_sdk raises only on connection
    errors and hands back any HTTP status, so a 429 or 5xx would drop the reply silently: retry
    those a few times (honouring Retry-After), and log what still fails — the user can be reached
    no other way."""
    for attempt in range(REPLY_ATTEMPTS):
        try:
            response = await respond(response_type="ephemeral", replace_original=False, **reply.as_kwargs())
        except Exception as error:
            status, retry_after = None, None
            failure = type(error).__name__
        else:
            if 200 <= response.status_code < 300:
                return True
            status, failure = response.status_code, f"HTTP {response.status_code}"
            retry_after = parse_retry_after((response.headers or {}).get("retry-after"))
        retryable = status is None or status == 429 or status >= 500
        if not retryable or attempt == REPLY_ATTEMPTS - 1:
            logger.warning("could not reply to %s through response_url: %s", what, failure)
            return False
        await sleep(min(10.0, retry_after if retry_after is not None else 0.5 * 2**attempt))
    return False  # pragma: no cover - the loop returns on its last attempt


def register(
    app: AsyncApp,
    runner: CommandRunner,
    *,
    default_model: str,
    inflight: InFlight,
    allowed_channels: frozenset[str] = frozenset(),
    metrics: Metrics | None = None,
    sleep: Sleep = asyncio.sleep,
) -> None:
    metrics = metrics or Metrics()

    def triage(command: dict[str, Any]) -> tuple[render.Reply | None, Command | None]:
        """What to say in the ack itself (refusals, help, bad input), or the command to carry out."""
        if allowed_channels and str(command.get("channel_id") or "") not in allowed_channels:
            return render.render_channel_not_allowed(allowed_channels), None
        parsed = parse_command(command.get("text") or "", default_model=default_model)
        if isinstance(parsed, HelpCommand):
            return render.render_help(COMMAND), None
        if isinstance(parsed, ParseError):
            return render.render_parse_error(parsed, COMMAND), None
        return None, parsed

    async def acknowledge(ack: AsyncAck, command: dict[str, Any], context: dict[str, Any]) -> None:
        answer, _ = triage(command)
        if answer is None and inflight.closing:
            # Shutting down (a deploy): promise nothing this process might not live to keep.
            answer = render.render_restarting()
        if answer is not None:
            # Help, bad input and refusals end here: their answer is the acknowledgement.
            metrics.command(subcommand_name(command.get("text") or ""), answer.outcome)
            await ack(response_type="ephemeral", **answer.as_kwargs())
            return
        # Counted before the ack goes out, so a SIGTERM right after it still waits for the reply.
        context[TICKET] = inflight.reserve()
        context[RECEIVED] = time.monotonic()
        await ack()

    async def carry_out(
        command: dict[str, Any], respond: AsyncRespond, logger: logging.Logger, context: dict[str, Any]
    ) -> None:
        ticket = context.get(TICKET)
        _, parsed = triage(command)
        if parsed is None or ticket is None:
            return  # answered (or refused) in the acknowledgement
        invocation = Invocation(
            team_id=str(command.get("team_id") or ""),
            channel_id=str(command.get("channel_id") or ""),
            user_id=str(command.get("user_id") or ""),
            trigger_id=str(command.get("trigger_id") or ""),
            response_url=str(command.get("response_url") or "") or None,
        )
        name = type(parsed).__name__.removesuffix("Command").lower()
        bind_request(subcommand_name(command.get("text") or ""), invocation, getattr(parsed, "job_id", None))

        async def farewell() -> None:
            # The shutdown window ran out: the user must not be left waiting for nothing.
            reply = render.render_unfinished(name, COMMAND)
            await send_reply(respond, reply, logger, what=f"{COMMAND} {name}", sleep=sleep)

        async with inflight.track(ticket, farewell):
            try:
                reply = await runner.run(parsed, invocation)
            except Exception:
                logger.exception("/finetune %s failed", type(parsed).__name__)
                reply = render.render_internal_error()
            metrics.command(subcommand_name(command.get("text") or ""), _outcome(reply))
            if reply is not None:
                sent = await send_reply(
                    respond, reply, logger, what=f"/finetune {type(parsed).__name__}", sleep=sleep
                )
                received = context.get(RECEIVED)
                if sent and isinstance(received, float):
                    metrics.reply("command", time.monotonic() - received)

    # Bolt answers Slack as soon as `acknowledge` returns; `carry_out` runs after, as its own task
    # (a "lazy listener"), so no OpenAI latency can ever delay the acknowledgement.
    app.command(COMMAND)(ack=acknowledge, lazy=[carry_out])


def _outcome(reply: render.Reply | None) -> render.Outcome:
    """None: the visible message (an announcement, a form) said it all."""
    return render.Outcome.OK if reply is None else reply.outcome
