"""The training report's **Start fine-tuning** button: acknowledged at once, then the upload to
OpenAI and the create run after (they take as long as the file needs), and the clicker is answered
privately. Who may start, and what happens once, is decided in bot/training_flow.py."""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

from slack_bolt.async_app import AsyncAck, AsyncApp, AsyncRespond

from bot import render
from bot.inflight import InFlight
from bot.listeners.actions import VERDICT, click_of, refusal_of, verdict_for
from bot.listeners.commands import Sleep, bind_request, send_reply
from bot.metrics import Metrics
from bot.runner import Invocation
from bot.training_flow import TrainingFlow

TRAINING_START = "training_start"
UPLOAD_ID = re.compile(r"[0-9a-f]{32}")


def register(
    app: AsyncApp,
    flow: TrainingFlow,
    *,
    inflight: InFlight,
    allowed_channels: frozenset[str] = frozenset(),
    metrics: Metrics | None = None,
    sleep: Sleep = asyncio.sleep,
) -> None:
    metrics = metrics or Metrics()

    async def acknowledge(ack: AsyncAck, body: dict[str, Any], context: dict[str, Any]) -> None:
        context[VERDICT] = verdict_for(click_of(body).channel_id, allowed_channels, inflight)
        await ack()

    async def carry_out(
        body: dict[str, Any], respond: AsyncRespond, logger: logging.Logger, context: dict[str, Any]
    ) -> None:
        click = click_of(body)
        verdict = context.get(VERDICT)
        what = "the Start fine-tuning button"
        if not isinstance(verdict, int):
            metrics.action(TRAINING_START, render.Outcome.REFUSED)
            await send_reply(respond, refusal_of(verdict, allowed_channels), logger, what=what, sleep=sleep)
            return
        if UPLOAD_ID.fullmatch(click.value) is None:
            metrics.action(TRAINING_START, render.Outcome.BAD_INPUT)
            await send_reply(respond, render.render_button_broken(), logger, what=what, sleep=sleep)
            return
        invocation = Invocation(
            team_id=click.team_id,
            channel_id=click.channel_id,
            user_id=click.user_id,
            # The click's own trigger id keys the create (and is its Idempotency-Key), like a command's.
            trigger_id=str(body.get("trigger_id") or ""),
            response_url=str(body.get("response_url") or "") or None,
        )

        bind_request(TRAINING_START, invocation)

        async def farewell() -> None:
            unfinished = render.render_unfinished("start fine-tuning")
            await send_reply(respond, unfinished, logger, what=what, sleep=sleep)

        async with inflight.track(verdict, farewell):
            try:
                reply = await flow.start(click.value, invocation)
            except Exception:
                logger.exception("%s failed", what)
                reply = render.render_internal_error()
            metrics.action(TRAINING_START, render.Outcome.OK if reply is None else reply.outcome)
            if reply is not None:
                await send_reply(respond, reply, logger, what=what, sleep=sleep)

    app.action(TRAINING_START)(ack=acknowledge, lazy=[carry_out])
