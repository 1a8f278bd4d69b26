"""Schema migrations with Alembic, applied automatically on first use.

Opening a store checks the recorded revision with one cheap query and only imports and runs
Alembic when the schema is behind. Concurrent first starts are serialised: an advisory lock
on PostgreSQL, a lock file next to the database on SQLite.
"""

from __future__ import annotations

import fcntl
import logging
from pathlib import Path

from .url import DatabaseURL

HEAD = "0006"
MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def alembic_config(url: DatabaseURL):  # type: ignore[no-untyped-def]
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["schema"] = url.schema if url.backend == "postgresql" else None
    return cfg


def upgrade(url: DatabaseURL, revision: str = "head") -> None:
    """Run the migrations up to ``revision``."""
    from alembic import command
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    logging.getLogger("alembic").setLevel(logging.WARNING)

    if url.backend == "sqlite":
        assert url.path is not None
        url.path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = url.path.with_name(url.path.name + ".migrate-lock")
        with open(lock_path, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            engine = create_engine(url.sqlalchemy_url, poolclass=NullPool)
            try:
                with engine.begin() as connection:
                    connection.exec_driver_sql("PRAGMA journal_mode=WAL")
                cfg = alembic_config(url)
                with engine.begin() as connection:
                    cfg.attributes["connection"] = connection
                    command.upgrade(cfg, revision)
            finally:
                engine.dispose()
        return
    engine = create_engine(
        url.sqlalchemy_url,
        poolclass=NullPool,
        connect_args={"options": f"-c search_path={url.schema}", "connect_timeout": 10},
    )
    try:
        with engine.begin() as connection:
            connection.execute(
                text("SELECT pg_advisory_xact_lock(hashtext(:key))"),
                {"key": f"legato-migrate-{url.schema}"},
            )
            connection.exec_driver_sql(f'CREATE SCHEMA IF NOT EXISTS "{url.schema}"')
            cfg = alembic_config(url)
            cfg.attributes["connection"] = connection
            command.upgrade(cfg, revision)
    finally:
        engine.dispose()
