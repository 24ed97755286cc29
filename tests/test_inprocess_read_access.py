"""FINETUNE_READ_ACCESS on the production listeners and runner, in this test's event loop
(tests/inprocess.py): who may get/events/list/watch which job, what of another channel a reader
may see, and who may unwatch a job's original announcement.

Alice starts jobs in a private channel; Bob asks from a public one (and from Alice's); an admin
sees everything. One bot per policy, each with the fake OpenAI holding three kinds of jobs: one
started from Slack through this bot, one whose metadata says finetune-bot started it (another
install), and one started outside Slack. That a served process with the setting unset hides
another channel's jobs is tests/test_read_access.py.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fakes import FakeOpenAI, FakeSlack
from tests.harness import all_text
from tests.inprocess import InProcessBot
from tests.test_inprocess_notifications import assert_no_secrets, start_job
from tests.test_read_access import (
    ADMIN,
    ALICE,
    BOB,
    ELSEWHERE_CHANNEL,
    ELSEWHERE_USER,
    NO_SUCH_JOB,
    PRIVATE,
    PUBLIC,
    metadata_value,
)


@dataclass
class World:
    bot: InProcessBot
    slack_job: str  # started by Alice in PRIVATE through this bot
    tagged_job: str  # metadata says started_by=finetune-bot, elsewhere; not in this bot's store
    outside_job: str  # started outside Slack


MakeWorld = Callable[[str], Awaitable[World]]


@pytest.fixture
async def make_world(
    fake_openai: FakeOpenAI, fake_slack: FakeSlack, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> AsyncIterator[MakeWorld]:
    caplog.set_level(logging.INFO)
    bots: list[InProcessBot] = []

    async def make(policy: str) -> World:
        # "" is unset: the bot's own default, which the `channel` world checks it is.
        bot = InProcessBot(
            fake_openai, fake_slack, tmp_path, FINETUNE_READ_ACCESS=policy, FINETUNE_ADMINS=ADMIN
        )
        bots.append(bot)
        slack_job, _ = await start_job(bot, user_id=ALICE, channel_id=PRIVATE)
        tagged = fake_openai.add_job(
            metadata={
                "started_by": "finetune-bot",
                "slack_channel": ELSEWHERE_CHANNEL,
                "slack_user": ELSEWHERE_USER,
            }
        )
        outside = fake_openai.add_job()
        return World(bot, slack_job, tagged["id"], outside["id"])

    yield make
    for bot in bots:
        await bot.stop()
        assert_no_secrets(bot, caplog)


@pytest.fixture
async def channel(make_world: MakeWorld) -> World:
    return await make_world("")


@pytest.fixture
async def slack(make_world: MakeWorld) -> World:
    return await make_world("slack")


@pytest.fixture
async def org(make_world: MakeWorld) -> World:
    return await make_world("org")


async def ask(w: World, text: str, user: str, channel: str) -> str:
    _, key = await w.bot.command(text, user_id=user, channel_id=channel)
    return all_text(await w.bot.reply(key))


async def not_found(w: World, text: str, job_id: str) -> str:
    """The reply for a job that does not exist, with `job_id` in place of the missing one's id:
    a hidden job must be answered exactly like this."""
    return (await ask(w, text.replace(job_id, NO_SUCH_JOB), BOB, PUBLIC)).replace(NO_SUCH_JOB, job_id)


async def assert_hidden(w: World, text: str, job_id: str, user: str = BOB, where: str = PUBLIC) -> None:
    reply = await ask(w, text, user, where)
    assert reply == await not_found(w, text, job_id)
    assert "No fine-tuning job" in reply


async def shown(w: World, job_id: str, user: str, where: str) -> str:
    reply = await ask(w, f"get {job_id}", user, where)
    assert f"Fine-tuning job {job_id}" in reply, reply
    return reply


# ---------------------------------------------------------------------------------------------- channel


async def test_channel_is_the_default_and_hides_other_channels_jobs(channel: World) -> None:
    w = channel
    calls = len(w.bot.openai.requests_to(rf"^/fine_tuning/jobs/{w.slack_job}(/.*)?$"))
    for command in ("get", "events", "cancel"):
        await assert_hidden(w, f"{command} {w.slack_job}", w.slack_job)
    # Refused from our own records, before asking OpenAI anything about the job.
    assert len(w.bot.openai.requests_to(rf"^/fine_tuning/jobs/{w.slack_job}(/.*)?$")) == calls
    for job in (w.tagged_job, w.outside_job):
        await assert_hidden(w, f"get {job}", job, user=ALICE, where=PRIVATE)


async def test_channel_policy_shows_a_job_to_its_channel_its_starter_and_admins(channel: World) -> None:
    w = channel
    here = await shown(w, w.slack_job, BOB, PRIVATE)  # another member of the channel it started in
    assert metadata_value(here, "slack_channel") == PRIVATE and metadata_value(here, "slack_user") == ALICE
    assert "Events of" in await ask(w, f"events {w.slack_job}", BOB, PRIVATE)
    mine = await shown(w, w.slack_job, ALICE, PUBLIC)  # its starter, from elsewhere
    assert PRIVATE not in mine and metadata_value(mine, "slack_channel") == "another channel"
    admin = await shown(w, w.outside_job, ADMIN, PUBLIC)
    assert "Fine-tuning job" in admin
    tagged = await shown(w, w.tagged_job, ADMIN, PUBLIC)
    assert metadata_value(tagged, "slack_channel") == ELSEWHERE_CHANNEL


async def test_channel_policy_list_counts_hidden_jobs_without_naming_them(channel: World) -> None:
    w = channel
    public = await ask(w, "list limit=100", BOB, PUBLIC)
    for job in (w.slack_job, w.tagged_job, w.outside_job):
        assert job not in public
    assert "No fine-tuning jobs you can see here" in public and "not shown here" in public
    private = await ask(w, "list limit=100", BOB, PRIVATE)
    assert w.slack_job in private and w.outside_job not in private and "not shown here" in private
    admin = await ask(w, "list limit=100", ADMIN, PUBLIC)
    assert all(job in admin for job in (w.slack_job, w.tagged_job, w.outside_job))
    assert "not shown here" not in admin


async def test_watch_of_a_hidden_job_is_refused_like_a_missing_one(channel: World) -> None:
    w = channel
    before = len(w.bot.slack.messages_in(PUBLIC))
    await assert_hidden(w, f"watch {w.slack_job}", w.slack_job)
    await assert_hidden(w, f"watch {w.outside_job}", w.outside_job)
    # Positive control in the same channel: an admin may bring a job here, and it is posted.
    response, _ = await w.bot.command(f"watch {w.outside_job}", user_id=ADMIN, channel_id=PUBLIC)
    assert response.status_code == 200
    await w.bot.settle()
    [posted] = w.bot.slack.messages_in(PUBLIC)[before:]
    assert w.outside_job in all_text({"t": posted.text, "b": posted.blocks})
    assert w.slack_job not in repr(w.bot.slack.messages_in(PUBLIC))
    # Now that this channel follows it, its members may read it.
    await shown(w, w.outside_job, BOB, PUBLIC)


# ---------------------------------------------------------------------------------------------- slack


async def test_slack_policy_shows_slack_jobs_but_not_where_they_came_from(slack: World) -> None:
    w = slack
    for job in (w.slack_job, w.tagged_job):
        reply = await shown(w, job, BOB, PUBLIC)
        for secret in (PRIVATE, ALICE, ELSEWHERE_CHANNEL, ELSEWHERE_USER):
            assert secret not in reply
        assert metadata_value(reply, "slack_channel") == "another channel"
        assert metadata_value(reply, "slack_user") == "hidden"
    assert "Events of" in await ask(w, f"events {w.tagged_job}", BOB, PUBLIC)
    for command in ("get", "events", "watch", "cancel"):
        await assert_hidden(w, f"{command} {w.outside_job}", w.outside_job)
    assert w.bot.openai.requests_to(rf"^/fine_tuning/jobs/{w.outside_job}/(events|cancel)$") == []


async def test_slack_policy_list(slack: World) -> None:
    w = slack
    reply = await ask(w, "list limit=100", BOB, PUBLIC)
    assert w.slack_job in reply and w.tagged_job in reply and w.outside_job not in reply
    assert "only jobs started from Slack are shown" in reply
    assert ELSEWHERE_CHANNEL not in reply and PRIVATE not in reply


async def test_a_cancel_refusal_names_the_starter_only_in_their_channel(slack: World) -> None:
    w = slack
    elsewhere = await ask(w, f"cancel {w.slack_job}", BOB, PUBLIC)
    assert "Sorry" in elsewhere and ALICE not in elsewhere
    here = await ask(w, f"cancel {w.slack_job}", BOB, PRIVATE)
    assert "Sorry" in here and f"<@{ALICE}>" in here
    assert w.bot.openai.requests_to(rf"^/fine_tuning/jobs/{w.slack_job}/cancel$", "POST") == []


# ---------------------------------------------------------------------------------------------- org


async def test_org_policy_shows_every_job_but_hides_other_channels_ids(org: World) -> None:
    w = org
    await shown(w, w.outside_job, BOB, PUBLIC)
    reply = await shown(w, w.slack_job, BOB, PUBLIC)
    assert PRIVATE not in reply and ALICE not in reply
    listed = await ask(w, "list limit=100", BOB, PUBLIC)
    assert all(job in listed for job in (w.slack_job, w.tagged_job, w.outside_job))
    assert "not shown here" not in listed


# ---------------------------------------------------------------------------------------------- unwatch


async def following(w: World, channel_id: str) -> str:
    return await ask(w, "watch", BOB, channel_id)


async def test_only_the_starter_or_an_admin_may_unwatch_the_announcement(channel: World) -> None:
    w = channel
    job_id, _ = await start_job(w.bot, user_id=ALICE, channel_id=PRIVATE)
    refused = await ask(w, f"unwatch {job_id}", BOB, PRIVATE)
    assert "Sorry" in refused and f"<@{ALICE}>" in refused
    assert job_id in await following(w, PRIVATE)
    assert "no longer follows" in await ask(w, f"unwatch {job_id}", ALICE, PRIVATE)
    assert job_id not in await following(w, PRIVATE)

    other, _ = await start_job(w.bot, user_id=ALICE, channel_id=PRIVATE)
    assert "no longer follows" in await ask(w, f"unwatch {other}", ADMIN, PRIVATE)
    assert other not in await following(w, PRIVATE)

    # A channel's own `watch` (not the announcement) anyone in that channel may end.
    third, _ = await start_job(w.bot, user_id=ALICE, channel_id=PRIVATE)
    before = len(w.bot.slack.messages_in("CTEAM3"))
    await w.bot.command(f"watch {third}", user_id=ALICE, channel_id="CTEAM3")  # the starter brings it there
    await w.bot.settle()
    assert len(w.bot.slack.messages_in("CTEAM3")) > before
    assert third in await following(w, "CTEAM3")
    assert "no longer follows" in await ask(w, f"unwatch {third}", BOB, "CTEAM3")
    assert third not in await following(w, "CTEAM3")
    assert third in await following(w, PRIVATE)  # the original announcement still follows it
