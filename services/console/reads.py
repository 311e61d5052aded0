"""The console's reads of the projection, each limited to the tenants the principal may read.

Runs are listed newest first with keyset pagination on ``(created_at, run_id)`` (the cursor is
the last row's pair, opaque to clients), so a page costs the same at any depth. One run's full
history reuses :func:`services.projector.queries.run_timeline`.
"""

from __future__ import annotations

import base64
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from services.contracts.vocabulary import RunStatus
from services.projector.models import DeadLetterRow, Run, TenantRow
from services.projector.queries import RunTimeline, run_timeline

RUN_STATES: tuple[str, ...] = tuple(s.value for s in RunStatus)
IN_FLIGHT = (RunStatus.RUNNING, RunStatus.RETRYING)
MAX_PAGE = 500


@dataclass(frozen=True)
class RunFilter:
    tenant: str | None = None
    workflow: str | None = None
    version: int | None = None
    state: str | None = None
    error_kind: str | None = None
    created_from: datetime | None = None
    created_to: datetime | None = None
    correlation_id: str | None = None
    idempotency_key: str | None = None


def encode_cursor(created_at: datetime, run_id: str) -> str:
    raw = f"{created_at.isoformat()}|{run_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The (created_at, run_id) of a cursor; ``ValueError`` for anything not made by encode_cursor."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        at, run_id = raw.split("|", 1)
        parsed = datetime.fromisoformat(at)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError("malformed cursor") from exc
    if parsed.tzinfo is None or not run_id:
        raise ValueError("malformed cursor")
    return parsed, run_id


def _scoped(stmt: Any, column: Any, tenants: Collection[str] | None) -> Any:
    return stmt if tenants is None else stmt.where(column.in_(sorted(tenants)))


def _run_conditions(f: RunFilter, *, with_state: bool = True) -> list[Any]:
    conds: list[Any] = []
    for column, value in (
        (Run.tenant, f.tenant),
        (Run.workflow, f.workflow),
        (Run.version, f.version),
        (Run.error_kind, f.error_kind),
        (Run.correlation_id, f.correlation_id),
        (Run.idempotency_key, f.idempotency_key),
    ):
        if value is not None:
            conds.append(column == value)
    if with_state and f.state is not None:
        conds.append(Run.state == f.state)
    if f.created_from is not None:
        conds.append(Run.created_at >= f.created_from)
    if f.created_to is not None:
        conds.append(Run.created_at < f.created_to)
    return conds


def list_runs(
    session: Session,
    tenants: Collection[str] | None,
    f: RunFilter,
    limit: int = 50,
    cursor: str | None = None,
) -> tuple[list[Run], str | None]:
    """A page of runs (newest first) and the cursor of the next page (None: last page)."""
    limit = max(1, min(limit, MAX_PAGE))
    stmt = _scoped(sa.select(Run), Run.tenant, tenants).where(*_run_conditions(f))
    if cursor is not None:
        at, run_id = decode_cursor(cursor)
        stmt = stmt.where(sa.tuple_(Run.created_at, Run.run_id) < sa.tuple_(at, run_id))
    stmt = stmt.order_by(Run.created_at.desc(), Run.run_id.desc()).limit(limit + 1)
    rows = list(session.scalars(stmt))
    if len(rows) <= limit:
        return rows, None
    last = rows[limit - 1]
    return rows[:limit], encode_cursor(last.created_at, last.run_id)


def state_counts(session: Session, tenants: Collection[str] | None, f: RunFilter) -> dict[str, int]:
    """Runs per state under the same filters (the state filter itself ignored)."""
    stmt = _scoped(sa.select(Run.state, sa.func.count()), Run.tenant, tenants)
    stmt = stmt.where(*_run_conditions(f, with_state=False)).group_by(Run.state)
    counts = dict.fromkeys(RUN_STATES, 0)
    counts.update({state: int(n) for state, n in session.execute(stmt)})
    return counts


def timeline(session: Session, tenants: Collection[str] | None, run_id: str) -> RunTimeline | None:
    """One run's history, or None when it is unknown *or* outside the principal's tenants."""
    found = run_timeline(session, run_id)
    if found is None or (tenants is not None and found.run.tenant not in tenants):
        return None
    return found


def run_tenant(session: Session, tenants: Collection[str] | None, run_id: str) -> str | None:
    stmt = _scoped(sa.select(Run.tenant), Run.tenant, tenants).where(Run.run_id == run_id)
    tenant: str | None = session.scalar(stmt)
    return tenant


@dataclass(frozen=True)
class DeadLetterFilter:
    tenant: str | None = None
    error_kind: str | None = None
    service: str | None = None
    run_id: str | None = None
    failed_from: datetime | None = None
    failed_to: datetime | None = None


def list_dead_letters(
    session: Session,
    tenants: Collection[str] | None,
    f: DeadLetterFilter,
    limit: int = 50,
    cursor: str | None = None,
) -> tuple[list[DeadLetterRow], str | None]:
    """Newest dead letters first (keyset on ``(failed_at, dlq_id)``) and the next page's cursor."""
    limit = max(1, min(limit, MAX_PAGE))
    stmt = _scoped(sa.select(DeadLetterRow), DeadLetterRow.tenant, tenants)
    for column, value in (
        (DeadLetterRow.tenant, f.tenant),
        (DeadLetterRow.error_kind, f.error_kind),
        (DeadLetterRow.service, f.service),
        (DeadLetterRow.run_id, f.run_id),
    ):
        if value is not None:
            stmt = stmt.where(column == value)
    if f.failed_from is not None:
        stmt = stmt.where(DeadLetterRow.failed_at >= f.failed_from)
    if f.failed_to is not None:
        stmt = stmt.where(DeadLetterRow.failed_at < f.failed_to)
    if cursor is not None:
        at, dlq_id = decode_cursor(cursor)
        stmt = stmt.where(sa.tuple_(DeadLetterRow.failed_at, DeadLetterRow.dlq_id) < sa.tuple_(at, dlq_id))
    stmt = stmt.order_by(DeadLetterRow.failed_at.desc(), DeadLetterRow.dlq_id.desc()).limit(limit + 1)
    rows = list(session.scalars(stmt))
    if len(rows) <= limit:
        return rows, None
    last = rows[limit - 1]
    return rows[:limit], encode_cursor(last.failed_at, last.dlq_id)


def dead_letter(session: Session, tenants: Collection[str] | None, dlq_id: str) -> DeadLetterRow | None:
    row = session.get(DeadLetterRow, dlq_id)
    if row is None or (tenants is not None and row.tenant not in tenants):
        return None
    return row


@dataclass(frozen=True)
class TenantUsage:
    tenant: TenantRow
    counts: dict[str, int]
    recent_failures: list[Run]

    @property
    def in_flight(self) -> int:
        return sum(self.counts.get(s, 0) for s in IN_FLIGHT)

    @property
    def pending(self) -> int:
        return self.counts.get("pending", 0)


def list_tenants(session: Session, tenants: Collection[str] | None) -> list[TenantRow]:
    stmt = _scoped(sa.select(TenantRow), TenantRow.tenant, tenants).order_by(TenantRow.tenant)
    return list(session.scalars(stmt))


def tenant_usage(
    session: Session, tenants: Collection[str] | None, tenant: str, failures: int = 10
) -> TenantUsage | None:
    """A tenant's mirrored configuration, its unfinished runs by state and its latest failed runs."""
    if tenants is not None and tenant not in tenants:
        return None
    row = session.get(TenantRow, tenant)
    if row is None:
        return None
    # Only unfinished states are counted: finished runs grow without bound, these do not.
    open_states = ("pending", "running", "retrying")
    counts = dict.fromkeys(open_states, 0)
    stmt = (
        sa.select(Run.state, sa.func.count())
        .where(Run.tenant == tenant, Run.state.in_(open_states))
        .group_by(Run.state)
    )
    counts.update({state: int(n) for state, n in session.execute(stmt)})
    recent = session.scalars(
        sa.select(Run)
        .where(Run.tenant == tenant, Run.state == "failed")
        .order_by(Run.created_at.desc(), Run.run_id.desc())
        .limit(failures)
    )
    return TenantUsage(row, counts, list(recent))
