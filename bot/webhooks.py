"""`POST /openai/webhook`: OpenAI's fine-tuning webhooks, for outcomes in about a second.

Verification is the Standard Webhooks scheme OpenAI signs with, done by the `standardwebhooks`
package: base64 HMAC-SHA256 over `{webhook-id}.{webhook-timestamp}.{raw body}` with the decoded
`whsec_` secret, any of several space-separated `v1,<sig>` values matching, timestamps within 5
minutes. Anything that fails is refused with no side effect.

A valid event is answered 200 at once; the work (retrieve the job, then the poller's own
exactly-once path: outbox row, then post) runs after the response. Redeliveries of a `webhook-id`
are recognised and ignored. If the work fails (OpenAI down, a crash), nothing is lost: the
reconciliation poll still finds the job finished and announces it, once.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from standardwebhooks.webhooks import Webhook
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from bot import http_guard, ids
from bot.metrics import Metrics
from bot.openai_client import FineTuningClient, OpenAIError
from bot.poller import Poller
from bot.store import Store

log = logging.getLogger(__name__)

FINE_TUNING_EVENTS = frozenset(
    {"fine_tuning.job.succeeded", "fine_tuning.job.failed", "fine_tuning.job.cancelled"}
)
MAX_BODY = 64 * 1024


def verify(secret: str, body: bytes, headers: dict[str, str]) -> dict[str, Any] | None:
    """The parsed event if the signature and timestamp hold, else None."""
    try:
        # The library raises its own error for bad signatures and times, but ValueError and
        # binascii.Error for malformed headers and UnicodeDecodeError for a non-UTF-8 body: all
        # of them mean "not a delivery from OpenAI".
        event = Webhook(secret).verify(body, headers)
    except Exception:
        return None
    return event if isinstance(event, dict) else None


class WebhookReceiver:
    def __init__(
        self,
        secret: str,
        store: Store,
        openai: FineTuningClient,
        poller: Poller,
        metrics: Metrics | None = None,
    ) -> None:
        self._metrics = metrics or Metrics()
        self._secret = secret
        self._store = store
        self._openai = openai
        self._poller = poller
        self._tasks: set[asyncio.Task[None]] = set()

    async def handle(self, request: Request) -> Response:
        try:
            # Capped while it streams (a declared length over the cap is refused unread): OpenAI's
            # events are a few hundred bytes.
            body = await http_guard.read_body(request, limit=MAX_BODY)
        except http_guard.Refused as refused:
            log.info("refused a request to /openai/webhook: %d %s", refused.status, refused.error)
            self._metrics.webhook("refused")
            return refused.response()
        event = verify(self._secret, body, dict(request.headers))
        if event is None:
            log.warning("rejected an OpenAI webhook with a bad signature or timestamp")
            self._metrics.webhook("bad_signature")
            return JSONResponse({"error": "invalid signature"}, status_code=401)
        data = event.get("data")
        event_type = event.get("type")
        if (
            not isinstance(event_type, str)
            or not isinstance(data, dict)
            or not isinstance(data.get("id"), str)
        ):
            self._metrics.webhook("malformed")
            return JSONResponse({"error": "malformed event"}, status_code=400)
        webhook_id = request.headers["webhook-id"]
        if not await asyncio.to_thread(self._store.remember_webhook, webhook_id):
            log.info("webhook %s was already handled", json.dumps(webhook_id)[:80])
            self._metrics.webhook("duplicate")
            return JSONResponse({"ok": True, "duplicate": True})
        job_id = data["id"]
        if event_type in FINE_TUNING_EVENTS and ids.is_job_id(job_id):
            self._metrics.webhook("accepted")
            task = asyncio.create_task(self._process(job_id))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            log.info("ignoring webhook event %s", json.dumps(event_type)[:80])
            self._metrics.webhook("ignored")
        return JSONResponse({"ok": True})

    async def _process(self, job_id: str) -> None:
        try:
            watches = await asyncio.to_thread(self._store.active_watches_for_job, job_id)
            if not watches:
                log.info("webhook for %s, which no channel follows", job_id)
                return
            try:
                job = await self._openai.retrieve_job(job_id)
            except OpenAIError as error:
                log.warning(
                    "webhook for %s: retrieving it failed (%s); the poll will catch up", job_id, error
                )
                return
            if not job.is_terminal:
                return  # the event ran ahead of the job's state; the poll will see it end
            for watch in watches:
                await self._poller.finish(watch, job.status, job.raw)
            await self._poller.deliver()
        except Exception:
            log.exception("handling the webhook for %s failed; the poll will catch up", job_id)

    async def drain(self) -> None:
        """Let in-flight webhook work finish (on shutdown)."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=2)
