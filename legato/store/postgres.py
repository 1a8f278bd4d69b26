"""PostgreSQL backend: psycopg 3 with a connection pool, ``SKIP LOCKED`` claims, LISTEN/NOTIFY.

The tables live in their own schema (``legato`` unless the URL says ``?schema=``). Triggers
created by the migrations send ``NOTIFY legato_<schema>`` when a run becomes claimable, so
idle workers wake within a millisecond; polling stays as the fallback.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool, PoolTimeout

from ..errors import DatabaseUnavailable
from . import migrate
from . import queries as q
from .base import Outcome, Row, Store, Tx
from .queries import Dialect
from .records import NewRun
from .url import DatabaseURL

DIALECT = Dialect(
    now="(EXTRACT(EPOCH FROM statement_timestamp()) * 1000)::bigint",
    skip_locked="FOR UPDATE SKIP LOCKED",
    lock_schedules="FOR UPDATE OF s SKIP LOCKED",
    pyformat=True,
    arrays=True,
)


BULK_ROWS = 5000


def _columns(rows: Sequence[dict[str, Any]]) -> dict[str, list[Any]]:
    """Rows of parameters as one list per column (for ``unnest``)."""
    return {key: [row[key] for row in rows] for key in rows[0]}


class _PgTx(Tx):
    def __init__(self, conn: psycopg.Connection[Row]) -> None:
        self.conn = conn

    def read(self, sql: str, params: dict[str, Any] | None = None) -> list[Row]:
        return self.conn.execute(sql, params or {}).fetchall()

    def write(self, sql: str, params: dict[str, Any] | None = None) -> int:
        return self.conn.execute(sql, params or {}).rowcount

    def write_many(self, sql: str, rows: Sequence[dict[str, Any]]) -> None:
        with self.conn.cursor() as cur:
            cur.executemany(sql, rows)


class PostgresStore(Store):
    """A store in a PostgreSQL schema, shared by any number of workers and machines."""

    name = "postgresql"
    dialect = DIALECT

    def __init__(
        self, url: DatabaseURL, *, pool_size: int = 10, connect_timeout: float = 10
    ) -> None:
        super().__init__()
        assert url.conninfo is not None
        self.url = url
        self.channel = f"legato_{url.schema}"
        self._kwargs: dict[str, Any] = {
            "autocommit": True,
            "row_factory": dict_row,
            "options": f"-c search_path={url.schema}",
            # Which process a server session belongs to, for operators (pg_stat_activity).
            "application_name": f"legato:{os.getpid()}",
        }
        self._connect_timeout = connect_timeout
        self._check_reachable()
        self._pool: ConnectionPool[psycopg.Connection[Row]] = ConnectionPool(
            url.conninfo,
            min_size=1,
            max_size=max(2, pool_size),
            kwargs=self._kwargs,
            timeout=max(30.0, connect_timeout),
            open=True,
            name=f"legato-{url.schema}",
        )
        self._listen_conn: psycopg.Connection[Any] | None = None

    def _check_reachable(self) -> None:
        try:
            with psycopg.connect(
                self.url.conninfo or "", connect_timeout=int(self._connect_timeout), autocommit=True
            ):
                pass
        except psycopg.Error as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DatabaseUnavailable(
                f"cannot connect to PostgreSQL at {self.url.redacted()}: {reason}"
            ) from None

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[Row]]:
        try:
            with self._pool.connection() as conn:
                yield conn
        except PoolTimeout:
            raise DatabaseUnavailable(
                f"no PostgreSQL connection available at {self.url.redacted()}"
            ) from None

    def _read(self, sql: str, params: dict[str, Any] | None = None) -> list[Row]:
        with self._connection() as conn:
            return conn.execute(sql, params or {}).fetchall()

    def _write(self, sql: str, params: dict[str, Any] | None = None) -> int:
        with self._connection() as conn:
            return conn.execute(sql, params or {}).rowcount

    def _write_returning(self, sql: str, params: dict[str, Any] | None = None) -> list[Row]:
        return self._read(sql, params)

    def _write_many(self, sql: str, rows: Sequence[dict[str, Any]]) -> None:
        with self._connection() as conn, conn.transaction(), conn.cursor() as cur:
            cur.executemany(sql, rows)

    @contextmanager
    def _transaction(self) -> Iterator[_PgTx]:
        with self._connection() as conn, conn.transaction():
            yield _PgTx(conn)

    def _claim_sql(self, queue_count: int) -> str:
        """One ordered, limited, ``SKIP LOCKED`` pick per queue through LATERAL, merged."""
        pick = (
            "SELECT r.id FROM unnest(CAST(:queues AS text[])) AS q(name) CROSS JOIN LATERAL ("
            + q.CLAIM_PICK_ONE_QUEUE.format(queue="q.name", now=DIALECT.now, seq=DIALECT.seq)
            + " FOR UPDATE SKIP LOCKED) r ORDER BY r.claim_key, r.seq LIMIT :limit"
        )
        return self.sql("CLAIM", claim_pick=pick)

    def _claim_params(self, queues: Sequence[str]) -> dict[str, Any]:
        return {"queues": list(queues)}

    @contextmanager
    def _gated_transaction(self) -> Iterator[_PgTx]:
        """BEGIN and the advisory lock in one round trip (the schema name is validated)."""
        with self._connection() as conn:
            conn.execute(
                f"BEGIN; SELECT pg_advisory_xact_lock(hashtext('legato-gated-{self.url.schema}'))"
            )
            try:
                yield _PgTx(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _insert_runs(self, tx: Tx, runs: Sequence[NewRun]) -> None:
        """One ``unnest`` statement per batch: far fewer round trips than one per run."""
        for start in range(0, len(runs), BULK_ROWS):
            tx.write(
                self.sql("INSERT_RUNS_UNNEST"),
                _columns([r.as_params() for r in runs[start : start + BULK_ROWS]]),
            )

    def _write_outcomes(self, tx: Tx, outcomes: Sequence[Outcome]) -> list[bool]:
        """Run endings go in one ``unnest`` statement; the rarer outcomes one by one."""
        finishes = [params for name, params in outcomes if name == "FINISH_RUN"]
        if len(finishes) < 2:
            return super()._write_outcomes(tx, outcomes)
        done = {row["id"] for row in tx.read(self.sql("FINISH_RUNS_UNNEST"), _columns(finishes))}
        written = []
        for name, params in outcomes:
            if name == "FINISH_RUN":
                ok = params["run_id"] in done
            else:
                ok = tx.write(self.sql(name), params) > 0
            if ok:
                self._after_outcome(tx, name, params)
            written.append(ok)
        return written

    def _advance_schedules(self, tx: Tx, advances: Sequence[dict[str, Any]]) -> None:
        if advances:
            tx.write(self.sql("ADVANCE_SCHEDULES_UNNEST"), _columns(advances))

    def _notify_slot_freed(self, tx: Tx) -> None:
        tx.read("SELECT pg_notify(%(channel)s, 'slot')", {"channel": self.channel})

    def _notify_cancel(self) -> None:
        self._write("SELECT pg_notify(%(channel)s, 'cancel')", {"channel": self.channel})

    def migrate(self) -> None:
        try:
            rows = self._read("SELECT version_num FROM alembic_version")
            if rows and rows[0]["version_num"] == migrate.HEAD:
                return
        except psycopg.errors.UndefinedTable:
            pass
        migrate.upgrade(self.url)

    def listen(self, timeout: float) -> Iterator[str]:
        """Wait for a notification on this schema's channel, at most ``timeout`` seconds."""
        if self._listen_conn is None or self._listen_conn.closed:
            self._listen_conn = psycopg.connect(self.url.conninfo or "", autocommit=True)
            self._listen_conn.execute(f'LISTEN "{self.channel}"')
        try:
            for notify in self._listen_conn.notifies(timeout=timeout, stop_after=1):
                yield notify.payload
        except psycopg.OperationalError:
            self._listen_conn = None  # reconnect on the next call; polling covers the gap

    def close(self) -> None:
        if self._listen_conn is not None:
            self._listen_conn.close()
            self._listen_conn = None
        self._pool.close()
