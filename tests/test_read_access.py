"""FINETUNE_READ_ACCESS: the setting, where a job's origin comes from, and, end to end, a served
process with the setting unset hiding another channel's job.

Alice starts jobs in a private channel; Bob asks from a public one. Every policy (who may
get/events/list/watch which job, what of another channel a reader may see, who may unwatch a
job's original announcement) on the production listeners and runner: tests/test_inprocess_read_access.py.
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
