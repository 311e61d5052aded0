"""Operator commands and dead letters: control_commands, dead_letters; runs.error_kind index.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "control_commands",
        sa.Column("command_id", sa.String(), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("requester", sa.String(), nullable=False),
        sa.Column("tenant", sa.String(), nullable=True),
        sa.Column("run_id", sa.String(), nullable=True),
        sa.Column("step_id", sa.String(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("command_correlation_id", sa.String(), nullable=True),
        sa.Column("outcome", sa.String(), nullable=False),
        sa.Column("refusal", sa.Text(), nullable=True),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("source", sa.String(), nullable=False),
        sa.Column("source_id", sa.String(), nullable=False),
        sa.Column("kafka_topic", sa.String(), nullable=False),
        sa.Column("kafka_partition", sa.Integer(), nullable=False),
        sa.Column("kafka_offset", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("command_id", name=op.f("pk_control_commands")),
    )
    op.create_index(
        op.f("ix_control_commands_run_id_decided_at"), "control_commands", ["run_id", "decided_at"]
    )
    op.create_index(
        op.f("ix_control_commands_tenant_decided_at"), "control_commands", ["tenant", "decided_at"]
    )
    op.create_index(
        op.f("ix_control_commands_requester_decided_at"), "control_commands", ["requester", "decided_at"]
    )
    op.create_table(
        "dead_letters",
        sa.Column("dlq_id", sa.String(), nullable=False),
        sa.Column("service", sa.String(), nullable=False),
        sa.Column("error_kind", sa.String(), nullable=False),
        sa.Column("error_message", sa.Text(), nullable=False),
        sa.Column("original_topic", sa.String(), nullable=True),
        sa.Column("original_partition", sa.Integer(), nullable=True),
        sa.Column("original_offset", sa.BigInteger(), nullable=True),
        sa.Column("original_key", sa.LargeBinary(), nullable=True),
        sa.Column("original_value", sa.LargeBinary(), nullable=True),
        sa.Column("original_value_size", sa.Integer(), nullable=False),
        sa.Column("tenant", sa.String(), nullable=True),
        sa.Column("correlation_id", sa.String(), nullable=True),
        sa.Column("run_id", sa.String(), nullable=True),
        sa.Column("step_id", sa.String(), nullable=True),
        sa.Column("attempt", sa.Integer(), nullable=True),
        sa.Column("failed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kafka_topic", sa.String(), nullable=False),
        sa.Column("kafka_partition", sa.Integer(), nullable=False),
        sa.Column("kafka_offset", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("dlq_id", name=op.f("pk_dead_letters")),
    )
    op.create_index(op.f("ix_dead_letters_failed_at"), "dead_letters", ["failed_at"])
    op.create_index(op.f("ix_dead_letters_tenant_failed_at"), "dead_letters", ["tenant", "failed_at"])
    op.create_index(op.f("ix_dead_letters_error_kind_failed_at"), "dead_letters", ["error_kind", "failed_at"])
    op.create_index(op.f("ix_dead_letters_run_id"), "dead_letters", ["run_id"])
    op.create_index(
        op.f("ix_runs_tenant_error_kind_created_at"), "runs", ["tenant", "error_kind", "created_at"]
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_runs_tenant_error_kind_created_at"), table_name="runs")
    op.drop_table("dead_letters")
    op.drop_table("control_commands")
