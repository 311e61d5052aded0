"""The read side of the projection: run listings and one run's full timeline.

Used by ``switchyard runs``; plain functions over a SQLAlchemy :class:`~sqlalchemy.orm.Session`
so that other read paths (an API, tests) share them. ``as_dict`` helpers give JSON-ready rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from services.projector.models import Attempt, Base, Run, RunEventRow, Step


@dataclass(frozen=True)
class RunTimeline:
    """A run with its steps (in start order), attempts (in schedule order) and events (by ``seq``)."""

    run: Run
    steps: list[Step]
    attempts: list[Attempt]
    events: list[RunEventRow]

    def attempts_of(self, step_id: str) -> list[Attempt]:
        return [a for a in self.attempts if a.step_id == step_id]

    def as_dict(self) -> dict[str, Any]:
        return {
            "run": as_dict(self.run),
            "steps": [
                {**as_dict(step), "attempt_rows": [as_dict(a) for a in self.attempts_of(step.step_id)]}
                for step in self.steps
            ],
            "events": [as_dict(e) for e in self.events],
        }


def as_dict(row: Base) -> dict[str, Any]:
    """A model row as a JSON-ready dict (timestamps in ISO 8601)."""
    out: dict[str, Any] = {}
    for column in sa.inspect(type(row)).columns:
        value = getattr(row, column.key)
        out[column.key] = value.isoformat() if isinstance(value, datetime) else value
    return out


def list_runs(
    session: Session,
    tenant: str | None = None,
    workflow: str | None = None,
    state: str | None = None,
    limit: int = 50,
) -> list[Run]:
    """Newest runs first, filtered by tenant, workflow and state (each optional)."""
    stmt = sa.select(Run)
    if tenant is not None:
        stmt = stmt.where(Run.tenant == tenant)
    if workflow is not None:
        stmt = stmt.where(Run.workflow == workflow)
    if state is not None:
        stmt = stmt.where(Run.state == state)
    stmt = stmt.order_by(Run.created_at.desc(), Run.run_id).limit(max(1, limit))
    return list(session.scalars(stmt))


def run_timeline(session: Session, run_id: str) -> RunTimeline | None:
    """Everything known about ``run_id``, or None when the run is unknown."""
    run = session.get(Run, run_id)
    if run is None:
        return None
    steps = session.scalars(
        sa.select(Step)
        .where(Step.run_id == run_id)
        .order_by(Step.started_at.asc().nulls_last(), Step.step_id)
    )
    attempts = session.scalars(
        sa.select(Attempt)
        .where(Attempt.run_id == run_id)
        .order_by(Attempt.scheduled_at.asc().nulls_last(), Attempt.step_id, Attempt.attempt)
    )
    events = session.scalars(
        sa.select(RunEventRow).where(RunEventRow.run_id == run_id).order_by(RunEventRow.seq)
    )
    return RunTimeline(run, list(steps), list(attempts), list(events))
