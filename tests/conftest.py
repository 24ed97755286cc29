"""Shared pytest fixtures: a fresh fake OpenAI and fake Slack per test (each starts in a few ms)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# tests/ has no __init__.py, so pytest puts tests/ (not the repo root) on sys.path. Adding the root
# keeps `from tests.fakes import ...` working however pytest is launched (pytest, python -m pytest).
_REPO_ROOT = str(Path(__file__).resolve().parents[1])
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)

from tests import self_contained  # noqa: E402 - needs the sys.path entry above
from tests.bot_process import BotProcess  # noqa: E402 - needs the sys.path entry above
from tests.db import fresh_postgres_database  # noqa: E402 - needs the sys.path entry above
from tests.fakes import FakeOpenAI, FakeSlack  # noqa: E402 - needs the sys.path entry above

self_contained.install()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A new, empty database for one test, once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'bot.db'}"
    else:
        with fresh_postgres_database() as url:
            yield url


@pytest.fixture(scope="session", autouse=True)
def nothing_read_outside_the_repository() -> Iterator[None]:
    """After the whole session: the suite opened nothing beside the repository."""
    yield
    outside = self_contained.paths_opened_outside()
    assert outside == [], f"the tests read outside the repository: {outside[:5]}"


@pytest.fixture(scope="session", autouse=True)
def no_secret_ever_leaks() -> Iterator[None]:
    """After the whole session: no configured secret appears in anything any bot logged, nor in
    anything that reached Slack (messages, replies, API parameters)."""
    yield
    secrets = {secret for bot in BotProcess.started for secret in bot.secrets()}
    found: list[str] = []
    lines = 0
    for bot in BotProcess.started:
        log = bot.logs
        lines += log.count("\n")
        found += [f"{bot.log_path.name}: {secret[:8]}…" for secret in bot.secrets() if secret in log]
    sent = [text for slack in FakeSlack.instances for text in slack.seen_text]
    for text in sent:
        found += [f"sent to Slack: {secret[:8]}…" for secret in secrets if secret in text]
    print(
        f"\nsecret scan: {len(secrets)} secrets, {len(BotProcess.started)} bot processes, {lines} log lines, "
        f"{len(sent)} Slack requests scanned; {len(found)} occurrences"
    )
    assert found == [], found


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAI]:
    """A running FakeOpenAI; point the bot at ``fake_openai.base_url`` with ``fake_openai.api_key``.

    Fails the test on teardown if the fake ever produced a response that violates the spec.
    """
    with FakeOpenAI() as fake:
        yield fake
        assert fake.schema_errors == [], "FakeOpenAI answered with spec-invalid responses"


@pytest.fixture
def fake_slack() -> Iterator[FakeSlack]:
    """A running FakeSlack; use ``fake_slack.api_url`` as slack_sdk's base_url."""
    with FakeSlack() as fake:
        yield fake
