"""durable cancel requests and poison evidence

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01

Two columns for poison detection that needs evidence: ``runs.executing`` (1 while the run's
code runs in its worker's process, as opposed to merely claimed) and ``runs.crashes`` (lease
expiries that found the run executing). A cancel request now stays until it is honoured, so
waiting runs that still carry one from before (an attempt retried or slept after the request)
end ``cancelled`` as their requester asked.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_PG_NOW = "(EXTRACT(EPOCH FROM statement_timestamp()) * 1000)::bigint"
_SQLITE_NOW = "CAST(ROUND((julianday('now') - 2440587.5) * 86400000) AS INTEGER)"


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(
            sa.Column("executing", sa.SmallInteger(), server_default="0", nullable=False)
        )
        batch.add_column(sa.Column("crashes", sa.Integer(), server_default="0", nullable=False))
    now = _PG_NOW if op.get_bind().dialect.name == "postgresql" else _SQLITE_NOW
    op.execute(
        f"UPDATE runs SET status = 'cancelled', finished_at = {now}, error = 'cancelled' "
        "WHERE cancel_requested = 1 "
        "AND status IN ('queued', 'scheduled', 'retrying', 'sleeping')"
    )


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("crashes")
        batch.drop_column("executing")
