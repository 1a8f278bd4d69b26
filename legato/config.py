"""Settings: database URL and the timing knobs of workers, read from the environment.

Every knob has an environment variable so that tests and deployments can shorten or
lengthen leases without code changes:

=============================  ==========  ==================================================
variable                       default     meaning
=============================  ==========  ==================================================
``LEGATO_DATABASE_URL``        sqlite:///legato.db   where runs are stored
``LEGATO_LEASE_SECONDS``       30          a claimed run is owned this long without heartbeat
``LEGATO_HEARTBEAT_SECONDS``   lease / 3   how often a worker extends its leases
``LEGATO_POLL_SECONDS``        1.0         polling fallback for new runs (PostgreSQL also
                                           wakes on LISTEN/NOTIFY)
``LEGATO_CLAIM_BATCH``         32          most runs claimed in one statement
``LEGATO_GRACE_SECONDS``       30          how long SIGTERM waits for running runs
``LEGATO_MAX_PAYLOAD_BYTES``   1048576     largest accepted parameters / result JSON
``LEGATO_LOG_FLUSH_SECONDS``   0.2         how often captured log lines are written
``LEGATO_SCHEDULER_SECONDS``   1.0         longest pause between two scheduler ticks (a tick
                                           also happens when the next fire is due)
``LEGATO_MAX_LOG_LINE_BYTES``  65536       longest captured log line; a longer one is stored
                                           cut, with a note saying how long it was
=============================  ==========  ==================================================

Database faults (see ``docs/reliability.md``):

===========================================  ==========  ======================================
variable                                     default     meaning
===========================================  ==========  ======================================
``LEGATO_DB_CONNECT_TIMEOUT``                5           seconds to wait for a connection before
                                                         ``DatabaseUnavailable``
``LEGATO_DB_STATEMENT_TIMEOUT``              30          PostgreSQL ``statement_timeout`` of
                                                         Legato's sessions (0: none)
``LEGATO_DB_LOCK_TIMEOUT``                   5           PostgreSQL ``lock_timeout`` (0: none)
``LEGATO_DB_IDLE_IN_TRANSACTION_TIMEOUT``    lease / 2   PostgreSQL
                                                         ``idle_in_transaction_session_timeout``:
                                                         a frozen session's locks are released
                                                         before its leases expire (0: none)
``LEGATO_RECONNECT_MAX_SECONDS``             2           longest pause between two attempts to
                                                         reach the database again (backoff from
                                                         50 ms, doubling, with jitter)
===========================================  ==========  ======================================
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field, replace
from typing import Any

DEFAULT_DATABASE_URL = "sqlite:///legato.db"


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    return float(raw) if raw else default


def database_url(explicit: str | None = None) -> str:
    """Resolve the database URL: explicit > ``$LEGATO_DATABASE_URL`` > ``sqlite:///legato.db``."""
    return explicit or os.environ.get("LEGATO_DATABASE_URL") or DEFAULT_DATABASE_URL


@dataclass(frozen=True)
class Settings:
    """Timing and size limits shared by the worker, the client and the store."""

    lease_seconds: float = 30.0
    heartbeat_seconds: float = 10.0
    poll_seconds: float = 1.0
    claim_batch: int = 32
    grace_seconds: float = 30.0
    max_payload_bytes: int = 1024 * 1024
    log_flush_seconds: float = 0.2
    scheduler_seconds: float = 1.0
    max_log_line_bytes: int = 64 * 1024
    connect_timeout: float = 5.0
    statement_timeout: float = 30.0
    lock_timeout: float = 5.0
    idle_in_transaction_timeout: float = 15.0
    reconnect_max_seconds: float = 2.0
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_env(cls, **overrides: Any) -> Settings:
        lease = _env_float("LEGATO_LEASE_SECONDS", cls.lease_seconds)
        settings = cls(
            lease_seconds=lease,
            heartbeat_seconds=_env_float("LEGATO_HEARTBEAT_SECONDS", lease / 3),
            poll_seconds=_env_float("LEGATO_POLL_SECONDS", cls.poll_seconds),
            claim_batch=int(_env_float("LEGATO_CLAIM_BATCH", cls.claim_batch)),
            grace_seconds=_env_float("LEGATO_GRACE_SECONDS", cls.grace_seconds),
            max_payload_bytes=int(_env_float("LEGATO_MAX_PAYLOAD_BYTES", cls.max_payload_bytes)),
            log_flush_seconds=_env_float("LEGATO_LOG_FLUSH_SECONDS", cls.log_flush_seconds),
            scheduler_seconds=_env_float("LEGATO_SCHEDULER_SECONDS", cls.scheduler_seconds),
            max_log_line_bytes=int(_env_float("LEGATO_MAX_LOG_LINE_BYTES", cls.max_log_line_bytes)),
            connect_timeout=_env_float("LEGATO_DB_CONNECT_TIMEOUT", cls.connect_timeout),
            statement_timeout=_env_float("LEGATO_DB_STATEMENT_TIMEOUT", cls.statement_timeout),
            lock_timeout=_env_float("LEGATO_DB_LOCK_TIMEOUT", cls.lock_timeout),
            idle_in_transaction_timeout=_env_float(
                "LEGATO_DB_IDLE_IN_TRANSACTION_TIMEOUT", lease / 2
            ),
            reconnect_max_seconds=_env_float(
                "LEGATO_RECONNECT_MAX_SECONDS", cls.reconnect_max_seconds
            ),
        )
        return replace(settings, **overrides) if overrides else settings

    def backoff(self, attempt: int) -> float:
        """Seconds to wait before reaching the database again after ``attempt`` failures in a
        row: 50 ms doubling up to ``reconnect_max_seconds``, with jitter (so that workers
        cut off together do not come back in lockstep)."""
        ceiling = min(self.reconnect_max_seconds, 0.05 * 2.0 ** min(attempt, 16))
        return ceiling / 2 + random.random() * ceiling / 2

    @property
    def worker_dead_after_seconds(self) -> float:
        """A worker whose heartbeat is older than this is shown as not alive."""
        return max(self.lease_seconds, self.heartbeat_seconds * 3)
