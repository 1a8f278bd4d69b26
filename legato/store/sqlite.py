"""SQLite backend: stdlib ``sqlite3``, WAL, one connection per thread, ``BEGIN IMMEDIATE`` writes.

Wake-ups: SQLite has no LISTEN, so :meth:`SQLiteStore.listen` polls ``PRAGMA data_version``
every few milliseconds — a counter that changes whenever another connection commits — which
costs microseconds and gives millisecond enqueue-to-start latency without busy claiming.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from ..config import Settings
from ..errors import DatabaseUnavailable
from . import migrate
from . import queries as q
from .base import Row, Store, Tx
from .queries import Dialect
from .url import DatabaseURL

DIALECT = Dialect(
    now="CAST(ROUND((julianday('now') - 2440587.5) * 86400000) AS INTEGER)",
    skip_locked="",
    lock_schedules="",
    pyformat=False,
    seq="rowid",
)


#: Messages of ``sqlite3.OperationalError`` that are faults of the moment (a lock held too long
#: by another process, the disk), not of the statement.
_TRANSIENT_MESSAGES = ("locked", "busy", "disk i/o", "unable to open", "disk is full")


def _dict_factory(cursor: sqlite3.Cursor, row: tuple[Any, ...]) -> Row:
    return {d[0]: v for d, v in zip(cursor.description, row, strict=True)}


class _SQLiteTx(Tx):
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def read(self, sql: str, params: dict[str, Any] | None = None) -> list[Row]:
        return self.conn.execute(sql, params or {}).fetchall()

    def write(self, sql: str, params: dict[str, Any] | None = None) -> int:
        return self.conn.execute(sql, params or {}).rowcount

    def write_many(self, sql: str, rows: Sequence[dict[str, Any]]) -> None:
        self.conn.executemany(sql, rows)


class SQLiteStore(Store):
    """A store in one SQLite file, safe to share between threads and processes."""

    name = "sqlite"
    dialect = DIALECT

    def __init__(
        self, url: DatabaseURL, *, busy_timeout_ms: int = 30_000, settings: Settings | None = None
    ) -> None:
        super().__init__(settings)
        assert url.path is not None
        self.url = url
        self.path = url.path
        self.busy_timeout_ms = busy_timeout_ms
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._listen_version: int | None = None
        # Threads of one process queue here for the write lock, instead of inside SQLite's
        # busy handler, which sleeps for milliseconds between retries.
        self._write_lock = threading.Lock()

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = sqlite3.connect(
                    self.path, isolation_level=None, check_same_thread=False, timeout=30
                )
                conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA synchronous = NORMAL")
                conn.execute("PRAGMA foreign_keys = ON")
            except sqlite3.Error as exc:
                raise DatabaseUnavailable(
                    f"cannot open SQLite database {self.path}: {exc}", url=self.url.raw
                ) from None
            conn.row_factory = _dict_factory
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    def is_transient(self, exc: BaseException) -> bool:
        if isinstance(exc, DatabaseUnavailable):
            return True
        return isinstance(exc, sqlite3.OperationalError) and any(
            m in str(exc).lower() for m in _TRANSIENT_MESSAGES
        )

    def _read(self, sql: str, params: dict[str, Any] | None = None) -> list[Row]:
        try:
            return self._conn().execute(sql, params or {}).fetchall()
        except sqlite3.OperationalError as exc:
            if self.is_transient(exc):
                raise self.unavailable(exc) from exc
            raise

    def _write(self, sql: str, params: dict[str, Any] | None = None) -> int:
        with self._transaction() as tx:
            return tx.write(sql, params)

    def _write_returning(self, sql: str, params: dict[str, Any] | None = None) -> list[Row]:
        with self._transaction() as tx:
            return tx.read(sql, params)

    def _write_many(self, sql: str, rows: Sequence[dict[str, Any]]) -> None:
        with self._transaction() as tx:
            tx.write_many(sql, rows)

    @contextmanager
    def _transaction(self) -> Iterator[_SQLiteTx]:
        conn = self._conn()
        try:
            with self._write_lock:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield _SQLiteTx(conn)
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            if self.is_transient(exc):
                raise self.unavailable(exc) from exc
            raise

    def _claim_sql(self, queue_count: int) -> str:
        """One ordered, limited pick per queue (each reads the claim index in order), merged."""
        arms = " UNION ALL ".join(
            "SELECT * FROM ("
            + q.CLAIM_PICK_ONE_QUEUE.format(queue=f":queue_{i}", now=DIALECT.now, seq=DIALECT.seq)
            + ")"
            for i in range(queue_count)
        )
        pick = f"SELECT id FROM ({arms}) ORDER BY claim_key, seq LIMIT :limit"
        return self.sql("CLAIM", claim_pick=pick)

    def _claim_params(self, queues: Sequence[str]) -> dict[str, Any]:
        return {f"queue_{i}": name for i, name in enumerate(queues)}

    def migrate(self) -> None:
        try:
            rows = self._read("SELECT version_num FROM alembic_version")
            if rows and rows[0]["version_num"] == migrate.HEAD:
                return
        except sqlite3.OperationalError:
            pass
        migrate.upgrade(self.url)

    def listen(self, timeout: float) -> Iterator[str]:
        """Return as soon as another connection has committed since the last call, or after
        ``timeout`` seconds."""
        conn: sqlite3.Connection | None = getattr(self._local, "listen_conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._local.listen_conn = conn
            self._local.listen_version = None
            with self._lock:
                self._connections.append(conn)
        deadline = time.monotonic() + timeout
        seen = self._local.listen_version
        while True:
            version = conn.execute("PRAGMA data_version").fetchone()[0]
            if seen is not None and version != seen:
                self._local.listen_version = version
                yield ""
                return
            seen = self._local.listen_version = version
            if time.monotonic() >= deadline:
                return
            time.sleep(0.002)

    def close(self) -> None:
        with self._lock:
            for conn in self._connections:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
            self._connections.clear()
        self._local = threading.local()
