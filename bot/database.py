"""Open the database at start, and say in one line what is wrong when it cannot be opened.

`open_database` creates the engine, connects and creates or upgrades the schema. Problems that go
away by themselves (nothing answers yet, the server is starting, too many connections) are retried
for `wait_seconds`, because a platform may start the bot before its database; everything else (a
bad URL, a wrong password, a missing database, an unwritable path, a read-only file, a schema newer
than the bot) fails at once. Either way the caller gets a `DatabaseProblem` whose text is one line
naming DATABASE_URL, in words a newcomer understands, and never the password.

A new SQLite file is created 0600 before SQLite opens it; SQLite gives the `-wal` and `-shm` files
it creates beside it the main file's permissions, so they are private too.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import sqlalchemy as sa

from bot.config import database_url_problem
from bot.store import CONNECT_TIMEOUT_SECONDS, Store, create_engine, schema_info

log = logging.getLogger(__name__)

_FIRST_RETRY_DELAY = 0.5
_MAX_RETRY_DELAY = 5.0


class DatabaseProblem(Exception):
    """One line for the operator, naming DATABASE_URL and what is wrong (never the password)."""


@dataclass(frozen=True)
class Diagnosis:
    problem: str  # what is wrong, without the "DATABASE_URL: " prefix
    transient: bool  # worth waiting for


@dataclass(frozen=True)
class Target:
    """What the URL points at, in the terms the messages use."""

    url: str
    sqlite_path: str | None  # absolute path of a SQLite file; None for PostgreSQL or in-memory
    host: str
    port: int
    database: str
    user: str

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"

    @classmethod
    def from_url(cls, url: str) -> Target:
        parts = urlsplit(url)
        if parts.scheme.startswith("sqlite"):
            return cls(url, _sqlite_file(url), "", 0, "", "")
        try:
            port = parts.port or 5432
        except ValueError:
            port = 5432  # reported by the syntax check before anything uses it
        return cls(
            url,
            None,
            host=parts.hostname or "localhost",
            port=port,
            database=unquote(parts.path.lstrip("/")) or unquote(parts.username or "") or "postgres",
            user=unquote(parts.username or "") or "(your login name)",
        )


def _sqlite_file(url: str) -> str | None:
    raw = url.split("://", 1)[1]
    path = raw[1:] if raw.startswith("/") else raw  # sqlite:///x.db is relative, sqlite:////x.db absolute
    path = path.split("?", 1)[0]
    if not path or path == ":memory:" or path.startswith("file:"):
        return None  # in memory, or a URI filename SQLite resolves itself
    return os.path.abspath(path)


def open_database(
    url: str,
    *,
    wait_seconds: float,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Store:
    """Connect and migrate, waiting up to `wait_seconds` for a database that is not up yet."""
    syntax = database_url_problem(url)
    if syntax is not None:
        raise DatabaseProblem(syntax)
    target = Target.from_url(url)
    if target.sqlite_path is not None:
        _prepare_sqlite_file(target.sqlite_path)
    started = clock()
    delay = _FIRST_RETRY_DELAY
    while True:
        try:
            return _open_once(url)
        except Exception as error:
            diagnosis = diagnose(error, target)
            waited = clock() - started
            remaining = wait_seconds - waited
            if not diagnosis.transient or remaining <= 0:
                raise DatabaseProblem(problem_line(diagnosis, target, waited=waited)) from None
            pause = min(delay, remaining)
            log.warning(
                "database not ready: %s; trying again in %.1f s (giving up in %.0f s, DATABASE_WAIT_SECONDS)",
                mask_password(diagnosis.problem, url),
                pause,
                remaining,
            )
            sleep(pause)
            delay = min(delay * 2, _MAX_RETRY_DELAY)


def _open_once(url: str) -> Store:
    engine = create_engine(url)
    store = Store(engine)
    try:
        store.migrate()
        # A read-only file or a standby server lets the bot read (and migrate nothing, when the
        # schema is current), then fails at the first write: find out now, with a no-op write.
        with engine.begin() as conn:
            conn.execute(
                schema_info.update().where(schema_info.c.id == 1).values(version=schema_info.c.version)
            )
    except BaseException:
        store.close()
        raise
    return store


def problem_line(diagnosis: Diagnosis, target: Target, *, waited: float) -> str:
    line = f"DATABASE_URL: {diagnosis.problem}"
    if diagnosis.transient and waited >= 1:
        line += f"; still so after waiting {waited:.0f} s (DATABASE_WAIT_SECONDS)"
    return mask_password(line, target.url)


def mask_password(text: str, url: str) -> str:
    password = urlsplit(url).password
    for form in {password, unquote(password or "")} - {None, ""}:
        text = text.replace(form, "***")  # type: ignore[arg-type]
    return text


# -- SQLite: the file and its folder, checked and created before SQLite opens them ----------------


def _prepare_sqlite_file(path: str) -> None:
    if os.path.isdir(path):
        raise DatabaseProblem(f"DATABASE_URL: the SQLite path {path} is a folder, not a file")
    if os.path.exists(path):
        _check_existing_sqlite_file(path)
        return
    folder = os.path.dirname(path)
    cannot = f"DATABASE_URL: cannot create the SQLite file {path}"
    if not os.path.exists(folder):
        raise DatabaseProblem(f"{cannot}: the folder does not exist")
    if not os.path.isdir(folder):
        raise DatabaseProblem(f"{cannot}: {folder} is not a folder")
    try:
        # Created here, 0600, because SQLite would create it 0644 (readable by every local user).
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass  # created meanwhile by someone else: SQLite opens it like any existing file
    except OSError as error:
        raise DatabaseProblem(f"{cannot}: {_os_reason(error, folder)}") from None


def _check_existing_sqlite_file(path: str) -> None:
    try:
        os.close(os.open(path, os.O_RDWR))
    except OSError as error:
        if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            where = " on a read-only file system" if error.errno == errno.EROFS else ""
            raise DatabaseProblem(
                f"DATABASE_URL: the SQLite file {path} is read-only{where} (the bot must be able to write it)"
            ) from None
        raise DatabaseProblem(f"DATABASE_URL: cannot open the SQLite file {path}: {error.strerror}") from None
    folder = os.path.dirname(path)
    if not os.access(folder, os.W_OK):
        raise DatabaseProblem(
            f"DATABASE_URL: the folder {folder} is not writable by this user, and SQLite needs to "
            f"create {os.path.basename(path)}-wal and -shm in it"
        )
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode & 0o077:
        # An existing file is the operator's: say so rather than change its permissions behind
        # their back (another tool or a backup job may rely on them).
        log.warning(
            "the SQLite file %s can be read by other users of this machine (mode %o); "
            "run `chmod 600 %s*` to keep it private (new files are created 0600)",
            path,
            mode,
            path,
        )


def _os_reason(error: OSError, folder: str) -> str:
    if error.errno in (errno.EACCES, errno.EPERM):
        return f"the folder {folder} is not writable by this user"
    if error.errno == errno.EROFS:
        return f"the folder {folder} is on a read-only file system"
    if error.errno == errno.ENOTDIR:
        return f"{folder} is not a folder"
    return error.strerror or type(error).__name__


# -- what went wrong, from the driver's words -----------------------------------------------------

# (pattern in the driver's message, worth waiting for, what to tell the operator). The first match
# wins, so the transient cases come before broader permanent ones. {name} is the pattern's group.
_POSTGRES_RULES: list[tuple[str, bool, str]] = [
    (r"connection refused", True, "nothing answers at {where} (is PostgreSQL running?)"),
    (
        r"the database system is (starting up|shutting down|in recovery mode|not yet accepting)",
        True,
        "PostgreSQL at {where} is starting, stopping or recovering",
    ),
    (
        r"too many (clients|connections)|remaining connection slots are reserved",
        True,
        "PostgreSQL at {where} has too many connections open",
    ),
    (
        r'database "(?P<name>[^"]*)" is not currently accepting connections',
        True,
        "database '{name}' on {where} does not accept connections at the moment",
    ),
    (r"temporary failure in name resolution", True, "the host name '{host}' cannot be looked up just now"),
    (r"timeout expired|timed out", True, f"no answer from {{where}} within {CONNECT_TIMEOUT_SECONDS} s"),
    (r"no route to host|network is unreachable", True, "no route to {where}"),
    (
        r"server closed the connection unexpectedly|connection reset|terminating connection",
        True,
        "the connection to {where} was cut",
    ),
    (
        r"failed to resolve host|could not translate host|name or service not known|nodename nor servname",
        False,
        "the host name '{host}' is not known (check the host in DATABASE_URL)",
    ),
    (
        r'password authentication failed for user "(?P<name>[^"]*)"',
        False,
        "password authentication failed for user '{name}'",
    ),
    (r'role "(?P<name>[^"]*)" does not exist', False, "user '{name}' does not exist on {where}"),
    (r'database "(?P<name>[^"]*)" does not exist', False, "database '{name}' does not exist on {where}"),
    (
        r"no password supplied|fe_sendauth",
        False,
        "PostgreSQL at {where} wants a password for user '{user}' and DATABASE_URL has none",
    ),
    (
        r"no pg_hba\.conf entry",
        False,
        "PostgreSQL at {where} does not accept connections from this machine as user '{user}' (pg_hba.conf)",
    ),
    (r"permission denied for database", False, "user '{user}' may not connect to database '{database}'"),
    (
        r"permission denied for schema|must be owner",
        False,
        "user '{user}' may not create tables in database '{database}'",
    ),
    (r"read-only transaction", False, "database '{database}' on {where} is read-only (a standby server?)"),
]

_SQLITE_RULES: list[tuple[str, bool, str]] = [
    (r"readonly|read-only", False, "the SQLite file {path} is read-only (the bot must be able to write it)"),
    (
        r"unable to open database file",
        False,
        "cannot open the SQLite file {path}: SQLite also creates {path}-wal and -shm beside it "
        "(is the folder writable by this user?)",
    ),
    (r"file is not a database", False, "{path} is not a SQLite database"),
    (
        r"database is locked",
        False,
        "the SQLite file {path} stayed locked by another process for 30 s (is another bot using it?)",
    ),
]


def diagnose(error: BaseException, target: Target) -> Diagnosis:
    """What to tell the operator about `error`, and whether waiting may help. Pure."""
    if isinstance(error, RuntimeError) and "newer than this bot" in str(error):
        return Diagnosis(f"{error}; run the newer version of the bot that upgraded it", False)
    if isinstance(error, (ImportError, sa.exc.NoSuchModuleError)):
        return Diagnosis("its driver is not installed; write postgresql://… (psycopg 3 is included)", False)
    if isinstance(error, (ValueError, sa.exc.ArgumentError)):
        return Diagnosis("is not a database URL SQLAlchemy can read", False)
    text = str(getattr(error, "orig", None) or error)
    sqlite = target.sqlite_path is not None or target.url.startswith("sqlite")
    fields = {
        "where": target.where,
        "host": target.host,
        "user": target.user,
        "database": target.database,
        "path": target.sqlite_path or "(in memory)",
    }
    for pattern, transient, template in _SQLITE_RULES if sqlite else _POSTGRES_RULES:
        match = re.search(pattern, text, re.IGNORECASE)
        if match:
            return Diagnosis(template.format(**fields, **match.groupdict()), transient)
    what = f"the SQLite file {fields['path']}" if sqlite else f"the database at {target.where}"
    return Diagnosis(f"cannot use {what}: {_driver_summary(text)}", False)


def _driver_summary(text: str) -> str:
    """The driver's message without libpq's boilerplate, on one line."""
    text = re.sub(r'^connection failed: |connection to server at "[^"]*"(, port \d+)? failed: ', "", text)
    text = re.sub(r"\b(FATAL|ERROR):\s+", "", text)
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return first[:200] or "unknown error"
