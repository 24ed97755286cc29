"""A fake Slack: Web API (``/api/<method>``), response_url receiver, Socket Mode websocket, the
external file upload (``files.getUploadURLExternal`` → POST to ``/upload/v1/<token>`` →
``files.completeUploadExternal``), modals (``views.open/update/push`` with trigger ids that expire
and are single-use) and files users shared (``files.info`` → GET ``url_private_download``).

Point slack_sdk at it with ``AsyncWebClient(token=..., base_url=fake.api_url)``; Socket Mode clients
find the websocket through ``apps.connections.open`` exactly as they do against Slack, and upload
URLs point back at this server, so ``files_upload_v2`` works unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import itertools
import json
import math
import mimetypes
import secrets
import string
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from aiohttp import WSCloseCode, WSMsgType, web

from . import slack_views
from ._server import FakeServer

DEFAULT_BOT_TOKEN = "xoxb-test-fake-bot-token"
DEFAULT_APP_TOKEN = "xapp-test-fake-app-token"
TEAM_ID = "T0001"
TEAM_NAME = "Acme"
TEAM_DOMAIN = "acme"
BOT_USER_ID = "U0BOT"
BOT_USER_NAME = "finetune"
BOT_ID = "B0001"
APP_ID = "A0001"

TokenKind = Literal["bot", "app"]
MethodHandler = Callable[[dict[str, Any]], dict[str, Any]]

# Slack's documented limits that most often bite bots building Block Kit messages.
_MAX_TEXT = 40_000
_MAX_BLOCKS = 50
_MAX_SECTION_TEXT = 3000
_MAX_FIELD_TEXT = 2000
_MAX_FIELDS = 10
_MAX_HEADER_TEXT = 150
_MAX_BLOCK_ID = 255
# Interactive elements (FACTS-interactive §6).
_MAX_ACTIONS_ELEMENTS = 25
_MAX_BUTTON_TEXT = 75
_MAX_BUTTON_VALUE = 2000
_MAX_ACTION_ID = 255
_CONFIRM_LIMITS = {"title": 100, "text": 300, "confirm": 30, "deny": 30}
# External uploads (FACTS-interactive §3).
_MAX_ALT_TXT = 1000
_MAX_UPLOAD_BYTES = 100 * 1024**2  # the fake's own request cap; Slack's is 1 GB
# Scopes the bot token holds unless a test revokes one: the manifest's, plus files:write for the
# completion report's chart.
DEFAULT_BOT_SCOPES = (
    "commands",
    "chat:write",
    "chat:write.public",
    "im:write",
    "channels:history",
    "groups:history",
    "im:history",
    "mpim:history",
    "files:write",
    "files:read",
)
# The methods whose scope the fake checks: the file scopes are the ones an existing install can
# lack (files:write came with the completion report, files:read with training data from Slack),
# so only their absence is worth simulating.
_NEEDED_SCOPE = {
    "files.getUploadURLExternal": "files:write",
    "files.completeUploadExternal": "files:write",
    "files.info": "files:read",
}
# Pseudo-methods fail_next() understands besides Web API method names; "*" never matches them.
_PSEUDO_METHODS = ("response_url", "upload", "download")
# A trigger_id is good for one views.open/push within 3 s (FACTS-interactive §2).
TRIGGER_TTL = 3.0
_VIEW_STACK_LIMIT = 3
_DOWNLOAD_CHUNK = 64 * 1024
# What files.slack.com answers a request without a valid token: HTTP 200 and its sign-in page, not
# the file (2nd-hand: slackapi/bolt-js#2585, grundleborg/slack-advanced-exporter#13 — "the files
# end up being HTML sign-in pages"). A bot must check what it got, not just the status.
_SIGN_IN_PAGE = (
    '<!DOCTYPE html><html lang="en-US"><head><title>Slack</title></head><body>'
    '<h1>Sign in to Acme</h1><form action="/signin" method="post"></form></body></html>'
)


@dataclass
class RecordedCall:
    method: str  # e.g. "chat.postMessage"
    params: dict[str, Any]  # query + body merged; JSON-string blocks/attachments decoded; no token
    headers: dict[str, str]  # lower-case names
    time: float
    token: str | None
    status: int | None = None  # HTTP status once answered
    response: dict[str, Any] | None = None


@dataclass
class RecordedMessage:
    channel: str  # as returned to the caller (a user id "U1" becomes its DM "DU1")
    ts: str
    text: str | None
    blocks: list[dict[str, Any]] | None
    thread_ts: str | None
    reply_broadcast: bool
    params: dict[str, Any]
    time: float
    attachments: list[dict[str, Any]] | None = None
    edits: int = 0  # how many chat.update calls changed it; text/blocks hold the latest version
    # Set on the message files.completeUploadExternal shares: the file objects, as Slack lists them.
    files: list[dict[str, Any]] | None = None


@dataclass
class RecordedUpload:
    """One file completed with files.completeUploadExternal (its bytes received before)."""

    file_id: str
    filename: str
    title: str
    alt_txt: str | None
    data: bytes
    length: int  # as declared to files.getUploadURLExternal
    channel: str | None  # None: completed without a channel, so the file stays private
    thread_ts: str | None
    initial_comment: str | None
    blocks: list[dict[str, Any]] | None
    ts: str | None  # of the share message; None until shared (share_delay), or never (dropped)
    time: float
    dropped: bool = False  # drop_shares(): Slack said ok and the share never appeared


@dataclass
class _PendingUpload:
    file_id: str
    token: str
    filename: str
    length: int
    alt_txt: str | None
    snippet_type: str | None
    data: bytes | None = None  # None until a POST to the upload URL succeeds
    completed: bool = False


@dataclass
class RecordedView:
    """One views.open / views.update / views.push call, refused ones included (``error`` set)."""

    method: str  # "views.open" | "views.update" | "views.push"
    view: dict[str, Any]  # as Slack holds it after the call (id, hash, block ids); as sent if refused
    trigger_id: str | None
    view_id: str | None  # None when refused before a view was found or made
    user_id: str | None  # whose trigger opened/pushed it (None for views.update)
    time: float
    error: str | None = None
    messages: list[str] = field(default_factory=list)  # response_metadata.messages of a refusal

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class RecordedDownload:
    """One GET of a file's url_private(_download), whatever the answer."""

    file_id: str
    status: int
    authorized: bool  # a valid bot token holding files:read was presented
    served: bool  # the file's bytes were sent (the whole file, unless the client hung up)
    bytes_sent: int
    time: float


@dataclass
class _Trigger:
    issued: float  # time.monotonic()
    user_id: str
    view_id: str | None  # the view the interaction came from, if any (where views.push stacks)
    used: bool = False


@dataclass
class _SlackFile:
    obj: dict[str, Any]  # the Slack file object files.info returns
    content: bytes
    generated_size: int | None = None  # serve_large_file(): served from a generator, not content
    deleted: bool = False
    visible: bool = True  # False: the bot cannot see it (not shared where the bot is)


@dataclass
class RecordedUpdate:
    channel: str
    ts: str
    text: str | None
    blocks: list[dict[str, Any]] | None
    params: dict[str, Any]
    time: float


@dataclass
class RecordedEphemeral:
    channel: str
    user: str
    message_ts: str
    text: str | None
    blocks: list[dict[str, Any]] | None
    thread_ts: str | None
    params: dict[str, Any]
    time: float


@dataclass
class RecordedResponse:
    key: str
    json: Any  # parsed body (None if it was not JSON)
    body: str
    headers: dict[str, str]
    time: float
    status: int | None = None


@dataclass
class SlackFault:
    method: str  # API method name, "*" for any API method, or "response_url"
    error: str | None
    status: int | None
    retry_after: int | None
    remaining: int
    channel: str | None = None

    def matches(self, method: str, channel: str | None) -> bool:
        if self.method in _PSEUDO_METHODS or method in _PSEUDO_METHODS:
            if self.method != method:
                return False
        elif self.method not in ("*", method):
            return False
        return self.channel is None or self.channel == channel


@dataclass
class _CustomMethod:
    handler: MethodHandler
    token: TokenKind = "bot"


class _SlackError(Exception):
    def __init__(self, error: str, **extra: Any) -> None:
        super().__init__(error)
        self.body = {"ok": False, "error": error, **extra}


class FakeSlack(FakeServer):
    """Fake Slack Web API + response_url + Socket Mode on 127.0.0.1.

    Accessors (``calls``, ``messages``...) return snapshot lists. Web API errors are HTTP 200 with
    ``{"ok": false, "error": ...}`` like Slack; only injected faults and rate limits use other codes.
    """

    # Every instance this test session made, for the session-wide secret scan (tests/conftest.py).
    instances: ClassVar[list[FakeSlack]] = []

    def __init__(
        self,
        bot_token: str = DEFAULT_BOT_TOKEN,
        app_token: str = DEFAULT_APP_TOKEN,
        *,
        rate_limit_per_channel: float | None = None,
    ) -> None:
        FakeSlack.instances.append(self)
        # Everything any message or reply carried, never cleared by reset(): for the secret scan.
        self.seen_text: list[str] = []
        super().__init__()
        self.bot_token = bot_token
        self.app_token = app_token
        # Seconds slept before answering every Web API / response_url request; settable any time.
        self.latency: float = 0.0
        # chat.postMessage calls per second allowed per channel (None = unlimited); beyond it: 429.
        self.rate_limit_per_channel = rate_limit_per_channel
        # Seconds between files.completeUploadExternal answering ok and the share message appearing.
        # Slack shares asynchronously (it scans the file first), so a bot cannot count on finding the
        # message the moment completion returns; 0 shares at once. Settable any time.
        self.share_delay: float = 0.0
        # Seconds a trigger_id stays good for views.open/push; a test may shorten it (0 = every
        # trigger is already expired) rather than sleep. Settable any time.
        self.trigger_ttl: float = TRIGGER_TTL
        # What stamps the `time` of recorded API calls, posts and edits. An in-process test sets its
        # fake clock's (tests/inprocess.py), so intervals between the bot's calls read on its clock.
        self.record_clock: Callable[[], float] = time.time
        self._builtin: dict[str, tuple[MethodHandler, TokenKind]] = {
            "auth.test": (self._auth_test, "bot"),
            "chat.postMessage": (self._chat_post_message, "bot"),
            "chat.update": (self._chat_update, "bot"),
            "chat.postEphemeral": (self._chat_post_ephemeral, "bot"),
            "conversations.open": (self._conversations_open, "bot"),
            "conversations.history": (self._conversations_history, "bot"),
            "conversations.replies": (self._conversations_replies, "bot"),
            "users.info": (self._users_info, "bot"),
            "apps.connections.open": (self._apps_connections_open, "app"),
            "files.getUploadURLExternal": (self._files_get_upload_url_external, "bot"),
            "files.completeUploadExternal": (self._files_complete_upload_external, "bot"),
            "files.info": (self._files_info, "bot"),
            "views.open": (self._views_open, "bot"),
            "views.update": (self._views_update, "bot"),
            "views.push": (self._views_push, "bot"),
        }
        self._sockets: list[web.WebSocketResponse] = []
        self._init_state()

    def _init_state(self) -> None:
        self._last_ts_micros = 0
        self._trigger_counter = itertools.count(1)
        self._custom: dict[str, _CustomMethod] = {}
        self._users: dict[str, dict[str, Any]] = {}
        self._calls: list[RecordedCall] = []
        self._messages: list[RecordedMessage] = []
        self._updates: list[RecordedUpdate] = []
        self._ephemerals: list[RecordedEphemeral] = []
        self._responses: list[RecordedResponse] = []
        self._socket_acks: list[dict[str, Any]] = []
        self._envelopes: list[dict[str, Any]] = []
        self._faults: list[SlackFault] = []
        self._last_post: dict[str, float] = {}
        self._connection_count = 0
        self._scopes: list[str] = list(DEFAULT_BOT_SCOPES)
        self._pending_uploads: dict[str, _PendingUpload] = {}  # by upload-URL token
        self._uploads_by_file: dict[str, _PendingUpload] = {}
        self._uploads: list[RecordedUpload] = []
        self._drop_shares = 0
        self._triggers: dict[str, _Trigger] = {}
        self._views: dict[str, dict[str, Any]] = {}  # by view id, as Slack holds them now
        self._view_records: list[RecordedView] = []
        self._files: dict[str, _SlackFile] = {}  # shared by users (add_file)
        self._downloads: list[RecordedDownload] = []
        # Bumped by reset() so a share still scheduled by share_delay lands in no later test.
        self._generation = getattr(self, "_generation", 0) + 1

    def reset(self) -> None:
        """Clear recorded traffic, faults, latency, rate limit, custom methods/users, uploads (pending
        and completed), share_delay/drop_shares, views, trigger ids, files and downloads; give back
        every revoked scope and the 3 s trigger_ttl.

        Open Socket Mode connections are left alone (their count restarts at the current number).
        """
        self.cancel_inflight()
        with self.lock:
            self.latency = 0.0
            self.rate_limit_per_channel = None
            self.share_delay = 0.0
            self.trigger_ttl = TRIGGER_TTL
            self._init_state()
            self._connection_count = self.connected

    # -- public views ---------------------------------------------------------------------------

    @property
    def api_url(self) -> str:
        return f"{self.origin}/api/"

    @property
    def socket_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/socket"

    @property
    def calls(self) -> list[RecordedCall]:
        with self.lock:
            return list(self._calls)

    @property
    def messages(self) -> list[RecordedMessage]:
        with self.lock:
            return list(self._messages)

    @property
    def updates(self) -> list[RecordedUpdate]:
        with self.lock:
            return list(self._updates)

    @property
    def ephemerals(self) -> list[RecordedEphemeral]:
        with self.lock:
            return list(self._ephemerals)

    @property
    def responses(self) -> list[RecordedResponse]:
        with self.lock:
            return list(self._responses)

    @property
    def uploads(self) -> list[RecordedUpload]:
        """Files completed with files.completeUploadExternal, in completion order."""
        with self.lock:
            return list(self._uploads)

    @property
    def views(self) -> list[RecordedView]:
        """views.open/update/push calls in order, refused ones included (check ``.ok``)."""
        with self.lock:
            return list(self._view_records)

    @property
    def downloads(self) -> list[RecordedDownload]:
        """Every GET of a shared file's URL, in order; ``served`` ones delivered the bytes."""
        with self.lock:
            return list(self._downloads)

    def downloads_of(self, file_id: str, *, served: bool = True) -> list[RecordedDownload]:
        return [d for d in self.downloads if d.file_id == file_id and (d.served or not served)]

    def view(self, view_id: str) -> dict[str, Any]:
        """The view ``view_id`` as Slack holds it now (after any views.update)."""
        with self.lock:
            return copy.deepcopy(self._views[view_id])

    def file(self, file_id: str) -> dict[str, Any]:
        """The Slack file object of a file added with add_file()."""
        with self.lock:
            return copy.deepcopy(self._files[file_id].obj)

    @property
    def scopes(self) -> list[str]:
        """The scopes the bot token holds now (see revoke_scope/grant_scope)."""
        with self.lock:
            return list(self._scopes)

    @property
    def socket_acks(self) -> list[dict[str, Any]]:
        """Every JSON text frame received from Socket Mode clients (acks: {"envelope_id", "payload"?})."""
        with self.lock:
            return list(self._socket_acks)

    @property
    def envelopes(self) -> list[dict[str, Any]]:
        """Every frame sent with send_envelope()/send_disconnect()."""
        with self.lock:
            return list(self._envelopes)

    @property
    def connected(self) -> int:
        """Number of currently open Socket Mode connections (counted once hello was sent)."""
        with self.lock:
            return sum(1 for ws in self._sockets if not ws.closed)

    @property
    def connection_count(self) -> int:
        """Total Socket Mode connections accepted so far (reconnects included)."""
        with self.lock:
            return self._connection_count

    def calls_to(self, method: str) -> list[RecordedCall]:
        return [c for c in self.calls if c.method == method]

    def messages_in(self, channel: str, thread_ts: str | None = None) -> list[RecordedMessage]:
        return [
            m
            for m in self.messages
            if m.channel == _resolve_channel(channel) and (thread_ts is None or m.thread_ts == thread_ts)
        ]

    def responses_for(self, key: str) -> list[RecordedResponse]:
        return [r for r in self.responses if r.key == key]

    def describe(self) -> str:
        with self.lock:
            lines = [f"  web api calls ({len(self._calls)}, last 15):"]
            for c in self._calls[-15:]:
                outcome = c.response.get("error", "ok") if isinstance(c.response, dict) else "-"
                channel = c.params.get("channel") or c.params.get("channel_id")
                lines.append(f"    {c.method} channel={channel} -> {c.status} {outcome}")
            lines.append(
                f"  messages: {len(self._messages)}, updates: {len(self._updates)}, "
                f"response_url posts: {len(self._responses)}, uploads completed: {len(self._uploads)}"
            )
            views = [f"{v.method}->{v.error or v.view_id}" for v in self._view_records[-10:]]
            downloads = [(d.file_id, d.status) for d in self._downloads[-10:]]
            lines.append(f"  views: {', '.join(views) or 'none'}; downloads: {downloads}")
            lines.append(
                f"  sockets open: {sum(1 for ws in self._sockets if not ws.closed)}, "
                f"acks: {[a.get('envelope_id') for a in self._socket_acks]}"
            )
        return "\n".join(lines)

    # -- configuration --------------------------------------------------------------------------

    def add_method(
        self,
        name: str,
        response: dict[str, Any] | MethodHandler,
        *,
        token: TokenKind = "bot",
    ) -> None:
        """Serve another Web API method: a fixed response dict or a function of the params."""
        handler: MethodHandler = response if callable(response) else (lambda _params, r=response: dict(r))
        with self.lock:
            self._custom[name] = _CustomMethod(handler, token)

    def seed_message(self, channel: str, text: str = "") -> str:
        """A message the bot posted earlier (before this fake started), e.g. a job's card to edit;
        returns its ts."""
        with self.lock:
            ts = self._next_ts()
            self._messages.append(
                RecordedMessage(
                    channel=_resolve_channel(channel),
                    ts=ts,
                    text=text,
                    blocks=None,
                    thread_ts=None,
                    reply_broadcast=False,
                    params={},
                    time=time.time(),
                )
            )
        return ts

    def add_user(self, user_id: str, name: str, **fields: Any) -> dict[str, Any]:
        """Register a user for users.info (unknown ids still get a generated profile)."""
        user = {**_default_user(user_id, name), **fields}
        with self.lock:
            self._users[user_id] = user
        return dict(user)

    def fail_next(
        self,
        method: str,
        *,
        error: str | None = None,
        status: int | None = None,
        retry_after: int | None = None,
        times: int = 1,
        channel: str | None = None,
    ) -> SlackFault:
        """Fail the next ``times`` calls of ``method`` ("*" = any API method; "response_url";
        "upload" = POSTs of file bytes to upload URLs; "download" = GETs of a shared file's URL).

        ``error`` alone -> HTTP 200 ``{"ok": false, "error": error}``; ``status`` -> that HTTP status
        (body ``{"ok": false, "error": ...}``); ``retry_after`` -> Retry-After header, and status
        429 unless given. ``channel`` restricts the fault to calls for that channel (``channel`` or,
        for files.completeUploadExternal, ``channel_id``). An "upload" fault answers with ``status``
        (500 unless given) and the bytes are not kept. A "download" fault answers with ``status``
        (500 unless given; Retry-After when asked) and a short text body instead of the file.
        """
        if times < 1:
            raise ValueError("times must be >= 1")
        if status is None and retry_after is not None:
            status = 429
        if status is None and error is None:
            error = "internal_error"
        fault = SlackFault(method, error, status, retry_after, times, channel)
        with self.lock:
            self._faults.append(fault)
        return fault

    def clear(self) -> None:
        """Forget the traffic logs (calls, responses, socket_acks, envelopes, completed uploads,
        views calls, downloads). Posted messages, open views, files and uploads not yet completed
        are state that later calls rely on, so they stay; reset() clears everything."""
        with self.lock:
            self._view_records.clear()
            self._downloads.clear()
            self._calls.clear()
            self._responses.clear()
            self._socket_acks.clear()
            self._envelopes.clear()
            self._uploads.clear()

    def revoke_scope(self, scope: str) -> None:
        """Take ``scope`` from the bot token, as an admin who installed an older manifest would:
        methods needing it answer ``missing_scope`` (only the file methods check scopes)."""
        with self.lock:
            if scope in self._scopes:
                self._scopes.remove(scope)

    def grant_scope(self, scope: str) -> None:
        with self.lock:
            if scope not in self._scopes:
                self._scopes.append(scope)

    def drop_shares(self, times: int = 1) -> None:
        """The next ``times`` files.completeUploadExternal calls answer ok but the share message
        never appears: Slack has been seen doing this (python-slack-sdk#1818, with alt_txt), so a
        bot that must post a chart exactly once has to look for it rather than trust the ok."""
        if times < 1:
            raise ValueError("times must be >= 1")
        with self.lock:
            self._drop_shares += times

    def upload_url(self, file_id: str) -> str | None:
        """The upload URL files.getUploadURLExternal handed out for ``file_id`` (None if none)."""
        with self.lock:
            pending = self._uploads_by_file.get(file_id)
            return self._upload_url_for(pending.token) if pending else None

    def clear_faults(self) -> None:
        with self.lock:
            self._faults.clear()

    # -- files users shared (files.info, url_private_download) ----------------------------------

    def add_file(
        self,
        name: str,
        content: bytes | str,
        *,
        channel: str | None = "C123",
        user: str = "U123",
        filetype: str = "text",
        mimetype: str = "application/octet-stream",
        visible: bool = True,
    ) -> dict[str, Any]:
        """A file a user uploaded, shared in ``channel`` (None: not shared anywhere, like a file
        picked in a modal's file_input). Returns its Slack file object: what file_input
        submissions and message ``files`` carry and files.info returns. ``url_private_download``
        points at this fake. ``visible=False``: the bot cannot see it (shared where the bot is
        not), so files.info answers ``file_not_found`` and the download 404 (assumed)."""
        data = content.encode() if isinstance(content, str) else content
        with self.lock:
            file_id = _new_file_id(set(self._files) | set(self._uploads_by_file))
            created = int(time.time())
            quoted = urllib.parse.quote(name)
            base = f"{self.origin}/files-pri/{TEAM_ID}-{file_id}"
            obj: dict[str, Any] = {
                "id": file_id,
                "created": created,
                "timestamp": created,
                "name": name,
                "title": name,
                "mimetype": mimetype,
                "filetype": filetype,
                "pretty_type": filetype.upper() if filetype else "Binary",
                "user": user,
                "user_team": TEAM_ID,
                "editable": False,
                "size": len(data),
                "mode": "hosted",
                "is_external": False,
                "external_type": "",
                "is_public": bool(channel and channel.startswith("C")),
                "public_url_shared": False,
                "display_as_bot": False,
                "username": "",
                "url_private": f"{base}/{quoted}",
                "url_private_download": f"{base}/download/{quoted}",
                "permalink": f"https://{TEAM_DOMAIN}.slack.com/files/{user}/{file_id}/{quoted}",
                "channels": [channel] if channel and channel.startswith("C") else [],
                "groups": [channel] if channel and channel.startswith("G") else [],
                "ims": [channel] if channel and channel.startswith("D") else [],
                "comments_count": 0,
                "has_rich_preview": False,
            }
            if channel:
                share = {"reply_users": [], "reply_count": 0, "ts": self._next_ts(), "channel_name": "ml"}
                obj["shares"] = {"public" if channel.startswith("C") else "private": {channel: [share]}}
            self._files[file_id] = _SlackFile(obj=obj, content=data, visible=visible)
            return copy.deepcopy(obj)

    def delete_file(self, file_id: str) -> None:
        """The user deleted it: files.info answers ``file_deleted`` (Slack's documented error for
        this), downloads 404. The file object already handed out keeps its URLs."""
        with self.lock:
            self._files[file_id].deleted = True

    def serve_large_file(self, file_id: str, size_bytes: int) -> None:
        """Serve ``size_bytes`` of generated, valid chat-format JSONL for ``file_id`` instead of its
        content, produced while streaming (never held in memory); its ``size`` becomes that."""
        if size_bytes < len(_JSONL_LINE):
            raise ValueError(f"size_bytes must be at least {len(_JSONL_LINE)}")
        with self.lock:
            entry = self._files[file_id]
            entry.generated_size = size_bytes
            entry.obj["size"] = size_bytes

    def user_message(
        self, text: str = "", *, files: Sequence[dict[str, Any] | str] = (), user_id: str = "U123"
    ) -> dict[str, Any]:
        """A message a user posted, as message_action payloads carry it: ``files`` are file objects
        or ids of files added with add_file(). Not recorded among ``messages`` (the bot's)."""
        with self.lock:
            objs = [
                copy.deepcopy(f) if isinstance(f, dict) else copy.deepcopy(self._files[f].obj) for f in files
            ]
            message: dict[str, Any] = {
                "type": "message",
                "text": text,
                "user": user_id,
                "ts": self._next_ts(),
                "team": TEAM_ID,
                "client_msg_id": str(uuid.uuid4()),
                "blocks": [],
            }
        if objs:
            message.update(files=objs, upload=True, display_as_bot=False)
        return message

    def _file_lookup(self, file_id: str) -> dict[str, Any] | None:
        with self.lock:
            entry = self._files.get(file_id)
            return copy.deepcopy(entry.obj) if entry is not None else None

    # -- trigger ids -----------------------------------------------------------------------------

    def trigger_id(self, *, user_id: str = "U123") -> str:
        """A fresh trigger id, good for one views.open within ``trigger_ttl`` seconds."""
        return self._mint_trigger(3_000_000, user_id, None)

    def _mint_trigger(self, base: int, user_id: str, view_id: str | None) -> str:
        trigger_id = f"{base + next(self._trigger_counter)}.{TEAM_ID[1:]}.{uuid.uuid4().hex}"
        self._register_trigger(trigger_id, user_id, view_id)
        return trigger_id

    def _register_trigger(self, trigger_id: str, user_id: str, view_id: str | None) -> None:
        with self.lock:
            # A payload built again with the same trigger id (a retried delivery) keeps the first
            # issue time: Slack's clock started when the user acted.
            self._triggers.setdefault(trigger_id, _Trigger(time.monotonic(), user_id, view_id))

    def _take_fault(self, method: str, channel: str | None) -> SlackFault | None:
        with self.lock:
            for fault in self._faults:
                if fault.matches(method, channel):
                    fault.remaining -= 1
                    if fault.remaining <= 0:
                        self._faults.remove(fault)
                    return fault
        return None

    # -- response_url ---------------------------------------------------------------------------

    def response_url(self, key: str | None = None) -> str:
        """A fresh response_url; POSTs to it are recorded under ``key`` (default: a uuid)."""
        return f"{self.origin}/response/{key or uuid.uuid4().hex}"

    @staticmethod
    def response_key(url: str) -> str:
        return url.rstrip("/").rsplit("/", 1)[-1]

    # -- slash commands / Socket Mode -----------------------------------------------------------

    def slash_command_payload(
        self,
        text: str,
        *,
        command: str = "/finetune",
        user_id: str = "U123",
        user_name: str = "alice",
        channel_id: str = "C123",
        channel_name: str = "ml",
        team_id: str = TEAM_ID,
        response_url: str | None = None,
        trigger_id: str | None = None,
    ) -> dict[str, str]:
        """The form fields Slack sends for a slash command (also the Socket Mode payload). Its
        trigger_id (fresh, or the one given) is good for one views.open within trigger_ttl."""
        if trigger_id is None:
            trigger_id = self._mint_trigger(1_000_000, user_id, None)
        else:
            self._register_trigger(trigger_id, user_id, None)
        return {
            "token": "fake-verification-token",  # legacy field Slack still sends
            "team_id": team_id,
            "team_domain": TEAM_DOMAIN,
            "channel_id": channel_id,
            "channel_name": channel_name,
            "user_id": user_id,
            "user_name": user_name,
            "command": command,
            "text": text,
            "api_app_id": APP_ID,
            "is_enterprise_install": "false",
            "response_url": response_url or self.response_url(),
            "trigger_id": trigger_id,
        }

    def wait_connected(self, timeout: float = 5.0) -> None:
        self.wait_for(lambda s: s.connected > 0, timeout, message="a Socket Mode client to connect")

    async def wait_connected_async(self, timeout: float = 5.0) -> None:
        await self.wait_for_async(
            lambda s: s.connected > 0, timeout, message="a Socket Mode client to connect"
        )

    def send_envelope(
        self,
        type: str,
        payload: dict[str, Any],
        accepts_response_payload: bool = True,
        *,
        timeout: float = 5.0,
        extra: dict[str, Any] | None = None,
    ) -> str:
        """Send an envelope to the newest Socket Mode connection and return its envelope_id.

        Waits up to ``timeout`` for a connection. Like Slack, each envelope goes to one connection.
        ``extra`` adds top-level fields (e.g. retry_attempt/retry_reason for events_api).
        """
        if self.connected == 0:
            self.wait_connected(timeout)
        envelope = self._build_envelope(type, payload, accepts_response_payload, extra)
        if self._run(self._send_frame(envelope, broadcast=False)) == 0:
            raise AssertionError("no open Socket Mode connection to send the envelope to")
        return envelope["envelope_id"]

    async def send_envelope_async(
        self,
        type: str,
        payload: dict[str, Any],
        accepts_response_payload: bool = True,
        *,
        timeout: float = 5.0,
        extra: dict[str, Any] | None = None,
    ) -> str:
        """send_envelope for async tests: waiting for the connection yields to the caller's loop."""
        if self.connected == 0:
            await self.wait_connected_async(timeout)
        envelope = self._build_envelope(type, payload, accepts_response_payload, extra)
        if await self._run_async(self._send_frame(envelope, broadcast=False)) == 0:
            raise AssertionError("no open Socket Mode connection to send the envelope to")
        return envelope["envelope_id"]

    # -- interactivity (block_actions) -----------------------------------------------------------

    def block_actions_payload(
        self,
        action_id: str,
        value: str,
        *,
        user_id: str = "U123",
        channel_id: str = "C123",
        message_ts: str | None = None,
        is_ephemeral: bool = False,
        block_id: str = "job_actions",
        team_id: str = TEAM_ID,
        response_url: str | None = None,
    ) -> dict[str, Any]:
        """A button click as Slack sends it (FACTS-interactive §4): over HTTP as the form field
        ``payload=`` (JSON), over Socket Mode as an "interactive" envelope's payload. The clicked
        message is the recorded one at ``message_ts`` when there is one."""
        trigger_id = self._mint_trigger(2_000_000, user_id, None)
        ts = message_ts or self._next_ts()
        with self.lock:
            recorded = next((m for m in self._messages if m.ts == message_ts), None)
        message: dict[str, Any] = {"type": "message", "ts": ts, "user": BOT_USER_ID, "bot_id": BOT_ID}
        if recorded is not None:
            message.update(text=recorded.text or "", blocks=recorded.blocks or [])
        container: dict[str, Any] = {
            "type": "message",
            "message_ts": ts,
            "channel_id": channel_id,
            "is_ephemeral": is_ephemeral,
        }
        payload: dict[str, Any] = {
            "type": "block_actions",
            "user": {"id": user_id, "username": "alice", "name": "alice", "team_id": team_id},
            "api_app_id": APP_ID,
            "token": "fake-verification-token",
            "container": container,
            "trigger_id": trigger_id,
            "team": {"id": team_id, "domain": TEAM_DOMAIN},
            "enterprise": None,
            "is_enterprise_install": False,
            "channel": {"id": channel_id, "name": "ml"},
            "response_url": response_url or self.response_url(),
            "actions": [
                {
                    "action_id": action_id,
                    "block_id": block_id,
                    "text": {"type": "plain_text", "text": action_id, "emoji": True},
                    "value": value,
                    "type": "button",
                    "action_ts": f"{time.time():.6f}",
                }
            ],
        }
        if not is_ephemeral:
            payload["message"] = message
        return payload

    @staticmethod
    def block_actions_form(payload: dict[str, Any]) -> str:
        """The HTTP body of a click: form-encoded ``payload=<json>`` (sign it like a command)."""
        return urllib.parse.urlencode({"payload": json.dumps(payload)})

    def send_block_actions(self, action_id: str, value: str, **payload_args: Any) -> str:
        """A click over Socket Mode (envelope type "interactive"); returns the envelope_id."""
        return self.send_envelope("interactive", self.block_actions_payload(action_id, value, **payload_args))

    def send_interactive(self, payload: dict[str, Any]) -> str:
        """Any interaction payload (view_submission, block_suggestion, message_action...) over
        Socket Mode as an "interactive" envelope; returns the envelope_id (its ack carries the
        response, e.g. response_action errors or options)."""
        return self.send_envelope("interactive", payload)

    async def send_interactive_async(self, payload: dict[str, Any]) -> str:
        return await self.send_envelope_async("interactive", payload)

    # -- interactivity (modals, options, message shortcuts) ----------------------------------------

    def view_submission_payload(
        self,
        view: dict[str, Any],
        values: dict[str, Any],
        *,
        user_id: str = "U123",
        team_id: str = TEAM_ID,
    ) -> dict[str, Any]:
        """The user pressed Submit on ``view`` (one views.open returned, or any view dict: it is
        completed the way Slack would hold it) with ``values`` by input block_id; see
        slack_views.state_values for what a value may be. Every input block appears in
        ``view.state.values``, the empty ones with null values. The payload's trigger_id is fresh
        and tied to the view (views.push stacks on it)."""
        held = self._held_view(view)
        held["state"] = {"values": slack_views.state_values(held, values, file_lookup=self._file_lookup)}
        return {
            "type": "view_submission",
            "team": {"id": team_id, "domain": TEAM_DOMAIN},
            "user": {"id": user_id, "username": "alice", "name": "alice", "team_id": team_id},
            "api_app_id": APP_ID,
            "token": "fake-verification-token",
            "trigger_id": self._mint_trigger(4_000_000, user_id, held["id"]),
            "view": held,
            "response_urls": [],
            "is_enterprise_install": False,
            "enterprise": None,
        }

    def block_suggestion_payload(
        self,
        action_id: str,
        value: str,
        *,
        block_id: str,
        view: dict[str, Any] | None = None,
        user_id: str = "U123",
        team_id: str = TEAM_ID,
    ) -> dict[str, Any]:
        """The user typed ``value`` into the external select ``action_id`` in ``block_id``. Without
        ``view``: the newest open view holding that block, else a minimal modal holding only it.
        Like Slack's, the payload carries no trigger_id and no response_url."""
        if view is None:
            view = self._view_with_block(block_id) or {
                "type": "modal",
                "title": {"type": "plain_text", "text": "Fake modal"},
                "submit": {"type": "plain_text", "text": "Submit"},
                "blocks": [
                    {
                        "type": "input",
                        "block_id": block_id,
                        "label": {"type": "plain_text", "text": block_id},
                        "element": {"type": "external_select", "action_id": action_id},
                    }
                ],
            }
        held = self._held_view(view)
        return {
            "type": "block_suggestion",
            "user": {"id": user_id, "username": "alice", "name": "alice", "team_id": team_id},
            "container": {"type": "view", "view_id": held["id"]},
            "api_app_id": APP_ID,
            "token": "fake-verification-token",
            "action_id": action_id,
            "block_id": block_id,
            "value": value,
            "team": {"id": team_id, "domain": TEAM_DOMAIN},
            "enterprise": None,
            "is_enterprise_install": False,
            "view": held,
        }

    def message_action_payload(
        self,
        callback_id: str,
        message: dict[str, Any],
        *,
        channel_id: str = "C123",
        user_id: str = "U123",
        team_id: str = TEAM_ID,
        response_url: str | None = None,
    ) -> dict[str, Any]:
        """A message shortcut ``callback_id`` used on ``message`` (e.g. user_message(files=[...]))
        in ``channel_id``: fresh trigger_id and response_url, like Slack's."""
        message = copy.deepcopy(message)
        message.setdefault("type", "message")
        message.setdefault("user", user_id)
        if "ts" not in message:
            with self.lock:
                message["ts"] = self._next_ts()
        return {
            "type": "message_action",
            "token": "fake-verification-token",
            "action_ts": f"{time.time():.6f}",
            "team": {"id": team_id, "domain": TEAM_DOMAIN},
            "user": {"id": user_id, "username": "alice", "name": "alice", "team_id": team_id},
            "channel": {"id": channel_id, "name": "ml"},
            "is_enterprise_install": False,
            "enterprise": None,
            "callback_id": callback_id,
            "trigger_id": self._mint_trigger(5_000_000, user_id, None),
            "message_ts": message["ts"],
            "message": message,
            "response_url": response_url or self.response_url(),
        }

    @staticmethod
    def interactive_form(payload: dict[str, Any]) -> str:
        """The HTTP body of any interaction: form-encoded ``payload=<json>`` (sign it like a command)."""
        return urllib.parse.urlencode({"payload": json.dumps(payload)})

    def _held_view(self, view: dict[str, Any]) -> dict[str, Any]:
        """``view`` as Slack holds it: the stored one when its id is known, else completed (a view
        built by the test, never opened) under a fresh id."""
        with self.lock:
            known = self._views.get(str(view.get("id")))
            if known is not None:
                return copy.deepcopy(known)
        return slack_views.stored_view(
            view,
            view_id=str(view.get("id") or slack_views.random_id("V")),
            view_hash=str(view.get("hash") or slack_views.new_hash(time.time())),
            team_id=TEAM_ID,
            app_id=APP_ID,
            bot_id=BOT_ID,
        )

    def _view_with_block(self, block_id: str) -> dict[str, Any] | None:
        with self.lock:
            for held in reversed(list(self._views.values())):
                if any(isinstance(b, dict) and b.get("block_id") == block_id for b in held["blocks"]):
                    return copy.deepcopy(held)
        return None

    def send_slash_command(self, text: str, **payload_args: Any) -> str:
        """send_envelope("slash_commands", slash_command_payload(text, ...)); returns the envelope_id."""
        return self.send_envelope("slash_commands", self.slash_command_payload(text, **payload_args))

    def wait_for_ack(self, envelope_id: str, timeout: float = 5.0) -> dict[str, Any]:
        return self.wait_for(
            lambda s: s._ack_for(envelope_id), timeout, message=f"an ack of envelope {envelope_id}"
        )

    async def wait_for_ack_async(self, envelope_id: str, timeout: float = 5.0) -> dict[str, Any]:
        return await self.wait_for_async(
            lambda s: s._ack_for(envelope_id), timeout, message=f"an ack of envelope {envelope_id}"
        )

    def send_disconnect(self, reason: str = "refresh_requested") -> None:
        """Ask every connected client to reconnect, as Slack does before rotating a socket."""
        frame = {"type": "disconnect", "reason": reason, "debug_info": {"host": "fake-slack"}}
        self._run(self._send_frame(frame, broadcast=True))

    def close_connections(self) -> None:
        """Drop every Socket Mode connection (clients should reconnect via apps.connections.open)."""
        self._run(self._close_sockets())

    def _ack_for(self, envelope_id: str) -> dict[str, Any] | None:
        return next((a for a in self.socket_acks if a.get("envelope_id") == envelope_id), None)

    @staticmethod
    def _build_envelope(
        type: str, payload: dict[str, Any], accepts_response_payload: bool, extra: dict[str, Any] | None
    ) -> dict[str, Any]:
        return {
            "envelope_id": str(uuid.uuid4()),
            "type": type,
            "payload": payload,
            "accepts_response_payload": accepts_response_payload,
            **(extra or {}),
        }

    async def _send_frame(self, frame: dict[str, Any], *, broadcast: bool) -> int:
        with self.lock:
            targets = [ws for ws in self._sockets if not ws.closed]
            self._envelopes.append(frame)
        if not broadcast:
            targets = targets[-1:]
        for ws in targets:
            await ws.send_json(frame)
        return len(targets)

    async def _close_sockets(self) -> None:
        with self.lock:
            sockets = list(self._sockets)
        for ws in sockets:
            await ws.close(code=WSCloseCode.GOING_AWAY, message=b"fake slack closing")

    async def _on_stop(self) -> None:
        await self._close_sockets()

    # -- HTTP plumbing --------------------------------------------------------------------------

    def _make_app(self) -> web.Application:
        app = web.Application(client_max_size=_MAX_UPLOAD_BYTES)
        app.router.add_route("*", "/api/{method}", self._handle_api)
        app.router.add_post("/response/{key}", self._handle_response_url)
        app.router.add_post("/upload/v1/{token}", self._handle_upload)
        app.router.add_get("/socket", self._handle_socket)
        # url_private and url_private_download of files users shared (add_file).
        app.router.add_get("/files-pri/{team_file}/download/{name}", self._handle_download)
        app.router.add_get("/files-pri/{team_file}/{name}", self._handle_download)
        return app

    async def _handle_api(self, request: web.Request) -> web.StreamResponse:
        method = request.match_info["method"]
        headers = {k.lower(): v for k, v in request.headers.items()}
        call = RecordedCall(method=method, params={}, headers=headers, time=self.record_clock(), token=None)
        with self.lock:
            self._calls.append(call)
        try:
            params = await _read_params(request)
        except _SlackError as exc:
            return self._finish(call, 200, exc.body)
        token = params.pop("token", None)
        auth = request.headers.get("Authorization", "")
        if auth.lower().startswith("bearer "):
            token = auth[7:].strip()
        call.params, call.token = params, token
        self.seen_text.append(json.dumps(params, default=str))

        if self.latency > 0:
            await asyncio.sleep(self.latency)
        # files.completeUploadExternal names its channel channel_id; faults scoped to a channel
        # apply to it the same way.
        fault = self._take_fault(method, params.get("channel") or params.get("channel_id"))
        if fault is not None:
            return self._fault_response(call, fault)

        with self.lock:
            custom = self._custom.get(method)
        if custom is not None:
            handler, kind = custom.handler, custom.token
        elif method in self._builtin:
            handler, kind = self._builtin[method]
        else:
            return self._finish(call, 200, {"ok": False, "error": "unknown_method"})

        problem = self._auth_problem(token, kind)
        if problem:
            return self._finish(call, 200, {"ok": False, "error": problem})
        # Slack tells every bot-token caller which scopes it holds; a bot can check files:write
        # with auth.test at start-up instead of discovering it on the first chart.
        scope_header = {"X-OAuth-Scopes": ",".join(self.scopes)} if kind == "bot" else None
        needed = _NEEDED_SCOPE.get(method)
        if needed and needed not in self.scopes:
            provided = ",".join(self.scopes)
            body = {"ok": False, "error": "missing_scope", "needed": needed, "provided": provided}
            return self._finish(call, 200, body, scope_header)
        if method == "chat.postMessage":
            wait = self._rate_limited(str(params.get("channel", "")))
            if wait is not None:
                return self._finish(
                    call, 429, {"ok": False, "error": "ratelimited"}, {"Retry-After": str(wait)}
                )
        try:
            with self.lock:
                result = handler(params)
        except _SlackError as exc:
            result = exc.body
        return self._finish(call, 200, result, scope_header)

    def _finish(
        self, call: RecordedCall, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
    ) -> web.Response:
        call.status, call.response = status, body
        return web.json_response(body, status=status, headers=headers)

    def _fault_response(self, call: RecordedCall, fault: SlackFault) -> web.Response:
        headers = {}
        if fault.retry_after is not None:
            headers["Retry-After"] = str(fault.retry_after)
        elif fault.status == 429:
            headers["Retry-After"] = "1"  # Slack always says when to come back
        if fault.status is None:
            return self._finish(call, 200, {"ok": False, "error": fault.error})
        error = fault.error or ("ratelimited" if fault.status == 429 else "internal_error")
        return self._finish(call, fault.status, {"ok": False, "error": error}, headers)

    def _auth_problem(self, token: str | None, kind: TokenKind) -> str | None:
        if not token:
            return "not_authed"
        if token not in (self.bot_token, self.app_token):
            return "invalid_auth"
        expected = self.app_token if kind == "app" else self.bot_token
        return None if token == expected else "not_allowed_token_type"

    def _rate_limited(self, channel: str) -> int | None:
        rate = self.rate_limit_per_channel
        if not rate:
            return None
        now = time.monotonic()
        interval = 1.0 / rate
        with self.lock:
            last = self._last_post.get(channel)
            if last is not None and now - last < interval:
                return max(1, math.ceil(interval - (now - last)))
            self._last_post[channel] = now
        return None

    async def _handle_response_url(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        text = raw.decode("utf-8", errors="replace")
        self.seen_text.append(text)
        parsed: Any = None
        if request.content_type == "application/json":
            try:
                parsed = json.loads(text)
            except ValueError:
                parsed = None
        rec = RecordedResponse(
            key=request.match_info["key"],
            json=parsed,
            body=text,
            headers={k.lower(): v for k, v in request.headers.items()},
            time=time.time(),
        )
        with self.lock:
            self._responses.append(rec)
        if self.latency > 0:
            await asyncio.sleep(self.latency)
        fault = self._take_fault("response_url", None)
        if fault is not None:
            status = fault.status or (404 if fault.error else 500)
            headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
            body = fault.error or {404: "expired_url", 429: "rate_limited"}.get(status, "internal_error")
            rec.status = status
            return web.Response(status=status, text=body, headers=headers)
        if not isinstance(parsed, dict):
            # Slack only accepts JSON objects on response_url.
            rec.status = 400
            return web.Response(status=400, text="invalid_payload")
        blocks = parsed.get("blocks")
        if blocks is not None and (not isinstance(blocks, list) or _block_errors(blocks)):
            # Slack validates Block Kit here too, and the reply is dropped.
            rec.status = 400
            return web.Response(status=400, text="invalid_blocks")
        rec.status = 200
        return web.Response(text="ok")

    async def _handle_upload(self, request: web.Request) -> web.StreamResponse:
        """Step 2 of the external upload: the file's bytes, raw or as a multipart ``file`` field.

        Like files.slack.com: HTTP 200 ``OK - <bytes>`` (text/plain, which slack_sdk reads as text)
        on success, anything else is a failure. Recorded in ``calls`` as method "upload".
        """
        token = request.match_info["token"]
        headers = {k.lower(): v for k, v in request.headers.items()}
        call = RecordedCall(method="upload", params={}, headers=headers, time=time.time(), token=None)
        with self.lock:
            self._calls.append(call)
        # Read the whole body first: a client whose upload is refused still sent every byte.
        data = await _read_upload_body(request)
        with self.lock:
            pending = self._pending_uploads.get(token)
        call.params = {"file_id": pending.file_id if pending else None, "bytes": len(data or b"")}
        if self.latency > 0:
            await asyncio.sleep(self.latency)
        fault = self._take_fault("upload", None)
        if fault is not None:
            status = fault.status or 500
            reply = {"ok": False, "error": fault.error or "internal_error"}
            retry = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else None
            return self._finish_upload(call, status, reply["error"], reply, retry)
        if pending is None or pending.completed:
            # A token never issued, or one whose file was already completed: the URL is spent.
            return self._finish_upload(call, 404, "Not Found", {"ok": False, "error": "not_found"})
        if data is None:
            return self._finish_upload(call, 400, "no file in the multipart body", {"ok": False})
        with self.lock:
            # A second POST before completion replaces the bytes: what a retried upload does.
            pending.data = data
            # latin-1 keeps every byte and any ASCII secret intact for the session's secret scan.
            self.seen_text.append(data.decode("latin-1"))
        return self._finish_upload(call, 200, f"OK - {len(data)}", {"ok": True})

    @staticmethod
    def _finish_upload(
        call: RecordedCall,
        status: int,
        text: str,
        recorded: dict[str, Any],
        headers: dict[str, str] | None = None,
    ) -> web.Response:
        call.status, call.response = status, recorded
        return web.Response(status=status, text=text, headers=headers)

    async def _handle_download(self, request: web.Request) -> web.StreamResponse:
        """GET of a shared file, like files.slack.com: the bytes only for ``Authorization: Bearer
        <bot token>`` with files:read; otherwise HTTP 200 with the sign-in page (what Slack does,
        2nd-hand: see _SIGN_IN_PAGE). Unknown, deleted or invisible files: 404 (assumed). Streamed
        in 64 KiB chunks straight from the one copy of the content (or generated)."""
        file_id = request.match_info["team_file"].partition("-")[2]
        auth = request.headers.get("Authorization", "")
        token = auth[7:].strip() if auth.lower().startswith("bearer ") else None
        record = RecordedDownload(file_id, 0, False, False, 0, time.time())
        with self.lock:
            self._downloads.append(record)
            record.authorized = token == self.bot_token and "files:read" in self._scopes
            entry = self._files.get(file_id)
        if self.latency > 0:
            await asyncio.sleep(self.latency)
        fault = self._take_fault("download", None)
        if fault is not None:
            record.status = fault.status or 500
            headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else None
            return web.Response(status=record.status, text=fault.error or "internal_error", headers=headers)
        if not record.authorized:
            record.status = 200
            return web.Response(text=_SIGN_IN_PAGE, content_type="text/html")
        if entry is None or entry.deleted or not entry.visible:
            record.status = 404
            return web.Response(status=404, text="File not found")
        size = entry.generated_size if entry.generated_size is not None else len(entry.content)
        name = str(entry.obj["name"])
        response = web.StreamResponse(
            headers={
                "Content-Type": str(entry.obj["mimetype"]),
                "Content-Disposition": f"attachment; filename*=UTF-8''{urllib.parse.quote(name)}",
            }
        )
        response.content_length = size
        record.status = 200
        await response.prepare(request)
        chunks = _generated_jsonl(size) if entry.generated_size is not None else _slices(entry.content)
        try:
            for chunk in chunks:
                await response.write(chunk)
                record.bytes_sent += len(chunk)
            await response.write_eof()
        except ConnectionResetError:
            return response  # the reader hung up (e.g. at its size cap): not served whole
        record.served = True
        return response

    def _upload_url_for(self, token: str) -> str:
        return f"{self.origin}/upload/v1/{token}"

    async def _handle_socket(self, request: web.Request) -> web.StreamResponse:
        # autoping answers the client's "sdk-ping-pong:<t>" pings with matching pongs, which
        # slack_sdk's aiohttp client uses to decide the connection is alive.
        # timeout bounds the close handshake, so stop() cannot stall on a client that stopped reading.
        ws = web.WebSocketResponse(autoping=True, timeout=1.0)
        await ws.prepare(request)
        with self.lock:
            open_now = sum(1 for s in self._sockets if not s.closed) + 1
        await ws.send_json(
            {
                "type": "hello",
                "num_connections": open_now,
                "debug_info": {"host": "fake-slack", "build_number": 1, "approximate_connection_time": 18060},
                "connection_info": {"app_id": APP_ID},
            }
        )
        # Registered only after hello went out, so connected > 0 means the client saw hello.
        with self.lock:
            self._sockets.append(ws)
            self._connection_count += 1
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                try:
                    frame = json.loads(msg.data)
                except ValueError:
                    frame = None
                with self.lock:
                    self._socket_acks.append(frame if isinstance(frame, dict) else {"_raw": msg.data})
        finally:
            with self.lock:
                if ws in self._sockets:
                    self._sockets.remove(ws)
        return ws

    # -- Web API methods (called with self.lock held) -------------------------------------------

    def _next_ts(self) -> str:
        # Like Slack: the post's wall-clock time in microseconds, kept strictly increasing and unique.
        micros = max(int(time.time() * 1_000_000), self._last_ts_micros + 1)
        self._last_ts_micros = micros
        return f"{micros // 1_000_000}.{micros % 1_000_000:06d}"

    def _auth_test(self, params: dict[str, Any]) -> dict[str, Any]:
        return {
            "ok": True,
            "url": f"https://{TEAM_DOMAIN}.slack.com/",
            "team": TEAM_NAME,
            "user": BOT_USER_NAME,
            "team_id": TEAM_ID,
            "user_id": BOT_USER_ID,
            "bot_id": BOT_ID,
            "is_enterprise_install": False,
        }

    def _chat_post_message(self, params: dict[str, Any]) -> dict[str, Any]:
        channel = params.get("channel")
        if not channel:
            raise _SlackError("channel_not_found")
        text, blocks, attachments = _message_content(params, require=True)
        channel_id = _resolve_channel(str(channel))
        ts = self._next_ts()
        thread_ts = params.get("thread_ts") or None
        message: dict[str, Any] = {
            "type": "message",
            "text": text or "",
            "user": BOT_USER_ID,
            "bot_id": BOT_ID,
            "app_id": APP_ID,
            "team": TEAM_ID,
            "ts": ts,
        }
        if blocks is not None:
            message["blocks"] = blocks
        if attachments is not None:
            message["attachments"] = attachments
        if thread_ts:
            message["thread_ts"] = thread_ts
        self._messages.append(
            RecordedMessage(
                channel=channel_id,
                ts=ts,
                text=text,
                blocks=blocks,
                thread_ts=thread_ts,
                reply_broadcast=_truthy(params.get("reply_broadcast")),
                params=params,
                time=self.record_clock(),
                attachments=attachments,
            )
        )
        return {"ok": True, "channel": channel_id, "ts": ts, "message": message}

    def _chat_update(self, params: dict[str, Any]) -> dict[str, Any]:
        channel, ts = params.get("channel"), params.get("ts")
        if not channel:
            raise _SlackError("channel_not_found")
        if not ts:
            raise _SlackError("message_not_found")
        channel_id = _resolve_channel(str(channel))
        target = next((m for m in self._messages if m.channel == channel_id and m.ts == ts), None)
        if target is None:
            raise _SlackError("message_not_found")
        text, blocks, attachments = _message_content(params, require=True)
        if text is not None:
            target.text = text
        if blocks is not None:
            target.blocks = blocks
        if attachments is not None:
            target.attachments = attachments
        target.edits += 1
        self._updates.append(RecordedUpdate(channel_id, str(ts), text, blocks, params, self.record_clock()))
        message = {"text": target.text or "", "user": BOT_USER_ID, "bot_id": BOT_ID}
        if target.blocks is not None:
            message["blocks"] = target.blocks
        return {"ok": True, "channel": channel_id, "ts": ts, "text": target.text or "", "message": message}

    def _chat_post_ephemeral(self, params: dict[str, Any]) -> dict[str, Any]:
        channel, user = params.get("channel"), params.get("user")
        if not channel:
            raise _SlackError("channel_not_found")
        if not user:
            raise _SlackError("user_not_in_channel")
        text, blocks, _ = _message_content(params, require=True)
        ts = self._next_ts()
        self._ephemerals.append(
            RecordedEphemeral(
                channel=_resolve_channel(str(channel)),
                user=str(user),
                message_ts=ts,
                text=text,
                blocks=blocks,
                thread_ts=params.get("thread_ts") or None,
                params=params,
                time=time.time(),
            )
        )
        return {"ok": True, "message_ts": ts}

    def _message_view(self, m: RecordedMessage, with_metadata: bool) -> dict[str, Any]:
        view: dict[str, Any] = {"type": "message", "user": BOT_USER_ID, "bot_id": BOT_ID, "ts": m.ts}
        view["text"] = m.text or ""
        if m.blocks is not None:
            view["blocks"] = m.blocks
        if m.thread_ts:
            view["thread_ts"] = m.thread_ts
        if m.files is not None:
            view["files"] = [dict(f) for f in m.files]
        metadata = m.params.get("metadata")
        if with_metadata and isinstance(metadata, dict):
            view["metadata"] = metadata
        return view

    def _history_window(
        self, params: dict[str, Any], messages: list[RecordedMessage]
    ) -> list[RecordedMessage]:
        oldest = float(params.get("oldest") or 0)
        latest = float(params.get("latest") or "inf")
        return [m for m in messages if oldest <= float(m.ts) <= latest]

    def _conversations_history(self, params: dict[str, Any]) -> dict[str, Any]:
        """Top-level messages (and replies broadcast to the channel), newest first, like Slack."""
        channel = params.get("channel")
        if not channel:
            raise _SlackError("channel_not_found")
        channel_id = _resolve_channel(str(channel))
        found = [
            m
            for m in self._messages
            if m.channel == channel_id and (m.thread_ts is None or m.reply_broadcast)
        ]
        meta = _truthy(params.get("include_all_metadata"))
        window = self._history_window(params, found)
        limit = int(params.get("limit") or 100)
        views = [self._message_view(m, meta) for m in reversed(window)][:limit]
        return {"ok": True, "messages": views, "has_more": len(window) > limit}

    def _conversations_replies(self, params: dict[str, Any]) -> dict[str, Any]:
        """A thread: its parent first, then replies oldest first, like Slack."""
        channel, ts = params.get("channel"), params.get("ts")
        if not channel:
            raise _SlackError("channel_not_found")
        channel_id = _resolve_channel(str(channel))
        parent = next((m for m in self._messages if m.channel == channel_id and m.ts == ts), None)
        if parent is None:
            raise _SlackError("thread_not_found")
        replies = [m for m in self._messages if m.channel == channel_id and m.thread_ts == ts]
        meta = _truthy(params.get("include_all_metadata"))
        window = [parent, *self._history_window(params, replies)]
        limit = int(params.get("limit") or 1000)
        views = [self._message_view(m, meta) for m in window][:limit]
        return {"ok": True, "messages": views, "has_more": len(window) > limit}

    def _conversations_open(self, params: dict[str, Any]) -> dict[str, Any]:
        if params.get("channel"):
            return {"ok": True, "no_op": True, "already_open": True, "channel": {"id": params["channel"]}}
        users = params.get("users")
        ids = users if isinstance(users, list) else [u for u in str(users or "").split(",") if u]
        if not ids:
            raise _SlackError("users_list_not_supplied")
        channel_id = "D" + ids[0] if len(ids) == 1 else "G" + "".join(ids)
        return {"ok": True, "no_op": False, "already_open": False, "channel": {"id": channel_id}}

    def _users_info(self, params: dict[str, Any]) -> dict[str, Any]:
        user_id = params.get("user")
        if not user_id:
            raise _SlackError("user_not_found")
        user = self._users.get(str(user_id)) or _default_user(str(user_id), str(user_id).lower())
        return {"ok": True, "user": dict(user)}

    def _apps_connections_open(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "url": self.socket_url}

    def _files_info(self, params: dict[str, Any]) -> dict[str, Any]:
        file_id = params.get("file")
        if not file_id:
            raise _invalid_arguments("missing required field: file")
        entry = self._files.get(str(file_id))
        if entry is None or not entry.visible:
            raise _SlackError("file_not_found")
        if entry.deleted:
            raise _SlackError("file_deleted")
        return {
            "ok": True,
            "file": copy.deepcopy(entry.obj),
            "comments": [],
            "response_metadata": {"next_cursor": ""},
        }

    # -- views (called with self.lock held) -------------------------------------------------------

    def _views_open(self, params: dict[str, Any]) -> dict[str, Any]:
        record = self._view_call("views.open", params)
        trigger = self._take_trigger(record, params)
        view = self._checked_view(record, params)
        return self._store_view(record, view, trigger, previous=None)

    def _views_push(self, params: dict[str, Any]) -> dict[str, Any]:
        record = self._view_call("views.push", params)
        trigger = self._take_trigger(record, params)
        view = self._checked_view(record, params)
        below = self._views.get(trigger.view_id) if trigger.view_id else None
        if below is not None:
            root = below["root_view_id"]
            if sum(1 for v in self._views.values() if v["root_view_id"] == root) >= _VIEW_STACK_LIMIT:
                raise self._view_refused(record, "push_limit_reached")
        # A trigger from outside any modal starts a stack of its own (Slack's answer is unknown).
        return self._store_view(record, view, trigger, previous=below)

    def _views_update(self, params: dict[str, Any]) -> dict[str, Any]:
        record = self._view_call("views.update", params)
        view_id, external_id = params.get("view_id"), params.get("external_id")
        if view_id:
            current = self._views.get(str(view_id))
        elif external_id:
            current = next((v for v in self._views.values() if v["external_id"] == external_id), None)
        else:
            raise self._view_refused(record, "invalid_arguments", "either view_id or external_id is required")
        if current is None:
            raise self._view_refused(record, "not_found")
        record.view_id = current["id"]
        view = self._checked_view(record, params)
        expected = params.get("hash")
        if expected and expected != current["hash"]:
            # Someone updated the view since this caller read it.
            raise self._view_refused(record, "hash_conflict")
        new_external = view.get("external_id") or current["external_id"]
        updated = slack_views.stored_view(
            {**view, "external_id": new_external},
            view_id=current["id"],
            view_hash=slack_views.new_hash(time.time()),
            team_id=TEAM_ID,
            app_id=APP_ID,
            bot_id=BOT_ID,
            root_view_id=current["root_view_id"],
            previous_view_id=current["previous_view_id"],
        )
        self._views[current["id"]] = updated
        record.view = copy.deepcopy(updated)
        return {"ok": True, "view": copy.deepcopy(updated)}

    def _view_call(self, method: str, params: dict[str, Any]) -> RecordedView:
        view = params.get("view")
        trigger_id = params.get("trigger_id")
        record = RecordedView(
            method=method,
            view=copy.deepcopy(view) if isinstance(view, dict) else {"_raw": view},
            trigger_id=str(trigger_id) if trigger_id else None,
            view_id=None,
            user_id=None,
            time=time.time(),
        )
        self._view_records.append(record)
        return record

    @staticmethod
    def _view_refused(record: RecordedView, error: str, *problems: str) -> _SlackError:
        record.error = error
        record.messages = [p if p.startswith("[ERROR]") else f"[ERROR] {p}" for p in problems]
        if record.messages:
            return _SlackError(error, response_metadata={"messages": record.messages})
        return _SlackError(error)

    def _take_trigger(self, record: RecordedView, params: dict[str, Any]) -> _Trigger:
        """Checked now, spent only once the view is accepted (a refused view leaves it usable)."""
        trigger_id = params.get("trigger_id")
        if not trigger_id:
            raise self._view_refused(record, "invalid_arguments", "missing required field: trigger_id")
        trigger = self._triggers.get(str(trigger_id))
        if trigger is None:
            raise self._view_refused(record, "invalid_trigger_id")
        record.user_id = trigger.user_id
        if trigger.used:
            raise self._view_refused(record, "exchanged_trigger_id")
        if time.monotonic() - trigger.issued >= self.trigger_ttl:
            raise self._view_refused(record, "expired_trigger_id")
        return trigger

    def _checked_view(self, record: RecordedView, params: dict[str, Any]) -> dict[str, Any]:
        view = params.get("view")
        error, messages = slack_views.view_errors(view, other_blocks=_view_block_errors)
        if error:
            raise self._view_refused(record, error, *messages)
        assert isinstance(view, dict)
        external_id = view.get("external_id")
        taken = any(v["external_id"] == external_id for v in self._views.values())
        if external_id and record.method != "views.update" and taken:
            raise self._view_refused(record, "duplicate_external_id")
        return view

    def _store_view(
        self, record: RecordedView, view: dict[str, Any], trigger: _Trigger, previous: dict[str, Any] | None
    ) -> dict[str, Any]:
        trigger.used = True
        view_id = slack_views.random_id("V")
        held = slack_views.stored_view(
            view,
            view_id=view_id,
            view_hash=slack_views.new_hash(time.time()),
            team_id=TEAM_ID,
            app_id=APP_ID,
            bot_id=BOT_ID,
            root_view_id=previous["root_view_id"] if previous else None,
            previous_view_id=previous["id"] if previous else None,
        )
        self._views[view_id] = held
        record.view, record.view_id = copy.deepcopy(held), view_id
        return {"ok": True, "view": copy.deepcopy(held)}

    def _files_get_upload_url_external(self, params: dict[str, Any]) -> dict[str, Any]:
        filename = params.get("filename")
        if not isinstance(filename, str) or not filename.strip():
            raise _invalid_arguments("missing required field: filename")
        length = _positive_int(params.get("length"))
        if length is None:
            raise _invalid_arguments("length must be an integer greater than 0")
        alt_txt = params.get("alt_txt")
        if alt_txt is not None and len(str(alt_txt)) > _MAX_ALT_TXT:
            raise _SlackError("alt_txt_too_large")
        file_id = _new_file_id(set(self._uploads_by_file))
        token = secrets.token_urlsafe(24)
        snippet_type = params.get("snippet_type")
        pending = _PendingUpload(
            file_id=file_id,
            token=token,
            filename=filename,
            length=length,
            alt_txt=str(alt_txt) if alt_txt is not None else None,
            snippet_type=str(snippet_type) if snippet_type is not None else None,
        )
        self._pending_uploads[token] = pending
        self._uploads_by_file[file_id] = pending
        return {"ok": True, "upload_url": self._upload_url_for(token), "file_id": file_id}

    def _files_complete_upload_external(self, params: dict[str, Any]) -> dict[str, Any]:
        """Step 3. Everything is checked before anything changes, so a refused call can be retried.

        Errors the fake chooses where Slack documents none precisely: an unknown file id, a file
        whose bytes never arrived, one already completed, or one whose bytes differ from the
        declared ``length`` all answer ``file_not_found`` (the file is not usable; which of these
        it was is in ``response_metadata.messages``); a malformed ``files`` is ``invalid_arguments``.
        """
        items = _parse_files_arg(params.get("files"))
        channel_id = params.get("channel_id")
        if channel_id:
            channels = [str(channel_id)]
        else:
            channels = [c.strip() for c in str(params.get("channels") or "").split(",") if c.strip()]
        thread_ts = str(params["thread_ts"]) if params.get("thread_ts") else None
        if thread_ts and len(channels) != 1:
            raise _invalid_arguments("thread_ts needs exactly one channel (channel_id)")
        initial_comment = params.get("initial_comment")
        comment = str(initial_comment) if initial_comment is not None else None
        _, blocks, _ = _message_content({"text": comment, "blocks": params.get("blocks")}, require=False)

        pendings: list[_PendingUpload] = []
        for item in items:
            pending = self._uploads_by_file.get(item["id"])
            problem = _unusable_upload(item["id"], pending)
            if problem:
                raise _SlackError("file_not_found", response_metadata={"messages": [f"[ERROR] {problem}"]})
            assert pending is not None
            pendings.append(pending)

        now = time.time()
        file_objects: list[dict[str, Any]] = []
        records: list[RecordedUpload] = []
        for item, pending in zip(items, pendings, strict=True):
            pending.completed = True
            data = pending.data or b""
            title = item.get("title") or pending.filename
            file_objects.append(_file_object(pending, title, len(data), int(now)))
            records.append(
                RecordedUpload(
                    file_id=pending.file_id,
                    filename=pending.filename,
                    title=title,
                    alt_txt=pending.alt_txt,
                    data=data,
                    length=pending.length,
                    channel=_resolve_channel(channels[0]) if channels else None,
                    thread_ts=thread_ts,
                    initial_comment=comment,
                    blocks=blocks,
                    ts=None,
                    time=now,
                )
            )
        self._uploads.extend(records)
        if channels:
            if self._drop_shares > 0:
                self._drop_shares -= 1
                for record in records:
                    record.dropped = True
            elif self.share_delay > 0:
                generation = self._generation
                asyncio.get_running_loop().call_later(
                    self.share_delay,
                    self._delayed_share,
                    generation,
                    channels,
                    thread_ts,
                    comment,
                    blocks,
                    file_objects,
                    records,
                    params,
                )
            else:
                self._share(channels, thread_ts, comment, blocks, file_objects, records, params)
        return {"ok": True, "files": [{"id": r.file_id, "title": r.title} for r in records]}

    def _delayed_share(self, generation: int, *args: Any) -> None:
        with self.lock:
            if generation == self._generation:  # not reset in the meantime
                self._share(*args)

    def _share(
        self,
        channels: list[str],
        thread_ts: str | None,
        comment: str | None,
        blocks: list[dict[str, Any]] | None,
        file_objects: list[dict[str, Any]],
        records: list[RecordedUpload],
        params: dict[str, Any],
    ) -> None:
        """The message a completed upload shares: initial_comment as its text, the files attached."""
        for i, channel in enumerate(channels):
            ts = self._next_ts()
            self._messages.append(
                RecordedMessage(
                    channel=_resolve_channel(channel),
                    ts=ts,
                    text=comment or "",
                    blocks=blocks,
                    thread_ts=thread_ts,
                    reply_broadcast=False,
                    params=params,
                    time=time.time(),
                    files=[dict(f) for f in file_objects],
                )
            )
            if i == 0:
                for record in records:
                    record.ts = ts


async def _read_params(request: web.Request) -> dict[str, Any]:
    """Merge query string and body the way Slack does: form or JSON bodies are both accepted."""
    params: dict[str, Any] = dict(request.query)
    if request.body_exists:
        if request.content_type == "application/json":
            raw = await request.read()
            try:
                body = json.loads(raw) if raw.strip() else {}
            except ValueError:
                raise _SlackError("invalid_json") from None
            if not isinstance(body, dict):
                raise _SlackError("invalid_json")
            params.update(body)
        else:
            form = await request.post()
            for key, value in form.items():
                params[key] = value if isinstance(value, str) else "<file>"
    # Form bodies carry structured arguments as JSON strings; tests want the structure.
    for key in ("blocks", "attachments", "metadata", "view"):
        value = params.get(key)
        if isinstance(value, str) and value.strip()[:1] in ("[", "{"):
            # Left as a string when malformed; the method handler reports it.
            with contextlib.suppress(ValueError):
                params[key] = json.loads(value)
    return params


async def _read_upload_body(request: web.Request) -> bytes | None:
    """The bytes of an upload: the raw body, or the multipart ``file`` field (else the first file
    field); None when a multipart body carries no file."""
    if request.content_type != "multipart/form-data":
        return await request.read()
    form = await request.post()
    fields = [form.get("file"), *form.values()]
    for value in fields:
        if isinstance(value, web.FileField):
            return value.file.read()
    return None


# One chat example per line (the content varies in length to fill a size exactly).
_JSONL_LINE = (
    b'{"messages": [{"role": "system", "content": "You answer briefly."}, '
    b'{"role": "user", "content": "What is the capital of France?"}, '
    b'{"role": "assistant", "content": "Paris."}]}\n'
)


def _slices(data: bytes) -> Iterator[bytes]:
    view = memoryview(data)
    for start in range(0, len(view), _DOWNLOAD_CHUNK):
        yield bytes(view[start : start + _DOWNLOAD_CHUNK])


def _generated_jsonl(size: int) -> Iterator[bytes]:
    """Exactly ``size`` bytes of valid JSONL: whole copies of _JSONL_LINE, the last one padded
    inside its assistant content so the file ends on a complete line. Constant memory."""
    per_chunk = max(1, _DOWNLOAD_CHUNK // len(_JSONL_LINE))
    block = _JSONL_LINE * per_chunk
    lines, extra = divmod(size, len(_JSONL_LINE))
    # The remainder goes into the last line: "Paris." followed by spaces.
    last = _JSONL_LINE.replace(b'"Paris."', b'"Paris.' + b" " * extra + b'"')
    remaining = lines - 1
    while remaining >= per_chunk:
        yield block
        remaining -= per_chunk
    if remaining:
        yield _JSONL_LINE * remaining
    yield last


def _invalid_arguments(problem: str) -> _SlackError:
    return _SlackError("invalid_arguments", response_metadata={"messages": [f"[ERROR] {problem}"]})


def _positive_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value > 0 else None
    if isinstance(value, str) and value.strip().isdigit():
        number = int(value)
        return number if number > 0 else None
    return None


def _new_file_id(taken: set[str]) -> str:
    alphabet = string.ascii_uppercase + string.digits
    while True:
        file_id = "F" + "".join(secrets.choice(alphabet) for _ in range(10))
        if file_id not in taken:
            return file_id


def _parse_files_arg(value: Any) -> list[dict[str, str]]:
    """``files``: a JSON array string ``[{"id": "F..", "title": ".."}]`` (slack_sdk, form bodies) or,
    in a JSON body, the array itself."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise _invalid_arguments("files must be a JSON array") from None
    if not isinstance(value, list) or not value:
        raise _invalid_arguments("files must be a non-empty array of {id, title}")
    items: list[dict[str, str]] = []
    for item in value:
        if not isinstance(item, dict) or not isinstance(item.get("id"), str) or not item["id"]:
            raise _invalid_arguments("each file needs an id")
        title = item.get("title")
        if title is not None and not isinstance(title, str):
            raise _invalid_arguments("a file title must be a string")
        items.append({"id": item["id"], **({"title": title} if title else {})})
    ids = [item["id"] for item in items]
    if len(set(ids)) != len(ids):
        raise _invalid_arguments("the same file id is listed twice")
    return items


def _unusable_upload(file_id: str, pending: _PendingUpload | None) -> str | None:
    if pending is None:
        return f"file {file_id} was never requested with files.getUploadURLExternal"
    if pending.completed:
        return f"file {file_id} was already completed; files.completeUploadExternal can only be called once"
    if pending.data is None:
        return f"no bytes were uploaded for file {file_id}"
    if len(pending.data) != pending.length:
        return f"file {file_id}: {len(pending.data)} bytes uploaded but length {pending.length} declared"
    return None


def _file_object(pending: _PendingUpload, title: str, size: int, created: int) -> dict[str, Any]:
    """The file as a share message lists it (a subset of Slack's file object)."""
    mimetype = mimetypes.guess_type(pending.filename)[0] or "application/octet-stream"
    extension = pending.filename.rsplit(".", 1)[-1].lower() if "." in pending.filename else ""
    obj: dict[str, Any] = {
        "id": pending.file_id,
        "created": created,
        "name": pending.filename,
        "title": title,
        "mimetype": mimetype,
        "filetype": extension or "binary",
        "user": BOT_USER_ID,
        "size": size,
    }
    if pending.alt_txt is not None:
        obj["alt_txt"] = pending.alt_txt
    return obj


def _message_content(
    params: dict[str, Any], *, require: bool
) -> tuple[str | None, list[dict[str, Any]] | None, list[dict[str, Any]] | None]:
    text = params.get("text")
    text = str(text) if text is not None else None
    blocks = params.get("blocks")
    attachments = params.get("attachments")
    if blocks is not None:
        if not isinstance(blocks, list):
            raise _SlackError("invalid_blocks_format")
        errors = _block_errors(blocks)
        if errors:
            raise _SlackError(
                "invalid_blocks",
                errors=errors,
                response_metadata={"messages": [f"[ERROR] {e}" for e in errors]},
            )
    if attachments is not None and not isinstance(attachments, list):
        raise _SlackError("invalid_attachments")
    if require and not text and not blocks and not attachments:
        raise _SlackError("no_text")
    if text is not None and len(text) > _MAX_TEXT:
        raise _SlackError("msg_too_long")
    return text, blocks, attachments


def _block_errors(
    blocks: list[Any], *, max_blocks: int = _MAX_BLOCKS, prefix: str = "/blocks", per_block_ids: bool = False
) -> list[str]:
    """A small subset of Slack's Block Kit validation: the limits bots actually run into.

    ``per_block_ids``: action_ids need only be unique within their block (Slack's documented rule,
    used for modals, whose inputs legitimately share action_ids across blocks); messages are held
    to message-wide uniqueness.
    """
    errors: list[str] = []
    if len(blocks) > max_blocks:
        errors.append(f"no more than {max_blocks} items allowed [json-pointer:{prefix}]")
    for i, block in enumerate(blocks):
        ptr = f"{prefix}/{i}"
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            errors.append(f"missing required field: type [json-pointer:{ptr}]")
            continue
        if len(str(block.get("block_id", ""))) > _MAX_BLOCK_ID:
            errors.append(f"must be less than {_MAX_BLOCK_ID + 1} characters [json-pointer:{ptr}/block_id]")
        kind = block["type"]
        if kind == "section":
            text, fields = block.get("text"), block.get("fields")
            if text is None and not fields:
                errors.append(f"must provide either text or fields [json-pointer:{ptr}]")
            errors += _text_errors(text, f"{ptr}/text", _MAX_SECTION_TEXT)
            if fields is not None:
                if not isinstance(fields, list) or len(fields) > _MAX_FIELDS:
                    errors.append(f"no more than {_MAX_FIELDS} items allowed [json-pointer:{ptr}/fields]")
                else:
                    for j, item in enumerate(fields):
                        errors += _text_errors(item, f"{ptr}/fields/{j}", _MAX_FIELD_TEXT)
        elif kind == "header":
            text = block.get("text")
            if not isinstance(text, dict) or text.get("type") != "plain_text":
                errors.append(f"must be a plain_text text object [json-pointer:{ptr}/text]")
            errors += _text_errors(text, f"{ptr}/text", _MAX_HEADER_TEXT)
        elif kind in ("context", "actions"):
            elements = block.get("elements")
            limit = 10 if kind == "context" else _MAX_ACTIONS_ELEMENTS
            if not isinstance(elements, list) or not elements or len(elements) > limit:
                errors.append(f"must contain between 1 and {limit} elements [json-pointer:{ptr}/elements]")
            elif kind == "actions":
                for j, element in enumerate(elements):
                    errors += _element_errors(element, f"{ptr}/elements/{j}")
    if per_block_ids:
        for block in blocks:
            errors += _duplicate_action_ids([block])
    else:
        errors += _duplicate_action_ids(blocks)
    return errors


def _view_block_errors(blocks: list[Any], prefix: str) -> list[str]:
    return _block_errors(blocks, max_blocks=slack_views.MAX_VIEW_BLOCKS, prefix=prefix, per_block_ids=True)


def _duplicate_action_ids(blocks: list[Any]) -> list[str]:
    """Slack documents uniqueness per block; we hold the whole message to it (FACTS-interactive §6)."""
    seen: set[str] = set()
    errors = []
    for block in blocks:
        elements = block.get("elements") if isinstance(block, dict) else None
        for element in elements if isinstance(elements, list) else []:
            action_id = element.get("action_id") if isinstance(element, dict) else None
            if action_id is None:
                continue
            if action_id in seen:
                errors.append(f"action_id '{action_id}' already exists [json-pointer:/blocks]")
            seen.add(action_id)
    return errors


def _element_errors(element: Any, ptr: str) -> list[str]:
    if not isinstance(element, dict) or not isinstance(element.get("type"), str):
        return [f"missing required field: type [json-pointer:{ptr}]"]
    errors: list[str] = []
    if len(str(element.get("action_id", ""))) > _MAX_ACTION_ID:
        errors.append(f"must be less than {_MAX_ACTION_ID + 1} characters [json-pointer:{ptr}/action_id]")
    if element["type"] != "button":
        return errors
    text = element.get("text")
    if not isinstance(text, dict) or text.get("type") != "plain_text":
        errors.append(f"must be a plain_text text object [json-pointer:{ptr}/text]")
    errors += _text_errors(text, f"{ptr}/text", _MAX_BUTTON_TEXT)
    value = element.get("value")
    if value is not None and (not isinstance(value, str) or len(value) > _MAX_BUTTON_VALUE):
        errors.append(f"must be less than {_MAX_BUTTON_VALUE + 1} characters [json-pointer:{ptr}/value]")
    if element.get("style") not in (None, "primary", "danger"):
        errors.append(f"must be one of primary, danger [json-pointer:{ptr}/style]")
    confirm = element.get("confirm")
    if confirm is not None:
        errors += _confirm_errors(confirm, f"{ptr}/confirm")
    return errors


def _confirm_errors(confirm: Any, ptr: str) -> list[str]:
    if not isinstance(confirm, dict):
        return [f"must be an object [json-pointer:{ptr}]"]
    errors: list[str] = []
    for field_name, limit in _CONFIRM_LIMITS.items():
        obj = confirm.get(field_name)
        if obj is None:
            errors.append(f"missing required field: {field_name} [json-pointer:{ptr}]")
            continue
        if field_name != "text" and (not isinstance(obj, dict) or obj.get("type") != "plain_text"):
            errors.append(f"must be a plain_text text object [json-pointer:{ptr}/{field_name}]")
        errors += _text_errors(obj, f"{ptr}/{field_name}", limit)
    if confirm.get("style") not in (None, "primary", "danger"):
        errors.append(f"must be one of primary, danger [json-pointer:{ptr}/style]")
    return errors


def _text_errors(obj: Any, ptr: str, limit: int) -> list[str]:
    if obj is None:
        return []
    if not isinstance(obj, dict) or obj.get("type") not in ("plain_text", "mrkdwn"):
        return [f"must be a text object [json-pointer:{ptr}]"]
    text = obj.get("text")
    if not isinstance(text, str) or not text:
        return [f"must be at least 1 character [json-pointer:{ptr}/text]"]
    if len(text) > limit:
        return [f"must be less than {limit + 1} characters [json-pointer:{ptr}/text]"]
    return []


def _resolve_channel(channel: str) -> str:
    # Posting to a user id lands in the bot's DM with them; conversations.open names it the same way.
    return "D" + channel if channel[:1] in ("U", "W") else channel


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.lower() in ("1", "true", "yes")
    return bool(value)


def _default_user(user_id: str, name: str) -> dict[str, Any]:
    return {
        "id": user_id,
        "team_id": TEAM_ID,
        "name": name,
        "real_name": name.title(),
        "deleted": False,
        "is_bot": False,
        "is_admin": False,
        "tz": "Europe/Berlin",
        "tz_offset": 3600,
        "profile": {"display_name": name, "real_name": name.title()},
    }


__all__ = [
    "DEFAULT_APP_TOKEN",
    "DEFAULT_BOT_SCOPES",
    "DEFAULT_BOT_TOKEN",
    "TRIGGER_TTL",
    "FakeSlack",
    "RecordedCall",
    "RecordedDownload",
    "RecordedEphemeral",
    "RecordedMessage",
    "RecordedResponse",
    "RecordedUpdate",
    "RecordedUpload",
    "RecordedView",
    "SlackFault",
]
