"""API indexes

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25

Indexes for the REST API's run list filtered by queue or by trigger (newest first). Without
them, a filter that matches few runs (or none: ``trigger=event`` before any event, an unused
queue) reads the whole ``runs_created`` index: 120-240 ms over a million runs on PostgreSQL,
4-8 ms with them (``benchmarks/bench_api.py``).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "runs_queue_created", "runs", ["queue", sa.literal_column("created_at DESC")], unique=False
    )
    op.create_index(
        "runs_trigger_created",
        "runs",
        ["trigger", sa.literal_column("created_at DESC")],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("runs_trigger_created", table_name="runs")
    op.drop_index("runs_queue_created", table_name="runs")
