"""What stands between the open internet and Bolt: size caps, read deadlines and Slack's signature,
all checked on raw bytes before anything decodes or parses a request.

Bolt's Starlette adapter reads the whole body, decodes it and parses it (form fields, then the
`payload=` JSON) before its middleware checks the signature. An unauthenticated request could
therefore make the process allocate gigabytes, answer 500 with a traceback, or have its body
logged. Here the order is reversed: header shapes and timestamp first, then the body read with a
cap and a deadline, then the HMAC over the raw bytes; only a request Slack signed reaches Bolt
(which verifies it again, harmlessly).

Slow clients are handled one level down, in the HTTP protocol: `GuardedH11Protocol` closes a
connection whose request headers are not complete within `HEADER_TIMEOUT` seconds, and when the
process nears its open-file limit it makes room by closing the connection that has waited longest
for its headers, so `/healthz` and real requests still get in.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import re
import resource
import time
from collections.abc import Mapping
from typing import Any

import h11
from slack_bolt.adapter.starlette.async_handler import to_async_bolt_request, to_starlette_response
from slack_bolt.async_app import AsyncApp
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from uvicorn.protocols.http.h11_impl import H11Protocol

from bot.metrics import Metrics, ack_kind

log = logging.getLogger(__name__)

# Slack's largest payloads are interactivity ones: a view submission carries the whole view (Slack
# refuses views over 250 kB, `view_too_large`) plus its state, a block action the whole message
# (≤ 50 blocks, text ≤ 40,000 characters), and the form encoding can triple non-ASCII text. 1 MiB
# holds the largest legitimate request with room to spare; slash commands are a few hundred bytes.
MAX_SLACK_BODY = 1024 * 1024
# A whole body, however slowly sent, within this; Slack sends its requests in one go.
BODY_TIMEOUT = 10.0
# Request line and headers within this after the connection opens (or the previous response).
HEADER_TIMEOUT = 10.0
# Slack's own replay window for X-Slack-Request-Timestamp.
MAX_SKEW = 300
# File descriptors kept free of HTTP connections (database, OpenAI and Slack sockets, logs).
FD_RESERVE = 128

_TIMESTAMP = re.compile(r"[0-9]{1,12}")
_SIGNATURE = re.compile(r"v0=[0-9a-f]{64}")


class Refused(Exception):
    """A request answered with `status` before any of it was parsed."""

    def __init__(self, status: int, error: str) -> None:
        super().__init__(error)
        self.status = status
        self.error = error

    def response(self) -> Response:
        return refusal(self.status, self.error)


def refusal(status: int, error: str) -> Response:
    # `Connection: close`: a body we did not read must not be read later as the next request, and
    # closing stops the client from streaming the rest of it at us.
    return JSONResponse({"error": error}, status_code=status, headers={"Connection": "close"})


def declared_length(headers: Mapping[str, str], limit: int) -> int | None:
    """The Content-Length, None when absent; Refused when it is malformed or over `limit`."""
    raw = headers.get("content-length")
    if raw is None:
        return None
    if not raw.isascii() or not raw.isdigit() or len(raw) > 18:
        raise Refused(400, "invalid content-length")
    if int(raw) > limit:
        raise Refused(413, "payload too large")
    return int(raw)


async def read_body(request: Request, *, limit: int, timeout: float = BODY_TIMEOUT) -> bytes:
    """The raw body, read only if it fits `limit` and arrives within `timeout` seconds.

    A declared Content-Length over the limit is refused before a byte is read; otherwise (chunked,
    or a Content-Length that lies) the bytes are counted as they stream and reading stops at the
    limit, so at most `limit` plus one network read is ever held.
    """
    declared_length(request.headers, limit)
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise Refused(413, "payload too large")
                chunks.append(chunk)
    except TimeoutError:
        raise Refused(408, "request body too slow") from None
    except ClientDisconnect:
        raise Refused(400, "client disconnected") from None
    return b"".join(chunks)


def well_formed_headers(headers: Mapping[str, str]) -> bool:
    """Slack's two headers have the shapes Slack sends (slack_sdk's verifier raises on others)."""
    return (
        _TIMESTAMP.fullmatch(headers.get("x-slack-request-timestamp", "")) is not None
        and _SIGNATURE.fullmatch(headers.get("x-slack-signature", "")) is not None
    )


def fresh(timestamp: str, now: float, max_skew: int = MAX_SKEW) -> bool:
    return abs(now - int(timestamp)) <= max_skew


def slack_signature_valid(secret: str, timestamp: str, body: bytes, signature: str) -> bool:
    """`v0=` HMAC-SHA256 of `v0:{timestamp}:{raw body}`, compared in constant time."""
    message = b"v0:" + timestamp.encode("ascii") + b":" + body
    expected = "v0=" + hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected.encode(), signature.encode("ascii", "replace"))


async def read_slack_request(request: Request, secret: str, *, now: float | None = None) -> bytes:
    """The raw body of a request Slack signed; Refused (401/408/413) for anything else."""
    headers = request.headers
    if not secret or not well_formed_headers(headers):
        raise Refused(401, "invalid request")
    timestamp = headers["x-slack-request-timestamp"]
    if not fresh(timestamp, time.time() if now is None else now):
        raise Refused(401, "invalid request")
    body = await read_body(request, limit=MAX_SLACK_BODY)
    if not slack_signature_valid(secret, timestamp, body, headers["x-slack-signature"]):
        raise Refused(401, "invalid request")
    return body


class SlackEvents:
    """The `POST /slack/events` endpoint: the guard above, then Bolt with the bytes it verified."""

    def __init__(self, app: AsyncApp, signing_secret: str, metrics: Metrics | None = None) -> None:
        self._app = app
        self._secret = signing_secret
        self._metrics = metrics or Metrics()

    async def handle(self, request: Request) -> Response:
        # The request's headers are in: from here to the response is what Slack's 3 s measure.
        received = time.perf_counter()
        try:
            body = await read_slack_request(request, self._secret)
        except Refused as refused:
            # One line, never the body: rejected requests are what an attacker controls. Repeats
            # are folded by the log's rate limit.
            log.info("refused a request to /slack/events: %d %s", refused.status, refused.error)
            return refused.response()
        try:
            bolt_request = to_async_bolt_request(request, body)
        except (UnicodeDecodeError, ValueError, RecursionError):
            # Signed but unparseable: only someone holding the signing secret can send this.
            log.warning("a signed request to /slack/events could not be parsed")
            return refusal(400, "malformed request")
        response = to_starlette_response(await self._app.async_dispatch(bolt_request))
        self._metrics.ack(ack_kind(bolt_request.body), time.perf_counter() - received)
        return response


def open_file_limit() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline on request headers and a cap on connections.

    uvicorn times out idle keep-alive connections, but not a client that sends half a request
    line and then nothing (slow-loris): enough of those exhaust the open-file limit, after which
    nothing, `/healthz` included, is accepted.
    """

    max_connections = max(16, open_file_limit() - FD_RESERVE)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_deadline: asyncio.TimerHandle | None = None
        self._waiting_since = 0.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            self._evict_slowest()
        self._watch_headers()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._watch_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_deadline()
        super().connection_lost(exc)

    def waiting_for_headers(self) -> bool:
        """Waiting for a request's headers, or already answered while the client still sends a
        body nobody reads (a 404 with a trickled body would otherwise hold the connection)."""
        idle = self.conn.their_state is h11.IDLE or self.conn.our_state in (h11.DONE, h11.MUST_CLOSE)
        return idle and not self.transport.is_closing()

    def _watch_headers(self) -> None:
        if not self.waiting_for_headers():
            self._cancel_deadline()
        elif self._header_deadline is None:
            self._waiting_since = time.monotonic()
            self._header_deadline = self.loop.call_later(HEADER_TIMEOUT, self._headers_too_slow)

    def _cancel_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_too_slow(self) -> None:
        self._header_deadline = None
        if self.waiting_for_headers():
            log.debug("closed a connection whose request headers took over %gs", HEADER_TIMEOUT)
            self.transport.close()

    def _evict_slowest(self) -> None:
        """At the connection cap, close whichever connection has waited longest for its headers
        (an idle keep-alive or a slow client), so that a new one can be served."""
        waiting = [
            c
            for c in self.connections
            if isinstance(c, GuardedH11Protocol) and c is not self and c.waiting_for_headers()
        ]
        if not waiting:
            return
        oldest = min(waiting, key=lambda c: c._waiting_since)
        oldest.transport.close()
