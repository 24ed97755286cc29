"""TrainingFlow's edges that a fake Slack cannot show (where the bot token may be sent), and what
a Start's create came to, from its pending create."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from bot.modal import SlackFileRef
from bot.pending import KEEP_CLOSED
from bot.render_training import CREATE_NEVER_CONFIRMED, CREATE_NEVER_SENT, CREATE_REFUSED
from bot.store import PendingCreate
from bot.training_flow import (
    CREATE_PATIENCE_SECONDS,
    CreateOutcome,
    FileProblem,
    TrainingFlow,
    create_outcome,
)


class _Slack:
    def __init__(self, url: str) -> None:
        self.url = url

    async def files_info(self, *, file: str) -> dict[str, Any]:
        return {"ok": True, "file": {"id": file, "size": 10, "url_private_download": self.url}}


def _flow(url: str, seen: list[httpx.Request]) -> TrainingFlow:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=b'{"messages": []}\n')

    return TrainingFlow(
        None,  # type: ignore[arg-type]  # not reached
        None,  # type: ignore[arg-type]
        _Slack(url),  # type: ignore[arg-type]
        bot_token="xoxb-secret-token",
        run_create=None,  # type: ignore[arg-type]
        prices={},
        max_upload_bytes=1000,
        http=httpx.AsyncClient(transport=httpx.MockTransport(handler)),
        download_hosts=frozenset({"files.slack.com"}),
    )


async def test_the_bot_token_goes_only_to_slacks_file_host() -> None:
    seen: list[httpx.Request] = []
    flow = _flow("https://evil.example/files/F1/train.jsonl", seen)
    with pytest.raises(FileProblem, match="unexpected"):
        async for _ in flow._read_slack_file(SlackFileRef("F1", "train.jsonl", 10, "jsonl")):
            pass
    assert seen == []
    good = _flow("https://files.slack.com/files-pri/T1-F1/download/train.jsonl", seen)
    chunks = [c async for c in good._read_slack_file(SlackFileRef("F1", "train.jsonl", 10, "jsonl"))]
    assert b"".join(chunks) == b'{"messages": []}\n'
    [request] = seen
    assert request.headers["authorization"] == "Bearer xoxb-secret-token"
    await flow.close()
    await good.close()


def _pending(state: str, job_id: str | None = None) -> PendingCreate:
    return PendingCreate(
        trigger_id="t1",
        team_id="T1",
        channel_id="C1",
        user_id="U1",
        response_url=None,
        params={},
        state=state,
        job_id=job_id,
        watch_id=None,
        owner=None,
        created_at=0.0,
        updated_at=0.0,
    )


LONG_AGO = KEEP_CLOSED + 1


@pytest.mark.parametrize(
    ("pending", "returned", "waited", "outcome"),
    [
        (_pending("created", "ftjob-1"), False, 0.0, CreateOutcome("ftjob-1")),
        (_pending("announced", "ftjob-1"), True, 0.0, CreateOutcome("ftjob-1")),
        (_pending("failed"), True, 0.0, CreateOutcome(None, CREATE_REFUSED)),
        (_pending("abandoned"), False, 900.0, CreateOutcome(None, CREATE_NEVER_CONFIRMED)),
        # OpenAI's answer lost, or the create half-done: the reconciler has not concluded yet.
        (_pending("unconfirmed"), True, 900.0, None),
        (_pending("pending"), False, 900.0, None),
        # No pending create: it never began (the click's create returned), or may still begin.
        (None, True, 0.0, CreateOutcome(None, CREATE_NEVER_SENT)),
        (None, False, CREATE_PATIENCE_SECONDS - 1, None),
        (None, False, CREATE_PATIENCE_SECONDS + 1, CreateOutcome(None, CREATE_NEVER_SENT)),
        # Older than closed creates are kept: its row may have been deleted, so nothing is known.
        (None, False, LONG_AGO, None),
    ],
)
def test_what_a_starts_create_came_to(
    pending: PendingCreate | None, returned: bool, waited: float, outcome: CreateOutcome | None
) -> None:
    assert create_outcome(pending, returned=returned, waited=waited) == outcome
