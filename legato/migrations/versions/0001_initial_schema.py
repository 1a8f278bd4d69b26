"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-25

Tables for flows, runs, steps, logs, run events and workers, the indexes behind the
questions of SPEC section 4, and triggers that record every run status change in
``run_events`` (and, on PostgreSQL, NOTIFY idle workers when a run becomes claimable).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "flows",
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("version", sa.Text(), nullable=True),
        sa.Column("queue", sa.Text(), nullable=False),
        sa.Column("priority", sa.Integer(), server_default="0", nullable=False),
        sa.Column("max_attempts", sa.Integer(), server_default="1", nullable=False),
        sa.Column("timeout_s", sa.Float(), nullable=True),
        sa.Column("retry_policy", sa.Text(), nullable=True),
        sa.Column("schedules", sa.Text(), nullable=True),
        sa.Column("parameters", sa.Text(), nullable=True),
        sa.Column("is_async", sa.SmallInteger(), server_default="0", nullable=False),
        sa.Column("schedules_paused", sa.SmallInteger(), server_default="0", nullable=False),
        sa.Column("on_event", sa.Text(), nullable=True),
        sa.Column("event_filter", sa.Text(), nullable=True),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "logs",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("run_id", sa.Text(), nullable=False),
        sa.Column("ts", sa.BigInteger(), nullable=False),
        sa.Column("level", sa.Text(), nullable=False),
        sa.Column("step", sa.Text(), nullable=True),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("logs_run", "logs", ["run_id", "id"], unique=False)
    op.create_table(
        "run_events",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("run_id", sa.Text(), nullable=False),
        sa.Column("ts", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("worker_id", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("run_events_run", "run_events", ["run_id", "id"], unique=False)
    op.create_table(
        "runs",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("flow", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("params", sa.Text(), nullable=False),
        sa.Column("result", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("traceback", sa.Text(), nullable=True),
        sa.Column("failed_step", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("max_attempts", sa.Integer(), server_default="1", nullable=False),
        sa.Column("queue", sa.Text(), nullable=False),
        sa.Column("priority", sa.Integer(), server_default="0", nullable=False),
        sa.Column("trigger", sa.Text(), nullable=False),
        sa.Column("worker_id", sa.Text(), nullable=True),
        sa.Column("parent_id", sa.Text(), nullable=True),
        sa.Column("retry_of", sa.Text(), nullable=True),
        sa.Column("schedule_id", sa.Text(), nullable=True),
        sa.Column("idempotency_key", sa.Text(), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("scheduled_for", sa.BigInteger(), nullable=False),
        sa.Column("started_at", sa.BigInteger(), nullable=True),
        sa.Column("finished_at", sa.BigInteger(), nullable=True),
        sa.Column("lease_token", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("lease_expires_at", sa.BigInteger(), nullable=True),
        sa.Column("cancel_requested", sa.SmallInteger(), server_default="0", nullable=False),
        sa.Column("resume", sa.SmallInteger(), server_default="0", nullable=False),
        sa.Column("recoveries", sa.Integer(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("idempotency_key"),
    )
    op.create_index(
        "runs_claim",
        "runs",
        ["queue", sa.literal_column("priority DESC"), "scheduled_for"],
        unique=False,
        postgresql_where=sa.text("status IN ('queued', 'scheduled', 'retrying', 'sleeping')"),
        sqlite_where=sa.text("status IN ('queued', 'scheduled', 'retrying', 'sleeping')"),
    )
    op.create_index("runs_created", "runs", [sa.literal_column("created_at DESC")], unique=False)
    op.create_index("runs_finished", "runs", ["finished_at"], unique=False)
    op.create_index(
        "runs_flow_created", "runs", ["flow", sa.literal_column("created_at DESC")], unique=False
    )
    op.create_index(
        "runs_lease",
        "runs",
        ["lease_expires_at"],
        unique=False,
        postgresql_where=sa.text("status = 'running'"),
        sqlite_where=sa.text("status = 'running'"),
    )
    op.create_index(
        "runs_parent",
        "runs",
        ["parent_id"],
        unique=False,
        postgresql_where=sa.text("parent_id IS NOT NULL"),
        sqlite_where=sa.text("parent_id IS NOT NULL"),
    )
    op.create_index(
        "runs_status_created",
        "runs",
        ["status", sa.literal_column("created_at DESC")],
        unique=False,
    )
    op.create_index(
        "runs_worker",
        "runs",
        ["worker_id"],
        unique=False,
        postgresql_where=sa.text("status = 'running'"),
        sqlite_where=sa.text("status = 'running'"),
    )
    op.create_table(
        "steps",
        sa.Column("run_id", sa.Text(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="1", nullable=False),
        sa.Column("run_attempt", sa.Integer(), server_default="1", nullable=False),
        sa.Column("started_at", sa.BigInteger(), nullable=False),
        sa.Column("finished_at", sa.BigInteger(), nullable=True),
        sa.Column("result", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("traceback", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("run_id", "position"),
    )
    op.create_table(
        "workers",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("hostname", sa.Text(), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("queues", sa.Text(), nullable=False),
        sa.Column("concurrency", sa.Integer(), nullable=False),
        sa.Column("running", sa.Integer(), server_default="0", nullable=False),
        sa.Column("started_at", sa.BigInteger(), nullable=False),
        sa.Column("last_heartbeat", sa.BigInteger(), nullable=False),
        sa.Column("stopped_at", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "schedules",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("flow", sa.Text(), nullable=False),
        sa.Column("definition", sa.Text(), nullable=False),
        sa.Column("next_fire_at", sa.BigInteger(), nullable=True),
        sa.Column("last_fire_at", sa.BigInteger(), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("schedules_due", "schedules", ["next_fire_at"], unique=False)
    op.create_index("schedules_flow", "schedules", ["flow"], unique=False)
    op.create_index(
        "runs_schedule_active",
        "runs",
        ["schedule_id"],
        unique=False,
        postgresql_where=sa.text(_SCHEDULE_ACTIVE),
        sqlite_where=sa.text(_SCHEDULE_ACTIVE),
    )
    _create_triggers()


def downgrade() -> None:
    _drop_triggers()
    op.drop_table("schedules")
    op.drop_table("workers")
    op.drop_table("steps")
    op.drop_index(
        "runs_worker",
        table_name="runs",
        postgresql_where=sa.text("status = 'running'"),
        sqlite_where=sa.text("status = 'running'"),
    )
    op.drop_index("runs_status_created", table_name="runs")
    op.drop_index(
        "runs_parent",
        table_name="runs",
        postgresql_where=sa.text("parent_id IS NOT NULL"),
        sqlite_where=sa.text("parent_id IS NOT NULL"),
    )
    op.drop_index(
        "runs_lease",
        table_name="runs",
        postgresql_where=sa.text("status = 'running'"),
        sqlite_where=sa.text("status = 'running'"),
    )
    op.drop_index("runs_flow_created", table_name="runs")
    op.drop_index("runs_finished", table_name="runs")
    op.drop_index("runs_created", table_name="runs")
    op.drop_index(
        "runs_claim",
        table_name="runs",
        postgresql_where=sa.text("status IN ('queued', 'scheduled', 'retrying', 'sleeping')"),
        sqlite_where=sa.text("status IN ('queued', 'scheduled', 'retrying', 'sleeping')"),
    )
    op.drop_table("runs")
    op.drop_index("run_events_run", table_name="run_events")
    op.drop_table("run_events")
    op.drop_index("logs_run", table_name="logs")
    op.drop_table("logs")
    op.drop_table("flows")


_SCHEDULE_ACTIVE = "schedule_id IS NOT NULL AND status IN ('queued', 'scheduled', 'retrying', 'sleeping', 'running')"
_PG_NOW = "(EXTRACT(EPOCH FROM statement_timestamp()) * 1000)::bigint"
_SQLITE_NOW = "CAST(ROUND((julianday('now') - 2440587.5) * 86400000) AS INTEGER)"
_EVENT_COLUMNS = "(run_id, ts, status, attempt, worker_id)"


def _create_triggers() -> None:
    if op.get_bind().dialect.name == "postgresql":
        # Statement-level triggers with transition tables: one INSERT ... SELECT per
        # statement, however many runs it touched (bulk enqueue, batched claims and finishes).
        op.execute(
            f"""
            CREATE FUNCTION legato_runs_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
              INSERT INTO run_events {_EVENT_COLUMNS}
              SELECT n.id, {_PG_NOW}, n.status, n.attempts, n.worker_id FROM new_rows n;
              IF EXISTS (SELECT 1 FROM new_rows WHERE status = 'queued') THEN
                PERFORM pg_notify('legato_' || TG_TABLE_SCHEMA, 'queued');
              END IF;
              RETURN NULL;
            END $$
            """
        )
        op.execute(
            f"""
            CREATE FUNCTION legato_runs_updated() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
              INSERT INTO run_events {_EVENT_COLUMNS}
              SELECT n.id, {_PG_NOW}, n.status, n.attempts, n.worker_id
              FROM new_rows n JOIN old_rows o ON o.id = n.id
              WHERE o.status IS DISTINCT FROM n.status;
              IF EXISTS (SELECT 1 FROM new_rows n JOIN old_rows o ON o.id = n.id
                         WHERE n.status = 'queued' AND o.status <> 'queued') THEN
                PERFORM pg_notify('legato_' || TG_TABLE_SCHEMA, 'queued');
              END IF;
              RETURN NULL;
            END $$
            """
        )
        op.execute(
            "CREATE TRIGGER runs_insert_event AFTER INSERT ON runs REFERENCING NEW TABLE AS "
            "new_rows FOR EACH STATEMENT EXECUTE FUNCTION legato_runs_inserted()"
        )
        op.execute(
            "CREATE TRIGGER runs_status_event AFTER UPDATE ON runs REFERENCING OLD TABLE AS "
            "old_rows NEW TABLE AS new_rows FOR EACH STATEMENT "
            "EXECUTE FUNCTION legato_runs_updated()"
        )
        return
    body = (
        f"INSERT INTO run_events {_EVENT_COLUMNS} "
        f"VALUES (NEW.id, {_SQLITE_NOW}, NEW.status, NEW.attempts, NEW.worker_id);"
    )
    op.execute(f"CREATE TRIGGER runs_insert_event AFTER INSERT ON runs BEGIN {body} END")
    op.execute(
        "CREATE TRIGGER runs_status_event AFTER UPDATE OF status ON runs "
        f"WHEN OLD.status IS NOT NEW.status BEGIN {body} END"
    )


def _drop_triggers() -> None:
    op.execute("DROP TRIGGER IF EXISTS runs_status_event" + _on_runs())
    op.execute("DROP TRIGGER IF EXISTS runs_insert_event" + _on_runs())
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS legato_runs_inserted()")
        op.execute("DROP FUNCTION IF EXISTS legato_runs_updated()")


def _on_runs() -> str:
    return " ON runs" if op.get_bind().dialect.name == "postgresql" else ""
