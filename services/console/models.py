"""The console's own tables, in the PostgreSQL schema ``console`` (created by migration 0004).

``operators`` are people (or automation) using the console; ``grants`` give an operator a role
on one tenant or, with tenant ``*``, on all; ``tokens`` hold hashed secrets, each either an
operator's (API and UI login) or a tenant's (the webhook trigger endpoint). A separate schema
keeps them apart from the projection, which can be rebuilt from Kafka: these cannot.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, ForeignKey, MetaData, String, func
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

SCHEMA = "console"
ALL_TENANTS = "*"
ROLES = ("viewer", "operator")
"""``viewer`` reads; ``operator`` also replays and cancels."""

Timestamp = DateTime(timezone=True)


class ConsoleBase(DeclarativeBase):
    metadata = MetaData(schema=SCHEMA)


class Operator(ConsoleBase):
    __tablename__ = "operators"

    name: Mapped[str] = mapped_column(String, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())
    disabled_at: Mapped[datetime | None] = mapped_column(Timestamp)


class Grant(ConsoleBase):
    __tablename__ = "grants"

    operator: Mapped[str] = mapped_column(
        String, ForeignKey(f"{SCHEMA}.operators.name", ondelete="CASCADE"), primary_key=True
    )
    tenant: Mapped[str] = mapped_column(String, primary_key=True)
    role: Mapped[str] = mapped_column(String)


class Token(ConsoleBase):
    __tablename__ = "tokens"

    token_id: Mapped[str] = mapped_column(String, primary_key=True)
    kind: Mapped[str] = mapped_column(String)  # "operator" | "trigger"
    subject: Mapped[str] = mapped_column(String)  # operator name or tenant
    hashed: Mapped[str] = mapped_column(String)
    label: Mapped[str | None] = mapped_column(String)
    created_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())
    revoked_at: Mapped[datetime | None] = mapped_column(Timestamp)
