"""The message shortcut "Fine-tune on this file": the create form, with the message's `.jsonl` chosen.

Acknowledged empty at once; the form is opened in a lazy listener, still inside the shortcut's
3-second trigger since nothing (no OpenAI, no download) comes before views.open. A message
without exactly one `.jsonl` gets a private explanation through the payload's response_url.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from slack_bolt.async_app import AsyncAck, AsyncApp, AsyncRespond

from bot import modal, render
from bot.inflight import InFlight
from bot.listeners.actions import refusal_of, verdict_for
from bot.listeners.commands import Sleep, bind_request, send_reply
from bot.metrics import Metrics
from bot.runner import CommandRunner, Invocation

SHORTCUT_CALLBACK = "finetune_on_file"
# Where the acknowledgement leaves its verdict for the lazy listener (see listeners/actions.py).
VERDICT = "finetune_shortcut_verdict"


def _channel_id(body: dict[str, Any]) -> str:
    return str((body.get("channel") or {}).get("id") or "")


def register(
    app: AsyncApp,
    runner: CommandRunner,
    *,
    inflight: InFlight,
    allowed_channels: frozenset[str] = frozenset(),
    metrics: Metrics | None = None,
    sleep: Sleep = asyncio.sleep,
) -> None:
    metrics = metrics or Metrics()

    async def acknowledge(ack: AsyncAck, body: dict[str, Any], context: dict[str, Any]) -> None:
        context[VERDICT] = verdict_for(_channel_id(body), allowed_channels, inflight)
        await ack()

    async def carry_out(
        body: dict[str, Any], respond: AsyncRespond, logger: logging.Logger, context: dict[str, Any]
    ) -> None:
        verdict = context.get(VERDICT)
        what = "the Fine-tune on this file shortcut"
        if not isinstance(verdict, int):
            metrics.action("shortcut", render.Outcome.REFUSED)
            await send_reply(respond, refusal_of(verdict, allowed_channels), logger, what=what, sleep=sleep)
            return
        user = body.get("user") or {}
        invocation = Invocation(
            team_id=str((body.get("team") or {}).get("id") or user.get("team_id") or ""),
            channel_id=_channel_id(body),
            user_id=str(user.get("id") or ""),
            trigger_id=str(body.get("trigger_id") or ""),
            response_url=str(body.get("response_url") or "") or None,
        )
        bind_request("shortcut", invocation)
        async with inflight.track(verdict):
            found, others = modal.jsonl_files(body.get("message") or {})
            outcome = render.Outcome.OK
            if len(found) != 1:
                reply: render.Reply | None = render.render_shortcut_needs_one_jsonl(len(found), others)
                outcome = render.Outcome.BAD_INPUT
            else:
                try:
                    reply = await runner.open_create_form(invocation, preselected_upload=found[0])
                except Exception:
                    logger.exception("%s failed", what)
                    reply = render.render_internal_error()
                if reply is not None:
                    outcome = reply.outcome
            metrics.action("shortcut", outcome)
            if reply is not None:
                await send_reply(respond, reply, logger, what=what, sleep=sleep)

    app.shortcut({"callback_id": SHORTCUT_CALLBACK, "type": "message_action"})(
        ack=acknowledge, lazy=[carry_out]
    )
