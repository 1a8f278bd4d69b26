"""A small PostgreSQL connection pool that hands the reconnection pace to its callers.

Why not psycopg_pool: its reconnection backoff is fixed inside the library (1 s, doubling,
with the pool's clients sleeping between failed checks), so after a 0.3-second server restart
a worker waited 5 s for a connection and its leases expired. Legato's loops already retry
with a bounded, jittered backoff of their own (``LEGATO_RECONNECT_MAX_SECONDS``); this pool
never sleeps and never retries on its own:

- a connection is checked when it is handed out, without a round trip when it is healthy: an
  idle connection has nothing to read, so a readable socket means the server sent its goodbye
  (restart, ``pg_terminate_backend``) or closed the stream; such a connection is tried once
  and discarded if it fails;
- when none is idle, one is opened in the caller's thread (bounded by ``connect_timeout``);
  a failure is the caller's to retry;
- at ``max_size`` the caller waits up to ``timeout`` for one to be returned;
- a connection returned broken, or not idle (a transaction left open), is closed; idle ones
  older than ``max_lifetime`` or unused for ``max_idle`` are closed when next looked at.

No background thread, no logging on the user's stderr.
"""

from __future__ import annotations

import contextlib
import select
import threading
import time
from typing import Any

import psycopg
from psycopg import pq


class PoolExhausted(Exception):
    """Every connection is in use and none was returned within the timeout."""


class _Slot:
    __slots__ = ("conn", "created", "returned")

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn
        self.created = self.returned = time.monotonic()


class Pool:
    """Up to ``max_size`` connections to ``conninfo``, opened with ``kwargs``."""

    def __init__(
        self,
        conninfo: str,
        *,
        kwargs: dict[str, Any],
        max_size: int,
        timeout: float,
        max_lifetime: float = 3600.0,
        max_idle: float = 600.0,
    ) -> None:
        self.conninfo = conninfo
        self.kwargs = kwargs
        self.max_size = max_size
        self.timeout = timeout
        self.max_lifetime = max_lifetime
        self.max_idle = max_idle
        self._idle: list[_Slot] = []  # a stack: the warmest connection is reused first
        self._lent: dict[int, _Slot] = {}
        self._opened = 0  # connections open or being opened, idle or in use
        self._cond = threading.Condition()
        self._closed = False

    def acquire(self) -> psycopg.Connection[Any]:
        """A healthy connection (idle, or opened now); give it back with :meth:`release`.

        Raises the driver's error when a connection cannot be opened, and
        :class:`PoolExhausted` when all are in use for ``timeout`` seconds.
        """
        slot = self._get()
        with self._cond:
            self._lent[id(slot.conn)] = slot
        return slot.conn

    def release(self, conn: psycopg.Connection[Any]) -> None:
        with self._cond:
            slot = self._lent.pop(id(conn))
        self._put(slot)

    def _get(self) -> _Slot:
        deadline = time.monotonic() + self.timeout
        while True:
            with self._cond:
                if self._closed:
                    raise psycopg.OperationalError("the connection pool is closed")
                slot = self._idle.pop() if self._idle else None
                if slot is None and self._opened < self.max_size:
                    self._opened += 1
                    opening = True
                elif slot is None:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise PoolExhausted(
                            f"all {self.max_size} connections in use for {self.timeout:g}s"
                        )
                    self._cond.wait(remaining)
                    continue
                else:
                    opening = False
            if opening:
                try:
                    return _Slot(psycopg.connect(self.conninfo, **self.kwargs))
                except BaseException:
                    self._forget()
                    raise
            assert slot is not None
            if self._usable(slot):
                return slot
            self._discard(slot)

    def _usable(self, slot: _Slot) -> bool:
        conn = slot.conn
        now = time.monotonic()
        if conn.closed or conn.broken:
            return False
        if now - slot.created > self.max_lifetime or now - slot.returned > self.max_idle:
            return False
        try:
            readable, _, _ = select.select([conn.fileno()], [], [], 0)
            if readable:  # something arrived while idle: usually the server's goodbye
                conn.execute("")
        except (psycopg.Error, OSError, ValueError):
            return False
        return True

    def _put(self, slot: _Slot) -> None:
        conn = slot.conn
        healthy = (
            not conn.closed
            and not conn.broken
            and conn.info.transaction_status == pq.TransactionStatus.IDLE
        )
        if not healthy:
            self._discard(slot)
            return
        slot.returned = time.monotonic()
        with self._cond:
            if self._closed:
                healthy = False
            else:
                self._idle.append(slot)
                self._cond.notify()
        if not healthy:
            self._discard(slot)

    def _discard(self, slot: _Slot) -> None:
        with contextlib.suppress(Exception):
            slot.conn.close()
        self._forget()

    def _forget(self) -> None:
        with self._cond:
            self._opened -= 1
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
        for slot in idle:
            self._discard(slot)
