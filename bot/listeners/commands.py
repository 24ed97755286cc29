"""The `/finetune` slash command: acknowledge at once, then do the work and reply.

Bad input and help are answered in the acknowledgement itself (no OpenAI call, nothing to wait
for). Everything else is acknowledged empty first, so Slack's 3-second limit holds whatever
OpenAI's latency, and the answer follows through `response_url`.
"""

from __future__ import annotations

import logging
from typing import Any

from slack_bolt.async_app import AsyncAck, AsyncApp, AsyncRespond

from bot import render
from bot.commands import HelpCommand, ParseError, parse_command
from bot.inflight import InFlight
from bot.runner import CommandRunner, Invocation

COMMAND = "/finetune"


def register(
    app: AsyncApp,
    runner: CommandRunner,
    *,
    default_model: str,
    inflight: InFlight,
    allowed_channels: frozenset[str] = frozenset(),
) -> None:
    async def finetune(
        ack: AsyncAck, command: dict[str, Any], respond: AsyncRespond, logger: logging.Logger
    ) -> None:
        channel_id = str(command.get("channel_id") or "")
        if allowed_channels and channel_id not in allowed_channels:
            await ack(
                response_type="ephemeral", **render.render_channel_not_allowed(allowed_channels).as_kwargs()
            )
            return
        parsed = parse_command(command.get("text") or "", default_model=default_model)
        if isinstance(parsed, HelpCommand):
            await ack(response_type="ephemeral", **render.render_help(COMMAND).as_kwargs())
            return
        if isinstance(parsed, ParseError):
            await ack(response_type="ephemeral", **render.render_parse_error(parsed, COMMAND).as_kwargs())
            return
        await ack()
        invocation = Invocation(
            team_id=str(command.get("team_id") or ""),
            channel_id=channel_id,
            user_id=str(command.get("user_id") or ""),
        )
        async with inflight.track():
            try:
                reply = await runner.run(parsed, invocation)
            except Exception:
                logger.exception("/finetune %s failed", type(parsed).__name__)
                reply = render.render_internal_error()
            if reply is not None:
                try:
                    await respond(response_type="ephemeral", replace_original=False, **reply.as_kwargs())
                except Exception:
                    # response_url down or hung: nothing more can reach this user; say so in the logs.
                    logger.exception("could not reply to /finetune %s", type(parsed).__name__)

    app.command(COMMAND)(finetune)
