"""The database schema as SQLAlchemy Core tables: the single source for migrations.

Portable column types only: times are epoch milliseconds (``BIGINT``), JSON is stored as
text, booleans are small integers. Triggers (run events, PostgreSQL notifications) are
dialect specific and live in the migrations.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    SmallInteger,
    Table,
    Text,
    text,
)

metadata = MetaData()

CLAIMABLE = "status IN ('queued', 'scheduled', 'retrying', 'sleeping')"

flows = Table(
    "flows",
    metadata,
    Column("name", Text, primary_key=True),
    Column("description", Text),
    Column("version", Text),
    Column("queue", Text, nullable=False),
    Column("priority", Integer, nullable=False, server_default="0"),
    Column("max_attempts", Integer, nullable=False, server_default="1"),
    Column("timeout_s", Float),
    Column("retry_policy", Text),  # JSON
    Column("schedules", Text),  # JSON list
    Column("parameters", Text),  # JSON list of {name, required, default, annotation}
    Column("is_async", SmallInteger, nullable=False, server_default="0"),
    Column("schedules_paused", SmallInteger, nullable=False, server_default="0"),
    Column("on_event", Text),  # JSON list of event names the flow subscribes to
    Column("event_filter", Text),  # JSON object: payload keys and the values they must have
    Column("updated_at", BigInteger, nullable=False),
    Column("flow_control", Text),  # JSON: the flow's limits, keys and isolation as declared
    Column("max_recoveries", Integer),  # worker deaths under a run before it is poison
)

schedules = Table(
    "schedules",
    metadata,
    Column("id", Text, primary_key=True),  # "<flow>:<schedule key>"
    Column("flow", Text, nullable=False),
    Column("definition", Text, nullable=False),  # JSON of legato.schedules.Schedule
    Column("next_fire_at", BigInteger),  # NULL once a one-time schedule has fired
    Column("last_fire_at", BigInteger),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    Index("schedules_due", "next_fire_at"),
    Index("schedules_flow", "flow"),
)

runs = Table(
    "runs",
    metadata,
    Column("id", Text, primary_key=True),
    Column("flow", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("params", Text, nullable=False),  # JSON object
    Column("result", Text),  # JSON
    Column("error", Text),
    Column("traceback", Text),
    Column("failed_step", Text),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("max_attempts", Integer, nullable=False, server_default="1"),
    Column("queue", Text, nullable=False),
    Column("priority", Integer, nullable=False, server_default="0"),
    Column("trigger", Text, nullable=False),
    Column("worker_id", Text),
    Column("parent_id", Text),
    Column("retry_of", Text),
    Column("schedule_id", Text),
    Column("idempotency_key", Text, unique=True),
    Column("created_at", BigInteger, nullable=False),
    Column("scheduled_for", BigInteger, nullable=False),
    Column("started_at", BigInteger),
    Column("finished_at", BigInteger),
    # Fencing token: incremented by every claim; a worker's writes must carry it.
    Column("lease_token", BigInteger, nullable=False, server_default="0"),
    Column("lease_expires_at", BigInteger),
    Column("cancel_requested", SmallInteger, nullable=False, server_default="0"),
    # 1 when the next claim continues the current attempt (recovery, hand-back).
    Column("resume", SmallInteger, nullable=False, server_default="0"),
    Column("recoveries", Integer, nullable=False, server_default="0"),
    # JSON list of [limit name, key] pairs; NULL for a run without limits (the plain claim).
    Column("limit_keys", Text),
    # Submission order on PostgreSQL (an identity column); SQLite uses the rowid instead.
    Column("seq", BigInteger),
    # The claim order: scheduled_for minus one minute per priority point (priority ageing).
    Column("claim_at", BigInteger, nullable=False, server_default="0"),
    # 1 when limit_keys is set: the run takes the gated claim (legato.store.gate).
    Column("gated", SmallInteger, nullable=False, server_default="0"),
    # Poison evidence: 1 while the run's code runs in its worker's process; lease expiries
    # that found it so (``crashes``).
    Column("executing", SmallInteger, nullable=False, server_default="0"),
    Column("crashes", Integer, nullable=False, server_default="0"),
    # Claim order within a queue and lane (gated or not): the effective priority (one
    # priority point per minute of waiting), then submission order.
    Index(
        "runs_claim",
        "queue",
        "gated",
        "claim_at",
        "seq",
        postgresql_where=text(CLAIMABLE),
        sqlite_where=text(CLAIMABLE),
    ),
    Index(
        "runs_lease",
        "lease_expires_at",
        postgresql_where=text("status = 'running'"),
        sqlite_where=text("status = 'running'"),
    ),
    Index(
        "runs_worker",
        "worker_id",
        postgresql_where=text("status = 'running'"),
        sqlite_where=text("status = 'running'"),
    ),
    Index("runs_created", text("created_at DESC")),
    Index("runs_flow_created", "flow", text("created_at DESC")),
    Index("runs_status_created", "status", text("created_at DESC")),
    Index("runs_queue_created", "queue", text("created_at DESC")),
    Index("runs_trigger_created", "trigger", text("created_at DESC")),
    # Finished runs only; with status and flow, stats over a window read the index alone.
    Index(
        "runs_finished",
        "finished_at",
        "status",
        "flow",
        postgresql_where=text("finished_at IS NOT NULL"),
        sqlite_where=text("finished_at IS NOT NULL"),
    ),
    Index(
        "runs_schedule_active",
        "schedule_id",
        postgresql_where=text(
            "schedule_id IS NOT NULL AND status IN ('queued', 'scheduled', 'retrying', 'sleeping', 'running')"
        ),
        sqlite_where=text(
            "schedule_id IS NOT NULL AND status IN ('queued', 'scheduled', 'retrying', 'sleeping', 'running')"
        ),
    ),
    Index(
        "runs_parent",
        "parent_id",
        postgresql_where=text("parent_id IS NOT NULL"),
        sqlite_where=text("parent_id IS NOT NULL"),
    ),
)

steps = Table(
    "steps",
    metadata,
    Column("run_id", Text, nullable=False),
    Column("position", Integer, nullable=False),
    Column("name", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("attempts", Integer, nullable=False, server_default="1"),
    Column("run_attempt", Integer, nullable=False, server_default="1"),
    Column("started_at", BigInteger, nullable=False),
    Column("finished_at", BigInteger),
    Column("result", Text),  # JSON
    Column("error", Text),
    Column("traceback", Text),
    PrimaryKeyConstraint("run_id", "position"),
)

logs = Table(
    "logs",
    metadata,
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("run_id", Text, nullable=False),
    Column("ts", BigInteger, nullable=False),
    Column("level", Text, nullable=False),
    Column("step", Text),
    Column("attempt", Integer, nullable=False),
    Column("message", Text, nullable=False),
    Index("logs_run", "run_id", "id"),
)

run_events = Table(
    "run_events",
    metadata,
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("run_id", Text, nullable=False),
    Column("ts", BigInteger, nullable=False),
    Column("status", Text, nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("worker_id", Text),
    Index("run_events_run", "run_id", "id"),
)

workers = Table(
    "workers",
    metadata,
    Column("id", Text, primary_key=True),
    Column("hostname", Text, nullable=False),
    Column("pid", Integer, nullable=False),
    Column("queues", Text, nullable=False),  # JSON list
    Column("concurrency", Integer, nullable=False),
    Column("running", Integer, nullable=False, server_default="0"),
    Column("started_at", BigInteger, nullable=False),
    Column("last_heartbeat", BigInteger, nullable=False),
    Column("stopped_at", BigInteger),
)

api_tokens = Table(
    "api_tokens",
    metadata,
    Column("id", Text, primary_key=True),
    Column("name", Text, nullable=False),
    Column("role", Text, nullable=False),  # viewer | operator | admin
    Column("token_hash", Text, nullable=False, unique=True),  # sha256 hex; never the token
    Column("created_at", BigInteger, nullable=False),
    Column("last_used_at", BigInteger),
    Column("revoked_at", BigInteger),
)

limits = Table(
    "limits",
    metadata,
    Column("name", Text, primary_key=True),  # "flow:<f>", "flow:<f>:key", or a named limit
    Column("kind", Text, nullable=False),  # "flow" (declared in code) | "named" (CLI, API)
    Column("concurrency", Integer),  # at most this many running per key
    Column("rate", Integer),  # at most this many starts per key ...
    Column("period_ms", BigInteger),  # ... per this period
    Column("updated_at", BigInteger, nullable=False),
)

queues = Table(
    "queues",
    metadata,
    Column("name", Text, primary_key=True),
    Column("paused", SmallInteger, nullable=False, server_default="0"),
    Column("strict", SmallInteger, nullable=False, server_default="0"),  # one at a time, FIFO
    Column("concurrency", Integer),  # at most this many running from the queue
    Column("updated_at", BigInteger, nullable=False),
)

rate_starts = Table(
    "rate_starts",
    metadata,
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("name", Text, nullable=False),
    Column("key", Text, nullable=False),
    Column("ts", BigInteger, nullable=False),
    Column("run_id", Text, nullable=False),
    Index("rate_starts_key", "name", "key", "ts"),
)
