"""The projection's tables (SQLAlchemy 2 typed declarative models).

``runs``, ``steps`` and ``attempts`` hold the latest state; ``run_events`` is the full history
(one row per ``RunEvent``, unique by ``event_id`` and by ``(run_id, seq)``); ``consumer_offsets``
stores, in the same transaction as the rows, the next Kafka offset to read per partition;
``projector_rejects`` keeps every record that could not be projected, with the reason; ``tenants``
mirrors the tenants registry; ``dead_letters`` materialises every record of ``<prefix>.dlq``;
``control_commands`` holds every operator command's outcome (from ``control_accepted`` /
``control_refused`` run events, and from control refusals dead-lettered before reaching a run).
``dead_letter_redrives`` is the audit of operators' re-drives (``switchyard dlq redrive``): written by
the CLI, not projected, so it is the one table here a rebuild from Kafka cannot reproduce.
Every change here needs an Alembic revision in ``migrations/versions`` (a test compares them).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    DateTime,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

Timestamp = DateTime(timezone=True)
# Python None is SQL NULL (absent), not the JSON literal null.
Json = JSONB(none_as_null=True)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Run(Base):
    __tablename__ = "runs"

    run_id: Mapped[str] = mapped_column(String, primary_key=True)
    tenant: Mapped[str] = mapped_column(String)
    workflow: Mapped[str] = mapped_column(String)
    version: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String)
    correlation_id: Mapped[str] = mapped_column(String)
    idempotency_key: Mapped[str | None] = mapped_column(String)
    event_type: Mapped[str | None] = mapped_column(String)
    trigger_data: Mapped[Any | None] = mapped_column(Json)
    created_at: Mapped[datetime] = mapped_column(Timestamp)
    started_at: Mapped[datetime | None] = mapped_column(Timestamp)
    finished_at: Mapped[datetime | None] = mapped_column(Timestamp)
    updated_at: Mapped[datetime] = mapped_column(Timestamp)
    last_seq: Mapped[int] = mapped_column(Integer)
    error_kind: Mapped[str | None] = mapped_column(String)
    error_message: Mapped[str | None] = mapped_column(Text)
    parent_run_id: Mapped[str | None] = mapped_column(String)  # a sub-workflow's parent run

    __table_args__ = (
        Index(None, "created_at"),
        Index(None, "tenant", "created_at"),
        Index(None, "tenant", "workflow", "created_at"),
        Index(None, "state", "created_at"),
        Index(None, "workflow", "created_at"),
        Index(None, "correlation_id"),
        Index(None, "tenant", "error_kind", "created_at"),
        # the console's runs list (migration 0004_console)
        Index(None, "tenant", "state", "created_at"),
        Index(None, "idempotency_key"),
        Index(None, "parent_run_id"),  # a parent's children (migration 0006_subworkflows)
    )


class Step(Base):
    __tablename__ = "steps"

    run_id: Mapped[str] = mapped_column(
        String, ForeignKey("runs.run_id", ondelete="CASCADE"), primary_key=True
    )
    step_id: Mapped[str] = mapped_column(String, primary_key=True)
    state: Mapped[str] = mapped_column(String)
    attempts: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime | None] = mapped_column(Timestamp)
    finished_at: Mapped[datetime | None] = mapped_column(Timestamp)
    output: Mapped[Any | None] = mapped_column(Json)
    error_kind: Mapped[str | None] = mapped_column(String)
    error_message: Mapped[str | None] = mapped_column(Text)


class Attempt(Base):
    __tablename__ = "attempts"

    run_id: Mapped[str] = mapped_column(String, primary_key=True)
    step_id: Mapped[str] = mapped_column(String, primary_key=True)
    attempt: Mapped[int] = mapped_column(Integer, primary_key=True)
    state: Mapped[str] = mapped_column(String)
    idempotency_key: Mapped[str | None] = mapped_column(String)
    inputs: Mapped[Any | None] = mapped_column(Json)
    scheduled_at: Mapped[datetime | None] = mapped_column(Timestamp)
    started_at: Mapped[datetime | None] = mapped_column(Timestamp)
    finished_at: Mapped[datetime | None] = mapped_column(Timestamp)
    output: Mapped[Any | None] = mapped_column(Json)
    error_kind: Mapped[str | None] = mapped_column(String)
    error_message: Mapped[str | None] = mapped_column(Text)
    executor_id: Mapped[str | None] = mapped_column(String)

    __table_args__ = (
        ForeignKeyConstraint(["run_id", "step_id"], ["steps.run_id", "steps.step_id"], ondelete="CASCADE"),
    )


class RunEventRow(Base):
    __tablename__ = "run_events"

    event_id: Mapped[str] = mapped_column(String, primary_key=True)
    run_id: Mapped[str] = mapped_column(String, ForeignKey("runs.run_id", ondelete="CASCADE"))
    tenant: Mapped[str] = mapped_column(String)
    workflow: Mapped[str] = mapped_column(String)
    version: Mapped[int] = mapped_column(Integer)
    seq: Mapped[int] = mapped_column(Integer)
    type: Mapped[str] = mapped_column(String)
    step_id: Mapped[str | None] = mapped_column(String)
    attempt: Mapped[int | None] = mapped_column(Integer)
    state: Mapped[str | None] = mapped_column(String)
    at: Mapped[datetime] = mapped_column(Timestamp)
    correlation_id: Mapped[str] = mapped_column(String)
    detail: Mapped[Any | None] = mapped_column(Json)
    kafka_topic: Mapped[str] = mapped_column(String)
    kafka_partition: Mapped[int] = mapped_column(Integer)
    kafka_offset: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (
        UniqueConstraint("run_id", "seq"),
        Index(None, "tenant", "at"),
        Index(None, "type"),
    )


class ConsumerOffset(Base):
    __tablename__ = "consumer_offsets"

    consumer: Mapped[str] = mapped_column(String, primary_key=True)
    topic: Mapped[str] = mapped_column(String, primary_key=True)
    partition: Mapped[int] = mapped_column(Integer, primary_key=True)
    next_offset: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())


class ProjectorReject(Base):
    __tablename__ = "projector_rejects"

    topic: Mapped[str] = mapped_column(String, primary_key=True)
    partition: Mapped[int] = mapped_column(Integer, primary_key=True)
    offset: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    consumer: Mapped[str] = mapped_column(String)
    reason: Mapped[str] = mapped_column(String)
    message: Mapped[str] = mapped_column(Text)
    key: Mapped[bytes | None] = mapped_column(LargeBinary)
    payload: Mapped[bytes | None] = mapped_column(LargeBinary)
    payload_size: Mapped[int] = mapped_column(Integer)
    rejected_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())

    __table_args__ = (Index(None, "rejected_at"),)


class TenantRow(Base):
    """Mirror of the compacted tenants registry (public keys only; the registry stays the source)."""

    __tablename__ = "tenants"

    tenant: Mapped[str] = mapped_column(String, primary_key=True)
    status: Mapped[str] = mapped_column(String)
    config: Mapped[dict[str, Any]] = mapped_column(Json)
    updated_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())


class ControlCommandRow(Base):
    """One operator command (replay/cancel) and what became of it.

    ``source`` says where the decision was read: ``run_history`` (a ``control_accepted`` /
    ``control_refused`` event of the run) or ``dlq`` (refused before reaching a run: unauthorised,
    unknown run, ...). ``kafka_*`` and ``source_id`` (event id or dlq id) point at that record.
    """

    __tablename__ = "control_commands"

    command_id: Mapped[str] = mapped_column(String, primary_key=True)
    kind: Mapped[str] = mapped_column(String)
    requester: Mapped[str] = mapped_column(String)
    tenant: Mapped[str | None] = mapped_column(String)
    run_id: Mapped[str | None] = mapped_column(String)
    step_id: Mapped[str | None] = mapped_column(String)
    reason: Mapped[str | None] = mapped_column(Text)
    command_correlation_id: Mapped[str | None] = mapped_column(String)
    outcome: Mapped[str] = mapped_column(String)
    refusal: Mapped[str | None] = mapped_column(Text)
    decided_at: Mapped[datetime] = mapped_column(Timestamp)
    source: Mapped[str] = mapped_column(String)
    source_id: Mapped[str] = mapped_column(String)
    kafka_topic: Mapped[str] = mapped_column(String)
    kafka_partition: Mapped[int] = mapped_column(Integer)
    kafka_offset: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (
        Index(None, "run_id", "decided_at"),
        Index(None, "tenant", "decided_at"),
        Index(None, "requester", "decided_at"),
    )


class DeadLetterRow(Base):
    """One record of the dead-letter topic (``original_value`` capped at 64 KiB; its full size kept)."""

    __tablename__ = "dead_letters"

    dlq_id: Mapped[str] = mapped_column(String, primary_key=True)
    service: Mapped[str] = mapped_column(String)
    error_kind: Mapped[str] = mapped_column(String)
    error_message: Mapped[str] = mapped_column(Text)
    original_topic: Mapped[str | None] = mapped_column(String)
    original_partition: Mapped[int | None] = mapped_column(Integer)
    original_offset: Mapped[int | None] = mapped_column(BigInteger)
    original_key: Mapped[bytes | None] = mapped_column(LargeBinary)
    original_value: Mapped[bytes | None] = mapped_column(LargeBinary)
    original_value_size: Mapped[int] = mapped_column(Integer)
    tenant: Mapped[str | None] = mapped_column(String)
    correlation_id: Mapped[str | None] = mapped_column(String)
    run_id: Mapped[str | None] = mapped_column(String)
    step_id: Mapped[str | None] = mapped_column(String)
    attempt: Mapped[int | None] = mapped_column(Integer)
    failed_at: Mapped[datetime] = mapped_column(Timestamp)
    kafka_topic: Mapped[str] = mapped_column(String)
    kafka_partition: Mapped[int] = mapped_column(Integer)
    kafka_offset: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (
        Index(None, "failed_at"),
        Index(None, "tenant", "failed_at"),
        Index(None, "error_kind", "failed_at"),
        Index(None, "run_id"),
    )


class DeadLetterRedrive(Base):
    """One re-drive of a dead-lettered trigger: who, when, why, and where the new record landed.

    Written by ``switchyard dlq redrive`` after the broker confirmed the new record (so a row means
    it was sent); ``dlq_id`` is not a foreign key: the dead letter's row is projected from Kafka and
    may be rebuilt, the audit stays.
    """

    __tablename__ = "dead_letter_redrives"

    redrive_id: Mapped[str] = mapped_column(String, primary_key=True)
    dlq_id: Mapped[str] = mapped_column(String)
    tenant: Mapped[str | None] = mapped_column(String)
    requester: Mapped[str] = mapped_column(String)
    reason: Mapped[str | None] = mapped_column(Text)
    bulk_id: Mapped[str] = mapped_column(String)
    redriven_at: Mapped[datetime] = mapped_column(Timestamp)
    target_topic: Mapped[str] = mapped_column(String)
    target_partition: Mapped[int] = mapped_column(Integer)
    target_offset: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (
        Index(None, "dlq_id", "redriven_at"),
        Index(None, "tenant", "redriven_at"),
    )
