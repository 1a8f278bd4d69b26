"""Shared fixtures: one database per test, on SQLite and (when configured) PostgreSQL.

PostgreSQL tests need ``LEGATO_TEST_POSTGRES_URL`` (e.g. ``postgresql://postgres@127.0.0.1/test``).
Without it they are skipped with a visible reason; with it set, an unreachable server is an
error, never a skip (``.ci/run`` relies on that). Each test gets its own schema, dropped after.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from legato.store import Store, open_store

PG_URL = os.environ.get("LEGATO_TEST_POSTGRES_URL")
REQUIRE_PG = os.environ.get("LEGATO_REQUIRE_POSTGRES") == "1"

# Short leases and intervals so crash and recovery tests finish in seconds.
TEST_ENV = {
    "LEGATO_LEASE_SECONDS": "2",
    "LEGATO_HEARTBEAT_SECONDS": "0.4",
    "LEGATO_POLL_SECONDS": "0.2",
    "LEGATO_GRACE_SECONDS": "5",
    "LEGATO_LOG_FLUSH_SECONDS": "0.1",
}
os.environ.update({k: v for k, v in TEST_ENV.items() if k not in os.environ})


def _need_postgres() -> None:
    if PG_URL:
        return
    if REQUIRE_PG:
        pytest.fail("LEGATO_REQUIRE_POSTGRES=1 but LEGATO_TEST_POSTGRES_URL is not set")
    pytest.skip("LEGATO_TEST_POSTGRES_URL is not set: PostgreSQL tests skipped")


def _pg_schema_url(schema: str) -> str:
    assert PG_URL is not None
    sep = "&" if "?" in PG_URL else "?"
    return f"{PG_URL}{sep}schema={schema}"


def _drop_schema(schema: str) -> None:
    """Drop a test's schema. A worker killed by the test may still have a server session
    finishing its transaction for a moment: a lock conflict or deadlock is retried."""
    import time

    import psycopg
    from psycopg import errors

    assert PG_URL is not None
    deadline = time.monotonic() + 30
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute("SET lock_timeout = '2s'")
        while True:
            try:
                conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
                return
            except (errors.DeadlockDetected, errors.LockNotAvailable):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database URL: a SQLite file, or a PostgreSQL schema of its own."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'legato.db'}"
        return
    _need_postgres()
    schema = f"t_{uuid.uuid4().hex[:12]}"
    yield _pg_schema_url(schema)
    _drop_schema(schema)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'legato.db'}"


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A PostgreSQL-only database (its own schema)."""
    _need_postgres()
    schema = f"t_{uuid.uuid4().hex[:12]}"
    yield _pg_schema_url(schema)
    _drop_schema(schema)


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    s = open_store(db_url)
    yield s
    s.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Remember each phase's report on the item, so fixtures can tell a test failed."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    setattr(item, f"report_{report.when}", report)
