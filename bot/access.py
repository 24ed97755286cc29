"""Who may read which job (`FINETUNE_READ_ACCESS`), and what of it they may see. Pure.

The API key sees every job of the organisation, and a job's metadata names the channel and the
person that started it, so without a policy anyone in the workspace could read (and `watch` into a
public channel) a job started in a private channel. Our own store, not the job's metadata, says
which channel a job belongs to: metadata can be written by anyone holding the API key.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # config imports this module before the database layer is worth loading
    from bot.store import Watch


class ReadAccess(StrEnum):
    ORG = "org"  # every job of the OpenAI organisation
    SLACK = "slack"  # only jobs started from Slack (any channel)
    CHANNEL = "channel"  # only jobs started in, or followed by, the channel asking


# Least privilege: a job started in a private channel stays there unless an admin (or its starter)
# brings it elsewhere. Opening up is one variable; finding out a leak is not undoable.
DEFAULT_READ_ACCESS = ReadAccess.CHANNEL

STARTED_BY = "finetune-bot"  # the `started_by` metadata value the bot writes on create
ANOTHER_CHANNEL = "another channel"
HIDDEN = "hidden"


@dataclass(frozen=True)
class Reader:
    user_id: str
    channel_id: str
    is_admin: bool


@dataclass(frozen=True)
class Origin:
    """What our store knows about a job: who started it from Slack and where, and which channels
    follow it (or did, until the job ended)."""

    starter: str | None = None
    starter_channel: str | None = None
    channels: frozenset[str] = frozenset()

    @classmethod
    def from_watches(cls, watches: Iterable[Watch]) -> Origin:
        rows = sorted(watches, key=lambda w: w.id)
        create = next((w for w in rows if w.origin == "create"), None)
        # A channel that unwatched a job gave it up; one whose watch ended with the job still has
        # its announcement and outcome, and may keep reading it.
        channels = frozenset(w.channel_id for w in rows if not (w.end_reason or "").startswith("unwatched"))
        if create is None:
            return cls(channels=channels)
        return cls(starter=create.user_id, starter_channel=create.channel_id, channels=channels)

    @property
    def from_slack(self) -> bool:
        return self.starter is not None


def decided_by_store(policy: ReadAccess, reader: Reader, origin: Origin) -> bool | None:
    """True/False when our store settles it; None when only the job's metadata can (`slack`)."""
    if reader.is_admin or policy is ReadAccess.ORG:
        return True
    if origin.starter == reader.user_id or reader.channel_id in origin.channels:
        return True
    if policy is ReadAccess.SLACK:
        return True if origin.from_slack else None
    return False


def may_read(policy: ReadAccess, reader: Reader, origin: Origin, metadata: Mapping[str, str]) -> bool:
    decided = decided_by_store(policy, reader, origin)
    if decided is not None:
        return decided
    return metadata.get("started_by") == STARTED_BY


def visible_metadata(metadata: Mapping[str, str], reader: Reader) -> dict[str, str]:
    """The metadata with another channel's id, and the user who started it there, hidden. The
    reader's own channel and own user id are theirs to see; admins see everything."""
    shown = dict(metadata)
    if reader.is_admin:
        return shown
    channel = metadata.get("slack_channel")
    here = channel == reader.channel_id
    if channel and not here:
        shown["slack_channel"] = ANOTHER_CHANNEL
    user = metadata.get("slack_user")
    if user and not here and user != reader.user_id:
        shown["slack_user"] = HIDDEN
    return shown
