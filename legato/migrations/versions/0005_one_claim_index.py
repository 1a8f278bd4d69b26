"""one claim index

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25

Runs with limits and plain runs share one claim index again, told apart by a column:
``runs.gated`` (1 when ``limit_keys`` is set) leads the order after the queue, so the plain
claim reads ``(queue, gated = 0)`` and the gated claim ``(queue, gated = 1)``, each in
``claim_at`` order. Two partial indexes whose predicates both name ``status`` cost every
claim and every finish a second index check (about 10% of the statement on SQLite).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

CLAIMABLE = "status IN ('queued', 'scheduled', 'retrying', 'sleeping')"


def _postgres() -> bool:
    return op.get_bind().dialect.name == "postgresql"


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("gated", sa.SmallInteger(), server_default="0", nullable=False))
    op.execute("UPDATE runs SET gated = 1 WHERE limit_keys IS NOT NULL")
    for name, where in (
        ("runs_claim", f"{CLAIMABLE} AND limit_keys IS NULL"),
        ("runs_gated", f"{CLAIMABLE} AND limit_keys IS NOT NULL"),
    ):
        op.drop_index(
            name, table_name="runs", postgresql_where=sa.text(where), sqlite_where=sa.text(where)
        )
    # SQLite indexes end with the rowid, its submission order; PostgreSQL names ``seq``.
    columns = ["queue", "gated", "claim_at", *(["seq"] if _postgres() else [])]
    op.create_index(
        "runs_claim",
        "runs",
        columns,
        unique=False,
        postgresql_where=sa.text(CLAIMABLE),
        sqlite_where=sa.text(CLAIMABLE),
    )


def downgrade() -> None:
    op.drop_index(
        "runs_claim",
        table_name="runs",
        postgresql_where=sa.text(CLAIMABLE),
        sqlite_where=sa.text(CLAIMABLE),
    )
    extra = ["seq"] if _postgres() else []
    for name, where in (
        ("runs_claim", f"{CLAIMABLE} AND limit_keys IS NULL"),
        ("runs_gated", f"{CLAIMABLE} AND limit_keys IS NOT NULL"),
    ):
        op.create_index(
            name,
            "runs",
            ["queue", "claim_at", *extra],
            unique=False,
            postgresql_where=sa.text(where),
            sqlite_where=sa.text(where),
        )
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("gated")
