"""A database the bot cannot use at start: one `DATABASE_URL: …` line, exit 2, never a traceback or
the password; a database that is not up yet is waited for; SQLite files are private (0600)."""

from __future__ import annotations

import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa

from bot.config import Settings, database_url_problem, load_settings
from bot.database import DatabaseProblem, Diagnosis, Target, diagnose, open_database, problem_line
from bot.store import SCHEMA_VERSION
from tests.bot_process import BOT_TOKEN, OPENAI_KEY, REPO, SIGNING_SECRET, BotProcess, free_port, run_bot_once
from tests.db import PG_ADMIN_URL, fresh_postgres_database, require_postgres
from tests.fakes import FakeOpenAI, FakeSlack
from tests.harness import bot_env

PASSWORD = "pw-db-startup-6c1e9f"
PG_HOST = "127.0.0.1:5432"
RETRY_LINE = "database not ready"


def env_with(slack: FakeSlack, database_url: str, **extra: str) -> dict[str, str]:
    return {
        "SLACK_BOT_TOKEN": BOT_TOKEN,
        "SLACK_SIGNING_SECRET": SIGNING_SECRET,
        "SLACK_API_URL": slack.api_url,
        "OPENAI_API_KEY": OPENAI_KEY,
        # OpenAI is not called at start; a closed port makes sure nothing leaves the machine anyway.
        "OPENAI_BASE_URL": f"http://127.0.0.1:{free_port()}/v1",
        "DATABASE_URL": database_url,
        "LOG_LEVEL": "INFO",
        **extra,
    }


def assert_one_database_line(result: subprocess.CompletedProcess[str], *expected: str) -> str:
    """Exit 2, exactly one problem line, naming DATABASE_URL and saying `expected`; no traceback,
    no password. Returns the line."""
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "Traceback" not in output, output
    assert PASSWORD not in output
    problems = [line for line in result.stderr.splitlines() if line.startswith("  - ")]
    assert len(problems) == 1, output
    line = problems[0]
    assert line.startswith("  - DATABASE_URL"), output
    for text in expected:
        assert text in line, output
    return line


def unprivileged_prefix() -> list[str]:
    """As root, file permissions do not apply; drop the capabilities that bypass them, so an
    unwritable folder or a read-only file is what it is for the bot."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: file permissions cannot be enforced")
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search,-fowner"]


def run_unprivileged(env: dict[str, str], workdir: Path) -> subprocess.CompletedProcess[str]:
    """run_bot_once, with the bot unable to override file permissions."""
    return subprocess.run(
        [*unprivileged_prefix(), sys.executable, "-m", "bot"],
        cwd=workdir,
        env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(REPO), **env},
        capture_output=True,
        text=True,
        timeout=20,
    )


# -- PostgreSQL (and nothing at all) --------------------------------------------------------------


def test_nothing_listening_is_retried_then_one_line(fake_slack: FakeSlack, tmp_path: Path) -> None:
    port = free_port()
    url = f"postgresql://postgres:{PASSWORD}@127.0.0.1:{port}/test"
    # run_bot_once's 20 s timeout is the safety deadline: the bot must give up after ~2 s.
    result = run_bot_once(env_with(fake_slack, url, DATABASE_WAIT_SECONDS="2"), tmp_path)
    assert_one_database_line(result, f"nothing answers at 127.0.0.1:{port}", "is PostgreSQL running?")
    assert result.stderr.count(RETRY_LINE) >= 2, result.stderr  # it did wait, retrying
    assert "DATABASE_WAIT_SECONDS" in result.stderr


def test_port_that_is_not_a_number(fake_slack: FakeSlack, tmp_path: Path) -> None:
    url = f"postgresql://postgres:{PASSWORD}@127.0.0.1:54x32/test"
    result = run_bot_once(env_with(fake_slack, url), tmp_path)
    assert_one_database_line(result, "port '54x32' is not a number")


def test_missing_database_fails_at_once(fake_slack: FakeSlack, tmp_path: Path) -> None:
    require_postgres()
    name = f"finetune_missing_{uuid.uuid4().hex[:8]}"
    url = f"postgresql://postgres:{PASSWORD}@{PG_HOST}/{name}"
    # Default DATABASE_WAIT_SECONDS (30 s) and a 20 s timeout: waiting here would time out.
    result = run_bot_once(env_with(fake_slack, url), tmp_path)
    assert_one_database_line(result, f"database '{name}' does not exist on {PG_HOST}")
    assert RETRY_LINE not in result.stderr


def test_unknown_user_fails_at_once_without_the_password(fake_slack: FakeSlack, tmp_path: Path) -> None:
    require_postgres()  # trust auth accepts any password, so a role that does not exist is refused
    url = f"postgresql://no_such_role_x:{PASSWORD}@{PG_HOST}/test"
    result = run_bot_once(env_with(fake_slack, url), tmp_path)
    assert_one_database_line(result, f"user 'no_such_role_x' does not exist on {PG_HOST}")
    assert RETRY_LINE not in result.stderr


@contextmanager
def refusing_connections(name: str) -> Iterator[sa.Engine]:
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false'))
        yield admin
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
        admin.dispose()


def wait_until(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout}s: {what}")


def test_database_that_comes_up_during_the_wait(
    fake_openai: FakeOpenAI, fake_slack: FakeSlack, tmp_path: Path
) -> None:
    with fresh_postgres_database() as url:
        name = url.rsplit("/", 1)[1]
        env = bot_env(fake_openai, fake_slack, DATABASE_URL=url, DATABASE_WAIT_SECONDS="60")
        bot = BotProcess(env, tmp_path)
        with refusing_connections(name):
            bot.start(wait=False)
            # The bot is waiting (and says why), not serving and not gone.
            wait_until(lambda: RETRY_LINE in bot.logs, 20, "a retry line in the bot's log")
            assert "does not accept connections at the moment" in bot.logs
            assert bot.process is not None and bot.process.poll() is None
        try:
            bot.wait_healthy(timeout=30)
            # The schema was created once the database came up.
            engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
            with engine.connect() as conn:
                assert conn.execute(sa.text("SELECT version FROM finetune_schema")).scalar() == SCHEMA_VERSION
            engine.dispose()
        finally:
            assert bot.stop() == 0, bot.logs


# -- SQLite ---------------------------------------------------------------------------------------


def test_sqlite_folder_that_does_not_exist(fake_slack: FakeSlack, tmp_path: Path) -> None:
    path = tmp_path / "missing" / "bot.db"
    result = run_bot_once(env_with(fake_slack, f"sqlite:///{path}"), tmp_path)
    assert_one_database_line(result, f"cannot create the SQLite file {path}: the folder does not exist")


def test_sqlite_folder_not_writable(fake_slack: FakeSlack, tmp_path: Path) -> None:
    folder = tmp_path / "locked"
    folder.mkdir(mode=0o555)
    try:
        result = run_unprivileged(env_with(fake_slack, f"sqlite:///{folder / 'bot.db'}"), tmp_path)
    finally:
        folder.chmod(0o755)
    assert_one_database_line(result, f"cannot create the SQLite file {folder / 'bot.db'}", "not writable")
    assert not (folder / "bot.db").exists()


def test_sqlite_file_read_only(fake_slack: FakeSlack, tmp_path: Path) -> None:
    path = tmp_path / "bot.db"
    open_database(f"sqlite:///{path}", wait_seconds=0).close()  # a real database, schema current
    path.chmod(0o444)
    result = run_unprivileged(env_with(fake_slack, f"sqlite:///{path}"), tmp_path)
    assert_one_database_line(result, f"the SQLite file {path} is read-only")


def test_schema_newer_than_the_bot(fake_slack: FakeSlack, tmp_path: Path) -> None:
    path = tmp_path / "bot.db"
    open_database(f"sqlite:///{path}", wait_seconds=0).close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE finetune_schema SET version = 99")
    conn.close()
    result = run_bot_once(env_with(fake_slack, f"sqlite:///{path}"), tmp_path)
    assert_one_database_line(result, "schema is version 99, newer than this bot")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_new_sqlite_file_and_its_wal_and_shm_are_private(
    fake_openai: FakeOpenAI, fake_slack: FakeSlack, tmp_path: Path
) -> None:
    previous = os.umask(0o022)  # the common umask, under which SQLite alone would create 0644
    try:
        bot = BotProcess(bot_env(fake_openai, fake_slack), tmp_path).start()
    finally:
        os.umask(previous)
    try:
        db = tmp_path / "finetune-bot.db"  # the default DATABASE_URL, in the working directory
        for path in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
            assert path.exists(), path
            assert mode(path) == 0o600, (path, oct(mode(path)))
    finally:
        assert bot.stop() == 0, bot.logs


def test_existing_sqlite_file_keeps_its_mode_with_a_warning(
    fake_openai: FakeOpenAI, fake_slack: FakeSlack, tmp_path: Path
) -> None:
    db = tmp_path / "finetune-bot.db"
    open_database(f"sqlite:///{db}", wait_seconds=0).close()
    db.chmod(0o644)
    bot = BotProcess(bot_env(fake_openai, fake_slack), tmp_path).start()
    try:
        assert mode(db) == 0o644  # the operator's file: not changed behind their back
        assert f"run `chmod 600 {db}*`" in bot.logs
    finally:
        assert bot.stop() == 0, bot.logs


# -- plain values ---------------------------------------------------------------------------------

LIBPQ = 'connection failed: connection to server at "10.0.0.5", port 6543 failed: '
PG = Target.from_url(f"postgresql://alice:{PASSWORD}@db.example.com:6543/jobs")


@pytest.mark.parametrize(
    ("message", "expected", "transient"),
    [
        (
            LIBPQ + "Connection refused",
            "nothing answers at db.example.com:6543 (is PostgreSQL running?)",
            True,
        ),
        ("FATAL:  the database system is starting up", "is starting, stopping or recovering", True),
        ("FATAL:  sorry, too many clients already", "has too many connections open", True),
        ("FATAL:  remaining connection slots are reserved for roles", "too many connections", True),
        (
            'FATAL:  password authentication failed for user "alice"',
            "password authentication failed for user 'alice'",
            False,
        ),
        (
            'FATAL:  database "jobs" does not exist',
            "database 'jobs' does not exist on db.example.com:6543",
            False,
        ),
        (
            'FATAL:  no pg_hba.conf entry for host "10.1.1.1", user "alice"',
            "does not accept connections from this machine",
            False,
        ),
        (
            "failed to resolve host 'db.example.com': [Errno -2] Name or service not known",
            "'db.example.com' is not known",
            False,
        ),
        (
            "failed to resolve host 'db.example.com': [Errno -3] Temporary failure in name resolution",
            "cannot be looked up just now",
            True,
        ),
        (
            LIBPQ + "FATAL:  something new\nDETAIL: x",
            "cannot use the database at db.example.com:6543: something new",
            False,
        ),
    ],
)
def test_postgres_driver_messages_become_one_clear_line(message: str, expected: str, transient: bool) -> None:
    import psycopg

    diagnosis = diagnose(sa.exc.OperationalError("SELECT 1", {}, psycopg.OperationalError(message)), PG)
    assert expected in diagnosis.problem
    assert diagnosis.transient is transient
    line = problem_line(diagnosis, PG, waited=31.0)
    assert line.startswith("DATABASE_URL: ") and "\n" not in line


def test_the_password_never_appears_even_if_a_driver_repeats_it() -> None:
    diagnosis = diagnose(RuntimeError(f"boom {PASSWORD}"), PG)
    assert PASSWORD not in problem_line(diagnosis, PG, waited=0)
    bad = f"postgresql://alice:{PASSWORD}@db.example.com:6543/jobs?x=%zz"
    with pytest.raises(DatabaseProblem) as caught:
        open_database("postgresql+nodriver://alice:" + PASSWORD + "@h/db", wait_seconds=0)
    assert PASSWORD not in str(caught.value) and "DATABASE_URL" in str(caught.value)
    assert PASSWORD not in problem_line(Diagnosis(bad, False), Target.from_url(bad), waited=0)


def test_only_transient_problems_are_retried_until_the_wait_runs_out() -> None:
    now = [0.0]
    pauses: list[float] = []

    def sleep(seconds: float) -> None:
        pauses.append(seconds)
        now[0] += seconds

    url = f"postgresql://postgres@127.0.0.1:{free_port()}/test"
    with pytest.raises(DatabaseProblem, match="nothing answers"):
        open_database(url, wait_seconds=6, sleep=sleep, clock=lambda: now[0])
    assert len(pauses) >= 3 and sum(pauses) == pytest.approx(6)  # backed off, stopped at the limit
    assert max(pauses) <= 5


def test_database_wait_seconds_setting() -> None:
    base = {"SLACK_BOT_TOKEN": "xoxb-1", "SLACK_APP_TOKEN": "xapp-1", "OPENAI_API_KEY": "sk-1"}
    settings = load_settings(base)
    assert isinstance(settings, Settings) and settings.database_wait_seconds == 30
    settings = load_settings({**base, "DATABASE_WAIT_SECONDS": "0"})
    assert isinstance(settings, Settings) and settings.database_wait_seconds == 0
    problems = load_settings({**base, "DATABASE_WAIT_SECONDS": "601"})
    assert isinstance(problems, list) and "DATABASE_WAIT_SECONDS" in problems[0]
    assert database_url_problem("postgresql://u:p@h:54x32/db") == (
        "DATABASE_URL: port '54x32' is not a number from 1 to 65535"
    )
    assert database_url_problem("postgresql://h1:5432,h2:5432/db") is None  # libpq's several hosts
    # A password with an unencoded "/" must not be echoed as if it were a port.
    problem = database_url_problem("postgresql://u:pa/ss-word@h:5432/db")
    assert problem is not None and "percent-encode" in problem
    assert "'pa'" not in problem and "ss-word" not in problem
