"""The create form: its submission (`view_submission`) and its file menus' options (`block_suggestion`).

A submission is checked in the acknowledgement itself (pure, no I/O): problems go back inline on
their fields (`response_action: errors`) and the form stays open. A valid one is acknowledged
empty, which closes the form, and carried out in a lazy listener, so no OpenAI or Slack download
latency can hold up Slack's 3 seconds. The file menus must answer within those same 3 seconds, so
OpenAI gets OPTIONS_SECONDS to list the files and the menu says so when it did not make it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from slack_bolt.async_app import AsyncAck, AsyncApp

from bot import modal, render
from bot.inflight import InFlight
from bot.listeners.commands import bind_request
from bot.metrics import Metrics
from bot.openai_client import OpenAIError
from bot.runner import CommandRunner, Invocation

# Where the acknowledgement leaves its InFlight ticket for the lazy listener (see listeners/commands.py).
TICKET = "finetune_form_ticket"
# OpenAI's share of Slack's 3 seconds for the file menu (the rest: Slack, signature, rendering).
OPTIONS_SECONDS = 2.0
# How many of the newest fine-tune files the menu looks through for what was typed: one request
# (the API pages up to 10,000), enough to find a file by name, small enough to answer in time.
OPTIONS_SCAN = 1000


def register(
    app: AsyncApp,
    runner: CommandRunner,
    *,
    default_model: str,
    inflight: InFlight,
    allowed_channels: frozenset[str] = frozenset(),
    metrics: Metrics | None = None,
) -> None:
    metrics = metrics or Metrics()

    async def acknowledge(ack: AsyncAck, view: dict[str, Any], context: dict[str, Any]) -> None:
        form = modal.parse_submission(view, default_model=default_model)
        if isinstance(form, dict):
            metrics.action("create_form", render.Outcome.BAD_INPUT)
            await ack(response_action="errors", errors=form)
            return
        problem = None
        outcome = render.Outcome.REFUSED
        if allowed_channels and form.channel_id not in allowed_channels:
            # The form was opened where the bot works; this only stops a view from elsewhere.
            problem = "finetune-bot isn't enabled in the channel this form was opened from."
        elif not form.channel_id:
            problem = "This form lost track of its channel: close it and open it again from the channel."
            outcome = render.Outcome.BAD_INPUT
        elif inflight.closing:
            # A deploy: keep the form (and what was typed) open rather than promise what may not be kept.
            problem = "finetune-bot is restarting: submit again in a minute."
        if problem is not None:
            metrics.action("create_form", outcome)
            await ack(response_action="errors", errors={modal.first_input_block(view): problem})
            return
        # Counted before the ack goes out, so a SIGTERM right after it still waits for the work.
        context[TICKET] = inflight.reserve()
        await ack()

    async def carry_out(
        body: dict[str, Any], view: dict[str, Any], logger: logging.Logger, context: dict[str, Any]
    ) -> None:
        ticket = context.get(TICKET)
        form = modal.parse_submission(view, default_model=default_model)
        if ticket is None or isinstance(form, dict):
            return  # answered in the acknowledgement
        user = body.get("user") or {}
        invocation = Invocation(
            team_id=str((body.get("team") or {}).get("id") or user.get("team_id") or ""),
            channel_id=form.channel_id,
            user_id=str(user.get("id") or ""),
            # The submission's: the create's key (Idempotency-Key, pending row), like a command's.
            trigger_id=str(body.get("trigger_id") or ""),
            response_url=None,
        )

        bind_request("create_form", invocation)

        async def farewell() -> None:
            await runner.tell(invocation, render.render_unfinished("create"))

        async with inflight.track(ticket, farewell):
            try:
                if form.training_upload is not None or form.validation_upload is not None:
                    await runner.check_training_upload(form, invocation)
                else:
                    await runner.create_from_form(form.command, invocation)
            except Exception:
                logger.exception("the create form's submission failed")
                metrics.action("create_form", render.Outcome.ERROR)
                await runner.tell(invocation, render.render_internal_error())
            else:
                # What it came to is told in the channel or privately, not returned here.
                metrics.action("create_form", render.Outcome.OK)

    async def file_options(ack: AsyncAck, body: dict[str, Any], logger: logging.Logger) -> None:
        query = str(body.get("value") or "")
        if allowed_channels and modal.channel_of(body.get("view")) not in allowed_channels:
            metrics.action("file_menu", render.Outcome.REFUSED)
            await ack(options=modal.unavailable_options("finetune-bot isn't enabled in this channel"))
            return
        try:
            page = await asyncio.wait_for(runner.fine_tune_files(limit=OPTIONS_SCAN), OPTIONS_SECONDS)
        except TimeoutError:
            metrics.action("file_menu", render.Outcome.OPENAI_ERROR)
            logger.warning("OpenAI took over %gs to list files for the form's menu", OPTIONS_SECONDS)
            await ack(options=modal.unavailable_options("OpenAI is slow to answer: type again to retry"))
            return
        except OpenAIError as error:
            metrics.action("file_menu", render.Outcome.OPENAI_ERROR)
            logger.warning("OpenAI refused to list files for the form's menu (status=%s)", error.status)
            await ack(options=modal.unavailable_options("OpenAI couldn't list the files: try again later"))
            return
        except Exception:
            metrics.action("file_menu", render.Outcome.ERROR)
            logger.exception("listing files for the form's menu failed")
            await ack(options=modal.unavailable_options("Couldn't list the files: try again later"))
            return
        metrics.action("file_menu", render.Outcome.OK)
        await ack(options=modal.file_options(page.data, query))

    app.view(modal.CREATE_VIEW_CALLBACK)(ack=acknowledge, lazy=[carry_out])
    app.options(modal.OPENAI_FILE_ACTION)(file_options)
