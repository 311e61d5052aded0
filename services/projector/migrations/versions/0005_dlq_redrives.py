"""The audit of dead-letter re-drives: dead_letter_redrives.

Revision ID: 0005_dlq_redrives
Revises: 0004_console
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_dlq_redrives"
down_revision: str | None = "0004_console"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "dead_letter_redrives",
        sa.Column("redrive_id", sa.String(), nullable=False),
        sa.Column("dlq_id", sa.String(), nullable=False),
        sa.Column("tenant", sa.String(), nullable=True),
        sa.Column("requester", sa.String(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("bulk_id", sa.String(), nullable=False),
        sa.Column("redriven_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("target_topic", sa.String(), nullable=False),
        sa.Column("target_partition", sa.Integer(), nullable=False),
        sa.Column("target_offset", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("redrive_id", name=op.f("pk_dead_letter_redrives")),
    )
    op.create_index(
        op.f("ix_dead_letter_redrives_dlq_id_redriven_at"), "dead_letter_redrives", ["dlq_id", "redriven_at"]
    )
    op.create_index(
        op.f("ix_dead_letter_redrives_tenant_redriven_at"), "dead_letter_redrives", ["tenant", "redriven_at"]
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_dead_letter_redrives_tenant_redriven_at"), table_name="dead_letter_redrives")
    op.drop_index(op.f("ix_dead_letter_redrives_dlq_id_redriven_at"), table_name="dead_letter_redrives")
    op.drop_table("dead_letter_redrives")
