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

from ..config import Settings
from ..errors import DatabaseUnavailable
from . import migrate
from . import queries as q
from .base import Outcome, Row, Store, Tx
from .pgpool import Pool, PoolExhausted
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

#: Driver errors that are faults of the connection or the server, not of a statement: a cut or
#: terminated connection, a server shutting down or starting, a statement or lock timeout, a
#: session ended for idling in a transaction, a deadlock or serialization failure.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    psycopg.OperationalError,
    psycopg.InterfaceError,
    psycopg.errors.IdleInTransactionSessionTimeout,
)


def session_options(schema: str, settings: Settings) -> str:
    """The ``options`` of Legato's sessions: the schema, and the timeouts that keep a stuck or
    frozen session from holding locks or waiting for ever (see ``docs/reliability.md``)."""
    options = [f"-c search_path={schema}"]
    for name, seconds in (
        ("statement_timeout", settings.statement_timeout),
        ("lock_timeout", settings.lock_timeout),
        ("idle_in_transaction_session_timeout", settings.idle_in_transaction_timeout),
    ):
        if seconds > 0:
            options.append(f"-c {name}={max(1, int(seconds * 1000))}")
    return " ".join(options)


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
        self, url: DatabaseURL, *, pool_size: int = 10, settings: Settings | None = None
    ) -> None:
        super().__init__(settings)
        assert url.conninfo is not None
        self.url = url
        self.channel = f"legato_{url.schema}"
        timeout = self.settings.connect_timeout
        self._connect_kwargs: dict[str, Any] = {
            # libpq counts whole seconds; psycopg applies it to every attempt of a connect.
            "connect_timeout": max(2, int(timeout + 0.999)),
            # A peer that vanished without closing (network cut) is noticed in seconds.
            "keepalives": 1,
            "keepalives_idle": 5,
            "keepalives_interval": 2,
            "keepalives_count": 3,
            # Which process a server session belongs to, for operators (pg_stat_activity).
            "application_name": f"legato:{os.getpid()}",
        }
        self._kwargs: dict[str, Any] = {
            **self._connect_kwargs,
            "autocommit": True,
            "row_factory": dict_row,
            "options": session_options(url.schema, self.settings),
        }
        self._check_reachable()
        self._pool = Pool(
            url.conninfo, kwargs=self._kwargs, max_size=max(2, pool_size), timeout=timeout
        )
        self._listen_conn: psycopg.Connection[Any] | None = None

    def _check_reachable(self) -> None:
        try:
            with psycopg.connect(self.url.conninfo or "", autocommit=True, **self._connect_kwargs):
                pass
        except psycopg.Error as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DatabaseUnavailable(
                f"cannot connect to PostgreSQL at {self.url.redacted()}: {reason}",
                url=self.url.raw,
            ) from None

    def is_transient(self, exc: BaseException) -> bool:
        return isinstance(exc, (*TRANSIENT_ERRORS, DatabaseUnavailable))

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[Row]]:
        """A pooled connection; a fault of the connection or server raises
        :class:`DatabaseUnavailable` (the pool discards a broken connection). One that could
        not be had at all has no ``__cause__``: nothing was sent."""
        try:
            conn = self._pool.acquire()
        except PoolExhausted as exc:
            raise DatabaseUnavailable(
                f"no PostgreSQL connection available at {self.url.redacted()}: {exc}",
                url=self.url.raw,
            ) from None
        except TRANSIENT_ERRORS as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DatabaseUnavailable(
                f"cannot connect to PostgreSQL at {self.url.redacted()}: {reason}",
                url=self.url.raw,
            ) from None
        try:
            yield conn
        except TRANSIENT_ERRORS as exc:
            raise self.unavailable(exc) from exc
        finally:
            self._pool.release(conn)

    def _read(self, sql: str, params: dict[str, Any] | None = None) -> list[Row]:
        try:
            return self._fetch(sql, params)
        except DatabaseUnavailable as exc:
            if exc.__cause__ is None:  # no connection to be had: do not wait for one twice
                raise
            # A connection that died between the pool's check and this query: a read is
            # safe to repeat, once, on a fresh connection.
            return self._fetch(sql, params)

    def _fetch(self, sql: str, params: dict[str, Any] | None = None) -> list[Row]:
        with self._connection() as conn:
            return conn.execute(sql, params or {}).fetchall()

    def _write(self, sql: str, params: dict[str, Any] | None = None) -> int:
        with self._connection() as conn:
            return conn.execute(sql, params or {}).rowcount

    def _write_returning(self, sql: str, params: dict[str, Any] | None = None) -> list[Row]:
        return self._fetch(sql, params)

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
                if ok:
                    self._after_outcome(tx, name, params)
            else:
                ok = self._write_outcome(tx, name, params)
            written.append(ok)
        return written

    def _beat(self, params: dict[str, Any]) -> tuple[list[Row], list[Row]]:
        """One statement, outside any transaction: a worker frozen in the middle of its
        heartbeat holds no lock (see :data:`~legato.store.queries.HEARTBEAT_PG`)."""
        sql = self.sql("HEARTBEAT_PG", **self._id_lists("held", "executing"))
        rows = self._write_returning(sql, params)
        orphans = [r for r in rows if r["kind"] == "orphan"]
        cancelled = [r["id"] for r in orphans if r["status"] == "cancelled"]
        if cancelled:
            with self._transaction() as tx:
                self._close_cancelled_steps(tx, cancelled)
        return orphans, [r for r in rows if r["kind"] == "held"]

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
        """Wait for a notification on this schema's channel, at most ``timeout`` seconds.

        A lost listening connection is opened again on the next call; meanwhile the caller's
        polling covers the gap.
        """
        try:
            if self._listen_conn is None or self._listen_conn.closed:
                self._listen_conn = None
                conn = psycopg.connect(
                    self.url.conninfo or "", autocommit=True, **self._connect_kwargs
                )
                conn.execute(f'LISTEN "{self.channel}"')
                self._listen_conn = conn
            for notify in self._listen_conn.notifies(timeout=timeout, stop_after=1):
                yield notify.payload
        except TRANSIENT_ERRORS as exc:
            if self._listen_conn is not None:
                self._listen_conn.close()
            self._listen_conn = None
            raise self.unavailable(exc) from exc

    def close(self) -> None:
        if self._listen_conn is not None:
            self._listen_conn.close()
            self._listen_conn = None
        self._pool.close()
