"""Button clicks (`block_actions`): acknowledge at once, then act and answer the clicker.

Every click is acknowledged empty before anything else, so Slack's 3-second limit holds whatever
OpenAI does; the work runs in a lazy listener. Nothing in the payload is trusted beyond the job id
in the button's value (checked for its shape): who clicked is Slack's signed `user.id`, and the job
is read fresh from OpenAI and authorized exactly like the commands (bot/runner.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

from slack_bolt.async_app import AsyncAck, AsyncApp, AsyncRespond

from bot import buttons, ids, render
from bot.commands import (
    CheckpointsCommand,
    EventsCommand,
    GetCommand,
    ListCommand,
    OpenCreateFormCommand,
    parse_command,
)
from bot.inflight import InFlight
from bot.listeners.commands import RECEIVED, Sleep, bind_request, send_reply
from bot.metrics import Metrics
from bot.runner import CommandRunner, Invocation

# (job id, channel id, message ts, clicking user) → what to tell the clicker privately, if anything.
# The default re-renders the announcement; the live card swaps in its own.
RefreshCard = Callable[[str, str, str, str], Awaitable[render.Reply | None]]

# Where the acknowledgement leaves its verdict for the lazy listener (see listeners/commands.py).
VERDICT = "finetune_action_verdict"
REFUSED_CHANNEL = "channel"
RESTARTING = "restarting"
CHANGES = {buttons.JOB_CANCEL: "cancel", buttons.JOB_PAUSE: "pause", buttons.JOB_RESUME: "resume"}


@dataclass(frozen=True)
class Click:
    action_id: str
    value: str
    team_id: str
    channel_id: str
    user_id: str
    message_ts: str | None
    is_ephemeral: bool
    trigger_id: str = ""  # what views.open needs (the help's New fine-tuning job button)


def verdict_for(channel_id: str, allowed_channels: frozenset[str], inflight: InFlight) -> int | str:
    """What an interaction's acknowledgement decides: refused (not an allowed channel), refused
    (shutting down: promise nothing this process may not keep), or an InFlight ticket — counted
    before the ack goes out, so a SIGTERM right after it still waits for the answer."""
    if allowed_channels and channel_id not in allowed_channels:
        return REFUSED_CHANNEL
    if inflight.closing:
        return RESTARTING
    return inflight.reserve()


def refusal_of(verdict: object, allowed_channels: frozenset[str]) -> render.Reply:
    """What to tell the person whose interaction `verdict_for` refused."""
    if verdict == REFUSED_CHANNEL:
        return render.render_channel_not_allowed(allowed_channels)
    return render.render_restarting()


def click_of(body: dict[str, Any]) -> Click:
    action = (body.get("actions") or [{}])[0]
    container = body.get("container") or {}
    channel = body.get("channel") or {}
    return Click(
        action_id=str(action.get("action_id") or ""),
        value=str(action.get("value") or ""),
        team_id=str((body.get("team") or {}).get("id") or (body.get("user") or {}).get("team_id") or ""),
        channel_id=str(channel.get("id") or container.get("channel_id") or ""),
        user_id=str((body.get("user") or {}).get("id") or ""),
        message_ts=str(container.get("message_ts") or "") or None,
        is_ephemeral=bool(container.get("is_ephemeral")),
        trigger_id=str(body.get("trigger_id") or ""),
    )


def register(
    app: AsyncApp,
    runner: CommandRunner,
    *,
    inflight: InFlight,
    allowed_channels: frozenset[str] = frozenset(),
    refresh_card: RefreshCard | None = None,
    metrics: Metrics | None = None,
    sleep: Sleep = asyncio.sleep,
) -> None:
    refresh = refresh_card or runner.refresh_card
    metrics = metrics or Metrics()

    async def acknowledge(ack: AsyncAck, body: dict[str, Any], context: dict[str, Any]) -> None:
        context[VERDICT] = verdict_for(click_of(body).channel_id, allowed_channels, inflight)
        context[RECEIVED] = time.monotonic()
        await ack()

    async def carry_out(
        body: dict[str, Any], respond: AsyncRespond, logger: logging.Logger, context: dict[str, Any]
    ) -> None:
        click = click_of(body)
        verdict = context.get(VERDICT)
        what = f"the {click.action_id} button"
        if not isinstance(verdict, int):
            metrics.action(click.action_id, render.Outcome.REFUSED)
            await send_reply(respond, refusal_of(verdict, allowed_channels), logger, what=what, sleep=sleep)
            return

        async def farewell() -> None:
            farewell_reply = render.render_unfinished(_label(click.action_id))
            await send_reply(respond, farewell_reply, logger, what=what, sleep=sleep)

        async with inflight.track(verdict, farewell):
            try:
                reply = await handle(click, respond, logger)
            except Exception:
                logger.exception("%s failed", what)
                reply = render.render_internal_error()
            metrics.action(click.action_id, render.Outcome.OK if reply is None else reply.outcome)
            if reply is not None:
                sent = await send_reply(respond, reply, logger, what=what, sleep=sleep)
                received = context.get(RECEIVED)
                if sent and isinstance(received, float):
                    metrics.reply("action", time.monotonic() - received)

    async def handle(click: Click, respond: AsyncRespond, logger: logging.Logger) -> render.Reply | None:
        invocation = Invocation(team_id=click.team_id, channel_id=click.channel_id, user_id=click.user_id)
        job = click.value if ids.is_job_id(click.value) else None
        bind_request(click.action_id, replace(invocation, trigger_id=click.trigger_id), job)
        if click.action_id == buttons.OPEN_CREATE_FORM:
            # The form opens within the click's 3-second trigger: nothing is asked of OpenAI first.
            opening = Invocation(click.team_id, click.channel_id, click.user_id, trigger_id=click.trigger_id)
            return await runner.run(OpenCreateFormCommand(), opening)
        if click.action_id == buttons.LIST_NEXT_PAGE:
            command = parse_command(click.value, default_model="")
            if not isinstance(command, ListCommand):
                return render.render_button_broken()
            return await runner.run(command, invocation)
        if not ids.is_job_id(click.value):
            return render.render_button_broken()
        job_id = click.value
        if click.action_id == buttons.JOB_EVENTS:
            return await runner.run(EventsCommand(job_id), invocation)
        if click.action_id == buttons.JOB_CHECKPOINTS:
            return await runner.run(CheckpointsCommand(job_id), invocation)
        if click.action_id == buttons.JOB_REFRESH:
            if click.is_ephemeral or click.message_ts is None:
                # A `get` reply, which only response_url can edit: show it again, current.
                await replace_original(respond, await runner.run(GetCommand(job_id), invocation), logger)
                return None
            return await refresh(job_id, click.channel_id, click.message_ts, click.user_id)
        action = CHANGES.get(click.action_id)
        if action is None:
            return render.render_button_broken()
        result = await runner.job_action(action, job_id, invocation)
        if result.job is not None:
            await update_clicked(click, result.job.id, invocation, respond, logger)
        return result.reply

    async def update_clicked(
        click: Click, job_id: str, invocation: Invocation, respond: AsyncRespond, logger: logging.Logger
    ) -> None:
        """Bring the clicked message to the job's new state; its private answer is the action's own."""
        if click.is_ephemeral or click.message_ts is None:
            job = await runner.read_job(job_id, invocation)
            if job is not None:
                await replace_original(respond, runner.render_get(job, invocation), logger)
            return
        await refresh(job_id, click.channel_id, click.message_ts, click.user_id)

    for action_id in (*buttons.JOB_ACTION_IDS, buttons.LIST_NEXT_PAGE, buttons.OPEN_CREATE_FORM):
        app.action(action_id)(ack=acknowledge, lazy=[carry_out])


async def replace_original(respond: AsyncRespond, reply: render.Reply | None, logger: logging.Logger) -> None:
    if reply is None:
        return
    try:
        await respond(replace_original=True, **reply.as_kwargs())
    except Exception as error:  # the answer still goes out; only the old message stays as it was
        logger.warning("could not replace the clicked message: %s", type(error).__name__)


def _label(action_id: str) -> str:
    return action_id.removeprefix("job_").replace("_", " ")
