"""TrainingFlow's edges that a fake Slack cannot show: where the bot token may be sent."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from bot.modal import SlackFileRef
from bot.training_flow import FileProblem, TrainingFlow


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
