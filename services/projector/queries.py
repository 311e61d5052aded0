"""The read side of the projection: run listings, one run's full timeline, control outcomes, and
what the router reads back (which run ids the history holds, a finished run's state to replay it).

Used by ``switchyard runs``, ``switchyard replay``/``cancel`` and the router's history lookup;
plain functions over a SQLAlchemy :class:`~sqlalchemy.orm.Session` (or connection) so that other
read paths (an API, tests) share them. ``as_dict`` helpers give JSON-ready rows.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session

from services.projector.models import (
    Attempt,
    Base,
    ConsumerOffset,
    ControlCommandRow,
    Run,
    RunEventRow,
    Step,
)


@dataclass(frozen=True)
class RunTimeline:
    """A run with its steps (in start order), attempts (in schedule order), events (by ``seq``) and
    the operator commands about it (in decision order, from ``control_commands``)."""

    run: Run
    steps: list[Step]
    attempts: list[Attempt]
    events: list[RunEventRow]
    commands: list[ControlCommandRow]

    @property
    def replays(self) -> int:
        """How many times the run was replayed (its ``run_replayed`` events)."""
        return sum(1 for e in self.events if e.type == "run_replayed")

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
            "control_commands": [as_dict(c) for c in self.commands],
            "replays": self.replays,
        }


def as_dict(row: Base) -> dict[str, Any]:
    """A model row as a JSON-ready dict (timestamps in ISO 8601)."""
    out: dict[str, Any] = {}
    for column in sa.inspect(type(row)).columns:
        value = getattr(row, column.key)
        out[column.key] = value.isoformat() if isinstance(value, datetime) else value
    return out


_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$", re.IGNORECASE)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """A point in time from ``--since``: ISO 8601 (naive means UTC) or a duration ago (``90m``, ``2d``).

    Raises ``ValueError`` with a readable message otherwise.
    """
    match = _RELATIVE.match(text)
    if match:
        seconds = float(match.group(1)) * _UNITS[match.group(2).lower()]
        return (now or datetime.now(UTC)) - timedelta(seconds=seconds)
    try:
        parsed = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"{text!r} is neither an ISO 8601 date/time nor a duration like 30m, 6h, 2d"
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def list_runs(
    session: Session,
    tenant: str | None = None,
    workflow: str | None = None,
    state: str | None = None,
    limit: int = 50,
    *,
    error_kind: str | None = None,
    since: datetime | None = None,
    correlation_id: str | None = None,
    idempotency_key: str | None = None,
) -> list[Run]:
    """Newest runs first, filtered by tenant, workflow, state, error kind, creation time,
    correlation id and idempotency key (both indexed)."""
    stmt = sa.select(Run)
    if tenant is not None:
        stmt = stmt.where(Run.tenant == tenant)
    if workflow is not None:
        stmt = stmt.where(Run.workflow == workflow)
    if state is not None:
        stmt = stmt.where(Run.state == state)
    if error_kind is not None:
        stmt = stmt.where(Run.error_kind == error_kind)
    if since is not None:
        stmt = stmt.where(Run.created_at >= since)
    if correlation_id is not None:
        stmt = stmt.where(Run.correlation_id == correlation_id)
    if idempotency_key is not None:
        stmt = stmt.where(Run.idempotency_key == idempotency_key)
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
    commands = session.scalars(
        sa.select(ControlCommandRow)
        .where(ControlCommandRow.run_id == run_id)
        .order_by(ControlCommandRow.decided_at, ControlCommandRow.command_id)
    )
    return RunTimeline(run, list(steps), list(attempts), list(events), list(commands))


def failed_runs(
    session: Session,
    tenant: str,
    workflow: str | None = None,
    version: int | None = None,
    error_kind: str | None = None,
    since: datetime | None = None,
) -> list[tuple[str, list[str]]]:
    """(run id, its failed step ids) of the tenant's failed runs, oldest first — for bulk replay.

    Filters: workflow, version, the run's ``error_kind``, created at or after ``since``. Step ids
    are in start order; a run failed without a failed step (e.g. a definition error) has none.
    """
    stmt = sa.select(Run.run_id).where(Run.tenant == tenant, Run.state == "failed")
    if workflow is not None:
        stmt = stmt.where(Run.workflow == workflow)
    if version is not None:
        stmt = stmt.where(Run.version == version)
    if error_kind is not None:
        stmt = stmt.where(Run.error_kind == error_kind)
    if since is not None:
        stmt = stmt.where(Run.created_at >= since)
    run_ids = list(session.scalars(stmt.order_by(Run.created_at, Run.run_id)))
    failed: dict[str, list[str]] = {run_id: [] for run_id in run_ids}
    if run_ids:
        steps = session.execute(
            sa.select(Step.run_id, Step.step_id)
            .where(Step.run_id.in_(sa.select(stmt.subquery().c.run_id)), Step.state == "failed")
            .order_by(Step.started_at.asc().nulls_last(), Step.step_id)
        )
        for run_id, step_id in steps:
            if run_id in failed:
                failed[run_id].append(step_id)
    return list(failed.items())


def control_outcome(session: Session, command_id: str) -> ControlCommandRow | None:
    """The recorded decision on an operator command (``outcome`` accepted|refused, ``refusal``), if any."""
    return session.get(ControlCommandRow, command_id, populate_existing=True)


def control_commands(
    session: Session, tenant: str | None = None, run_id: str | None = None, limit: int = 100
) -> list[ControlCommandRow]:
    """Newest operator commands first, optionally one tenant's or one run's."""
    stmt = sa.select(ControlCommandRow)
    if tenant is not None:
        stmt = stmt.where(ControlCommandRow.tenant == tenant)
    if run_id is not None:
        stmt = stmt.where(ControlCommandRow.run_id == run_id)
    stmt = stmt.order_by(ControlCommandRow.decided_at.desc(), ControlCommandRow.command_id)
    return list(session.scalars(stmt.limit(max(1, limit))))


# --- what the router reads back (services.router.history) ------------------------------------------


def projects(events_topic: str) -> sa.ColumnElement[bool]:
    """True when this database holds the projection of ``events_topic`` (its projector has stored
    offsets of it): the router consults only the history of its own topics."""
    return sa.exists().where(ConsumerOffset.topic == events_topic)


# Built once: the router asks this for every transaction batch that admits runs.
_RUNS_IN_HISTORY = sa.select(Run.run_id, Run.tenant, Run.state, Run.finished_at).where(
    Run.run_id == sa.any_(sa.bindparam("ids", type_=ARRAY(sa.String))),
    sa.exists().where(ConsumerOffset.topic == sa.bindparam("topic")),
)


def runs_in_history(
    conn: sa.Connection, run_ids: Sequence[str], events_topic: str
) -> list[tuple[str, str, str, datetime | None]]:
    """(run id, tenant, state, finished_at) of those of ``run_ids`` the history (of
    ``events_topic``, see :func:`projects`) holds — one statement whatever their number
    (``run_id = ANY(...)`` on the primary key)."""
    rows = conn.execute(_RUNS_IN_HISTORY, {"ids": list(run_ids), "topic": events_topic})
    return [(r[0], r[1], r[2], r[3]) for r in rows]


@dataclass(frozen=True)
class StoredRunRows:
    """A run as the projection holds it: what rebuilding its router state needs."""

    run: sa.Row[Any]
    steps: list[sa.Row[Any]]
    replays: int
    trigger_omitted: bool
    #: the run's last event number: ``runs.last_seq``, or a later event's if one is stored
    last_seq: int


def stored_run(conn: sa.Connection, run_id: str, events_topic: str) -> StoredRunRows | None:
    """The run's row, its steps, how many times it was replayed and whether its first event left
    the trigger data out; None when the history (of ``events_topic``) does not hold it."""
    run = conn.execute(sa.select(Run).where(Run.run_id == run_id, projects(events_topic))).first()
    if run is None:
        return None
    steps = list(
        conn.execute(
            sa.select(
                Step.step_id, Step.state, Step.attempts, Step.output, Step.error_kind, Step.error_message
            ).where(Step.run_id == run_id)
        )
    )
    replays, last_seq = conn.execute(
        sa.select(
            sa.func.count().filter(RunEventRow.type == "run_replayed"),
            sa.func.coalesce(sa.func.max(RunEventRow.seq), 0),
        ).where(RunEventRow.run_id == run_id)
    ).one()
    omitted = conn.execute(
        sa.select(RunEventRow.detail["trigger_omitted"].isnot(None))
        .where(RunEventRow.run_id == run_id, RunEventRow.type == "run_pending")
        .order_by(RunEventRow.seq)
        .limit(1)
    ).scalar()
    return StoredRunRows(run, steps, int(replays), bool(omitted), max(run.last_seq, int(last_seq)))
