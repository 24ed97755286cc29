"""End to end: `python -m bot` in HTTP mode, Slack-signed requests in, real HTTP to both fakes.

What needs the served process: a command answered by it, the create announcement with the
organization and project headers the process' settings give, the ack leaving before OpenAI has
answered, and the webhook route existing only when configured. Every subcommand, the signature
check, bad input and OpenAI's errors: tests/test_inprocess_commands.py, on a fake clock.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.harness import Harness, all_text, fresh, module_bot


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    workdir = tmp_path_factory.mktemp("bot")
    with module_bot(workdir, OPENAI_ORGANIZATION="org-fake", OPENAI_PROJECT="proj_fake") as harness:
        yield harness


@pytest.fixture
def h(harness: Harness) -> Iterator[Harness]:
    yield from fresh(harness)


# -- each subcommand ------------------------------------------------------------------------------


def test_help_is_answered_in_the_ack(h: Harness) -> None:
    response, _ = h.command("help")
    assert response.status_code == 200
    body = response.json()
    assert body["response_type"] == "ephemeral"
    text = all_text(body)
    for sub in ("create", "list", "get", "events", "cancel"):
        assert sub in text
    assert h.openai.requests == []


def test_create_announces_in_the_channel(h: Harness) -> None:
    response, key = h.command("create file-abc123 suffix=support epochs=3 seed=7", user_id="U42")
    assert response.status_code == 200
    h.slack.wait_for(lambda s: s.messages)
    [request] = h.openai.requests_to(r"^/fine_tuning/jobs$", "POST")
    assert request.json["training_file"] == "file-abc123"
    assert request.json["model"] == "gpt-4o-mini-2024-07-18"
    assert request.json["suffix"] == "support"
    assert request.json["seed"] == 7
    assert request.json["method"] == {
        "type": "supervised",
        "supervised": {"hyperparameters": {"n_epochs": 3}},
    }
    assert request.json["metadata"]["slack_user"] == "U42"
    assert request.headers["openai-organization"] == "org-fake"
    assert request.headers["openai-project"] == "proj_fake"
    [message] = h.slack.messages
    job_id = next(iter(h.openai.jobs))
    assert message.channel == "C123"
    text = all_text({"text": message.text, "blocks": message.blocks})
    assert job_id in text and "<@U42>" in text and "file-abc123" in text
    # The announcement says it all: no ephemeral duplicate, even once a later command is answered.
    h.control()
    assert h.slack.responses_for(key) == []


def test_slow_openai_still_acked_in_time(h: Harness) -> None:
    h.openai.latency = 4.0
    try:
        response, key = h.command("list")
        assert response.status_code == 200
        # The ack is back; the command's request then reaches OpenAI and is still unanswered, so
        # the ack did not wait for it (without seeing the request in flight, "nothing answered
        # yet" would hold trivially). How fast acks are is measured by `python -m bench`, not here.
        h.openai.wait_for(lambda f: f.requests_to(r"^/fine_tuning/jobs$", "GET"), timeout=5)
        assert all(r.status is None for r in h.openai.requests), h.openai.describe()
        assert h.slack.responses_for(key) == []
        assert "No fine-tuning jobs" in all_text(h.reply(key, timeout=15))
    finally:
        h.openai.latency = 0.0


def test_webhook_endpoint_exists_only_when_configured(h: Harness) -> None:
    response = httpx.post(f"{h.bot.url}/openai/webhook", content="{}")
    assert response.status_code == 404
