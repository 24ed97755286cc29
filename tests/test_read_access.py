"""FINETUNE_READ_ACCESS end to end: who may get/events/list/watch which job, what of another
channel a reader may see, and who may unwatch a job's original announcement.

Alice starts jobs in a private channel; Bob asks from a public one (and from Alice's); an admin
sees everything. One bot per policy, each with the fake OpenAI holding three kinds of jobs: one
started from Slack through this bot, one whose metadata says finetune-bot started it (another
install), and one started outside Slack.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.fakes import FakeOpenAI, FakeSlack
from tests.harness import Harness, all_text, start_bot
from tests.test_e2e_notifications import start_job

ALICE, BOB, ADMIN = "UALICE1", "UBOB2", "UADMIN9"
PRIVATE, PUBLIC = "CPRIV1", "CPUB2"
# What another install of the bot wrote into a job's metadata: channel and user of elsewhere.
ELSEWHERE_CHANNEL, ELSEWHERE_USER = "GSECRET7", "USECRET7"
NO_SUCH_JOB = "ftjob-doesnotexist0"


@dataclass
class World:
    h: Harness
    slack_job: str  # started by Alice in PRIVATE through this bot
    tagged_job: str  # metadata says started_by=finetune-bot, elsewhere; not in this bot's store
    outside_job: str  # started outside Slack


@pytest.fixture(scope="module")
def fakes() -> Iterator[tuple[FakeOpenAI, FakeSlack]]:
    with FakeOpenAI() as openai, FakeSlack() as slack:
        yield openai, slack


def _world(fakes: tuple[FakeOpenAI, FakeSlack], tmp: pytest.TempPathFactory, policy: str) -> Iterator[World]:
    openai, slack = fakes
    # "" is unset: the bot's own default, which the `channel` world checks it is.
    bot = start_bot(
        openai, slack, tmp.mktemp(policy or "default"), FINETUNE_READ_ACCESS=policy, FINETUNE_ADMINS=ADMIN
    )
    h = Harness(bot, openai, slack)
    try:
        slack_job, _ = start_job(h, user_id=ALICE, channel_id=PRIVATE)
        tagged = openai.add_job(
            metadata={
                "started_by": "finetune-bot",
                "slack_channel": ELSEWHERE_CHANNEL,
                "slack_user": ELSEWHERE_USER,
            }
        )
        outside = openai.add_job()
        yield World(h, slack_job, tagged["id"], outside["id"])
    finally:
        assert bot.stop() == 0, bot.logs
    h.assert_no_secrets()


@pytest.fixture(scope="module")
def channel(fakes: tuple[FakeOpenAI, FakeSlack], tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    yield from _world(fakes, tmp_path_factory, "")


@pytest.fixture(scope="module")
def slack(fakes: tuple[FakeOpenAI, FakeSlack], tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    yield from _world(fakes, tmp_path_factory, "slack")


@pytest.fixture(scope="module")
def org(fakes: tuple[FakeOpenAI, FakeSlack], tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    yield from _world(fakes, tmp_path_factory, "org")


def ask(w: World, text: str, user: str, channel: str) -> str:
    _, key = w.h.command(text, user_id=user, channel_id=channel)
    return all_text(w.h.reply(key))


def not_found(w: World, text: str, job_id: str) -> str:
    """The reply for a job that does not exist, with `job_id` in place of the missing one's id:
    a hidden job must be answered exactly like this."""
    return ask(w, text.replace(job_id, NO_SUCH_JOB), BOB, PUBLIC).replace(NO_SUCH_JOB, job_id)


def assert_hidden(w: World, text: str, job_id: str, user: str = BOB, where: str = PUBLIC) -> None:
    reply = ask(w, text, user, where)
    assert reply == not_found(w, text, job_id)
    assert "No fine-tuning job" in reply


def shown(w: World, job_id: str, user: str, where: str) -> str:
    reply = ask(w, f"get {job_id}", user, where)
    assert f"Fine-tuning job {job_id}" in reply, reply
    return reply


def metadata_value(reply: str, key: str) -> str:
    match = re.search(rf"`{key}` (\S+(?: \S+)?)\n?", reply)
    assert match, reply
    return match.group(1).split("\n")[0]


# ---------------------------------------------------------------------------------------------- channel


def test_channel_is_the_default_and_hides_other_channels_jobs(channel: World) -> None:
    w = channel
    calls = len(w.h.openai.requests_to(rf"^/fine_tuning/jobs/{w.slack_job}(/.*)?$"))
    for command in ("get", "events", "cancel"):
        assert_hidden(w, f"{command} {w.slack_job}", w.slack_job)
    # Refused from our own records, before asking OpenAI anything about the job.
    assert len(w.h.openai.requests_to(rf"^/fine_tuning/jobs/{w.slack_job}(/.*)?$")) == calls
    for job in (w.tagged_job, w.outside_job):
        assert_hidden(w, f"get {job}", job, user=ALICE, where=PRIVATE)


def test_channel_policy_shows_a_job_to_its_channel_its_starter_and_admins(channel: World) -> None:
    w = channel
    here = shown(w, w.slack_job, BOB, PRIVATE)  # another member of the channel it started in
    assert metadata_value(here, "slack_channel") == PRIVATE and metadata_value(here, "slack_user") == ALICE
    assert "Events of" in ask(w, f"events {w.slack_job}", BOB, PRIVATE)
    mine = shown(w, w.slack_job, ALICE, PUBLIC)  # its starter, from elsewhere
    assert PRIVATE not in mine and metadata_value(mine, "slack_channel") == "another channel"
    admin = shown(w, w.outside_job, ADMIN, PUBLIC)
    assert "Fine-tuning job" in admin
    assert metadata_value(shown(w, w.tagged_job, ADMIN, PUBLIC), "slack_channel") == ELSEWHERE_CHANNEL


def test_channel_policy_list_counts_hidden_jobs_without_naming_them(channel: World) -> None:
    w = channel
    public = ask(w, "list limit=100", BOB, PUBLIC)
    for job in (w.slack_job, w.tagged_job, w.outside_job):
        assert job not in public
    assert "No fine-tuning jobs you can see here" in public and "not shown here" in public
    private = ask(w, "list limit=100", BOB, PRIVATE)
    assert w.slack_job in private and w.outside_job not in private and "not shown here" in private
    admin = ask(w, "list limit=100", ADMIN, PUBLIC)
    assert all(job in admin for job in (w.slack_job, w.tagged_job, w.outside_job))
    assert "not shown here" not in admin


def test_watch_of_a_hidden_job_is_refused_like_a_missing_one(channel: World) -> None:
    w = channel
    before = len(w.h.slack.messages_in(PUBLIC))
    assert_hidden(w, f"watch {w.slack_job}", w.slack_job)
    assert_hidden(w, f"watch {w.outside_job}", w.outside_job)
    # Positive control in the same channel: an admin may bring a job here, and it is posted.
    response, _ = w.h.command(f"watch {w.outside_job}", user_id=ADMIN, channel_id=PUBLIC)
    assert response.status_code == 200
    w.h.slack.wait_for(lambda s: len(s.messages_in(PUBLIC)) > before)
    [posted] = w.h.slack.messages_in(PUBLIC)[before:]
    assert w.outside_job in all_text({"t": posted.text, "b": posted.blocks})
    assert w.slack_job not in repr(w.h.slack.messages_in(PUBLIC))
    # Now that this channel follows it, its members may read it.
    shown(w, w.outside_job, BOB, PUBLIC)


# ---------------------------------------------------------------------------------------------- slack


def test_slack_policy_shows_slack_jobs_but_not_where_they_came_from(slack: World) -> None:
    w = slack
    for job in (w.slack_job, w.tagged_job):
        reply = shown(w, job, BOB, PUBLIC)
        for secret in (PRIVATE, ALICE, ELSEWHERE_CHANNEL, ELSEWHERE_USER):
            assert secret not in reply
        assert metadata_value(reply, "slack_channel") == "another channel"
        assert metadata_value(reply, "slack_user") == "hidden"
    assert "Events of" in ask(w, f"events {w.tagged_job}", BOB, PUBLIC)
    for command in ("get", "events", "watch", "cancel"):
        assert_hidden(w, f"{command} {w.outside_job}", w.outside_job)
    assert w.h.openai.requests_to(rf"^/fine_tuning/jobs/{w.outside_job}/(events|cancel)$") == []


def test_slack_policy_list(slack: World) -> None:
    w = slack
    reply = ask(w, "list limit=100", BOB, PUBLIC)
    assert w.slack_job in reply and w.tagged_job in reply and w.outside_job not in reply
    assert "only jobs started from Slack are shown" in reply
    assert ELSEWHERE_CHANNEL not in reply and PRIVATE not in reply


def test_a_cancel_refusal_names_the_starter_only_in_their_channel(slack: World) -> None:
    w = slack
    elsewhere = ask(w, f"cancel {w.slack_job}", BOB, PUBLIC)
    assert "Sorry" in elsewhere and ALICE not in elsewhere
    here = ask(w, f"cancel {w.slack_job}", BOB, PRIVATE)
    assert "Sorry" in here and f"<@{ALICE}>" in here
    assert w.h.openai.requests_to(rf"^/fine_tuning/jobs/{w.slack_job}/cancel$", "POST") == []


# ---------------------------------------------------------------------------------------------- org


def test_org_policy_shows_every_job_but_hides_other_channels_ids(org: World) -> None:
    w = org
    shown(w, w.outside_job, BOB, PUBLIC)
    reply = shown(w, w.slack_job, BOB, PUBLIC)
    assert PRIVATE not in reply and ALICE not in reply
    listed = ask(w, "list limit=100", BOB, PUBLIC)
    assert all(job in listed for job in (w.slack_job, w.tagged_job, w.outside_job))
    assert "not shown here" not in listed


# ---------------------------------------------------------------------------------------------- unwatch


def following(w: World, channel_id: str) -> str:
    return ask(w, "watch", BOB, channel_id)


def test_only_the_starter_or_an_admin_may_unwatch_the_announcement(channel: World) -> None:
    w = channel
    job_id, _ = start_job(w.h, user_id=ALICE, channel_id=PRIVATE)
    refused = ask(w, f"unwatch {job_id}", BOB, PRIVATE)
    assert "Sorry" in refused and f"<@{ALICE}>" in refused
    assert job_id in following(w, PRIVATE)
    assert "no longer follows" in ask(w, f"unwatch {job_id}", ALICE, PRIVATE)
    assert job_id not in following(w, PRIVATE)

    other, _ = start_job(w.h, user_id=ALICE, channel_id=PRIVATE)
    assert "no longer follows" in ask(w, f"unwatch {other}", ADMIN, PRIVATE)
    assert other not in following(w, PRIVATE)

    # A channel's own `watch` (not the announcement) anyone in that channel may end.
    third, _ = start_job(w.h, user_id=ALICE, channel_id=PRIVATE)
    before = len(w.h.slack.messages_in("CTEAM3"))
    w.h.command(f"watch {third}", user_id=ALICE, channel_id="CTEAM3")  # the starter brings it there
    w.h.slack.wait_for(lambda s: len(s.messages_in("CTEAM3")) > before)
    assert third in following(w, "CTEAM3")
    assert "no longer follows" in ask(w, f"unwatch {third}", BOB, "CTEAM3")
    assert third not in following(w, "CTEAM3")
    assert third in following(w, PRIVATE)  # the original announcement still follows it


# ---------------------------------------------------------------------------------------------- config


def test_the_setting_is_checked_and_defaults_to_channel() -> None:
    from bot.access import ReadAccess
    from bot.config import Settings, load_settings

    base = {"SLACK_BOT_TOKEN": "xoxb-1", "SLACK_SIGNING_SECRET": "s" * 10, "OPENAI_API_KEY": "sk-1"}
    default = load_settings(base)
    assert isinstance(default, Settings) and default.read_access is ReadAccess.CHANNEL
    chosen = load_settings({**base, "FINETUNE_READ_ACCESS": " Slack "})
    assert isinstance(chosen, Settings) and chosen.read_access is ReadAccess.SLACK
    problems = load_settings({**base, "FINETUNE_READ_ACCESS": "everyone"})
    assert isinstance(problems, list)
    assert any(p.startswith("FINETUNE_READ_ACCESS must be org") and "'everyone'" in p for p in problems)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_jobs_origin_comes_from_the_store(backend: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    """`create` names the starter and their channel; `watch` adds a channel; an unwatched channel
    gives the job up (SQLite, and PostgreSQL for replicas)."""
    from contextlib import ExitStack

    from bot.access import Origin
    from bot.store import Store
    from tests.db import fresh_postgres_database, require_postgres

    with ExitStack() as stack:
        if backend == "sqlite":
            url = f"sqlite:///{tmp_path_factory.mktemp('origin') / 'bot.db'}"
        else:
            require_postgres()
            url = stack.enter_context(fresh_postgres_database())
        store = Store.from_url(url)
        stack.callback(store.close)
        common = {"team_id": "T1", "announcement_ts": None, "job_created_at": None, "status": "running"}
        store.add_watch(job_id="ftjob-a", channel_id=PRIVATE, user_id=ALICE, origin="create", **common)
        store.add_watch(job_id="ftjob-a", channel_id=PUBLIC, user_id=BOB, origin="watch", **common)
        left, _ = store.add_watch(
            job_id="ftjob-a", channel_id="CLEFT4", user_id=BOB, origin="watch", **common
        )
        store.end_watch(left.id, f"unwatched by {BOB}")
        store.add_watch(job_id="ftjob-b", channel_id=PUBLIC, user_id=BOB, origin="watch", **common)
        watches = store.watches_for_jobs(["ftjob-a", "ftjob-c"])
        assert {w.job_id for w in watches} == {"ftjob-a"}
        origin = Origin.from_watches(watches)
        assert origin == Origin(starter=ALICE, starter_channel=PRIVATE, channels=frozenset({PRIVATE, PUBLIC}))
        assert Origin.from_watches(store.watches_for_jobs(["ftjob-b"])).starter is None
        assert store.watches_for_jobs([]) == []
