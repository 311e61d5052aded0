"""Sub-workflows: ``runs.parent_run_id`` (the run whose `workflow:` step started this one) and
its index, so a parent's children are found without reading their events.

Revision ID: 0006_subworkflows
Revises: 0005_dlq_redrives
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_subworkflows"
down_revision: str | None = "0005_dlq_redrives"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("runs", sa.Column("parent_run_id", sa.String(), nullable=True))
    op.create_index(op.f("ix_runs_parent_run_id"), "runs", ["parent_run_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_runs_parent_run_id"), table_name="runs")
    op.drop_column("runs", "parent_run_id")
