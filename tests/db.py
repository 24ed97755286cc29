"""Databases for tests: a fresh SQLite file, or a fresh schema-less PostgreSQL database.

PostgreSQL tests need the server at 127.0.0.1:5432 (user postgres, trust auth). `.ci/run` sets
FINETUNE_REQUIRE_POSTGRES=1, so there a missing server fails the run; elsewhere the tests skip,
saying why.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import sqlalchemy as sa

PG_ADMIN_URL = os.environ.get("FINETUNE_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def _admin_engine() -> sa.Engine:
    return sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT", pool_pre_ping=True)


def postgres_available() -> str | None:
    """None if PostgreSQL answers, else why not."""
    try:
        engine = _admin_engine()
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        engine.dispose()
        return None
    except Exception as error:  # any failure to connect means "not here"
        return f"PostgreSQL at {PG_ADMIN_URL} is not reachable: {type(error).__name__}: {error}"[:300]


def require_postgres() -> None:
    reason = postgres_available()
    if reason is None:
        return
    if os.environ.get("FINETUNE_REQUIRE_POSTGRES"):
        pytest.fail(f"FINETUNE_REQUIRE_POSTGRES is set but {reason}")
    print(f"\nskipping PostgreSQL test: {reason}")
    pytest.skip(reason)


@contextmanager
def fresh_postgres_database() -> Iterator[str]:
    """A new, empty database for one test, dropped afterwards; yields its URL."""
    require_postgres()
    name = f"finetune_test_{uuid.uuid4().hex[:10]}"
    engine = _admin_engine()
    with engine.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql+psycopg://", "postgresql://") + f"/{name}"
    finally:
        with engine.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        engine.dispose()
