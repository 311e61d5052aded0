"""Reads of ``dead_letters`` with their re-drives (``dead_letter_redrives``) for ``switchyard dlq``."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from services.dlq.filters import DeadLetterFilter
from services.projector.models import DeadLetterRedrive, DeadLetterRow


@dataclass(frozen=True)
class Listed:
    """A dead letter as ``dlq list`` shows it: how often it was re-driven, and when last."""

    letter: DeadLetterRow
    redrives: int
    last_redriven_at: datetime | None


def _redrive_counts() -> sa.Subquery:
    return (
        sa.select(
            DeadLetterRedrive.dlq_id,
            sa.func.count().label("n"),
            sa.func.max(DeadLetterRedrive.redriven_at).label("last"),
        )
        .group_by(DeadLetterRedrive.dlq_id)
        .subquery()
    )


def _filtered(stmt: sa.Select[Any], f: DeadLetterFilter, counts: sa.Subquery) -> sa.Select[Any]:
    for column, value in (
        (DeadLetterRow.tenant, f.tenant),
        (DeadLetterRow.error_kind, f.error_kind),
        (DeadLetterRow.original_topic, f.source_topic),
    ):
        if value is not None:
            stmt = stmt.where(column == value)
    if f.since is not None:
        stmt = stmt.where(DeadLetterRow.failed_at >= f.since)
    if f.until is not None:
        stmt = stmt.where(DeadLetterRow.failed_at < f.until)
    if f.redriven is True:
        stmt = stmt.where(counts.c.n.is_not(None))
    elif f.redriven is False:
        stmt = stmt.where(counts.c.n.is_(None))
    return stmt


def list_dead_letters(session: Session, f: DeadLetterFilter, limit: int) -> list[Listed]:
    """Newest first (by failure time, then id), at most ``limit``."""
    counts = _redrive_counts()
    stmt = sa.select(DeadLetterRow, counts.c.n, counts.c.last).outerjoin(
        counts, counts.c.dlq_id == DeadLetterRow.dlq_id
    )
    stmt = _filtered(stmt, f, counts)
    stmt = stmt.order_by(DeadLetterRow.failed_at.desc(), DeadLetterRow.dlq_id.desc()).limit(limit)
    return [Listed(row, n or 0, last) for row, n, last in session.execute(stmt)]


def select_for_redrive(session: Session, f: DeadLetterFilter, limit: int) -> list[DeadLetterRow]:
    """The dead letters a bulk re-drive takes: oldest first (the order they arrived), at most ``limit``."""
    counts = _redrive_counts()
    stmt = sa.select(DeadLetterRow).outerjoin(counts, counts.c.dlq_id == DeadLetterRow.dlq_id)
    stmt = _filtered(stmt, f, counts)
    stmt = stmt.order_by(DeadLetterRow.failed_at, DeadLetterRow.dlq_id).limit(limit)
    return list(session.scalars(stmt))


def dead_letters_by_id(session: Session, dlq_ids: Collection[str]) -> dict[str, DeadLetterRow]:
    if not dlq_ids:
        return {}
    rows = session.scalars(sa.select(DeadLetterRow).where(DeadLetterRow.dlq_id.in_(list(dlq_ids))))
    return {row.dlq_id: row for row in rows}


def redrives_of(session: Session, dlq_ids: Collection[str]) -> dict[str, list[DeadLetterRedrive]]:
    """Every re-drive of each of ``dlq_ids``, oldest first."""
    found: dict[str, list[DeadLetterRedrive]] = {dlq_id: [] for dlq_id in dlq_ids}
    if not dlq_ids:
        return found
    stmt = (
        sa.select(DeadLetterRedrive)
        .where(DeadLetterRedrive.dlq_id.in_(list(dlq_ids)))
        .order_by(DeadLetterRedrive.redriven_at, DeadLetterRedrive.redrive_id)
    )
    for row in session.scalars(stmt):
        found[row.dlq_id].append(row)
    return found
