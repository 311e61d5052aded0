"""Coalescing a batch's changes per row: many :class:`~.changes.RowChange` → one write per row.

Pure: no I/O. The writer applies a batch's events in order; each event's upsert of a row either
inserts it (``values``) or updates it column by column (``merge``: ``set`` / ``coalesce`` /
``greatest``). Successive upserts of one row compose into one :class:`RowPlan` that does, in a
single ``INSERT … ON CONFLICT DO UPDATE``, exactly what the sequence did:

- ``insert``: the row the sequence leaves when the row did not exist (the first change's values,
  then the later changes merged into them in Python);
- ``ops``: per column, one operation on the *existing* value that equals the composition of the
  sequence's operations (``keep`` when no change touched the column).

Compositions that are not one operation (``greatest`` after ``coalesce`` or the reverse, never
produced by :mod:`.changes` today) start a new plan for the row: the writer writes plans in
rounds (round *k* holds the *k*-th plan of every row), so the order per row is kept.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from itertools import pairwise
from typing import Any, Literal, TypeAlias

from services.projector.changes import RowChange, RowKey, run_started_at, run_update
from services.projector.events import ProjectedEvent

#: A row's columns by name, each value of its column's type: generic over the tables a plan
#: writes (``steps``, ``attempts``, ``runs``), whose own shapes are in :mod:`.changes`.
ColumnValues: TypeAlias = dict[str, Any]

Op = Literal["keep", "set", "coalesce", "greatest"]
OP_CODES: dict[Op, int] = {"keep": 0, "set": 1, "coalesce": 2, "greatest": 3}
_KEEP: tuple[Op, Any] = ("keep", None)


def pg_greatest(a: Any, b: Any) -> Any:
    """PostgreSQL's ``greatest``: NULLs are ignored (NULL only when both are)."""
    if a is None:
        return b
    if b is None:
        return a
    return a if a >= b else b


def apply_op(op: Op, old: Any, arg: Any) -> Any:
    """What ``SET c = <op>(c, arg)`` leaves in a column holding ``old``."""
    if op == "set":
        return arg
    if op == "coalesce":
        return old if old is not None else arg
    if op == "greatest":
        return pg_greatest(old, arg)
    return old


def compose(first: tuple[Op, Any], then: tuple[Op, Any]) -> tuple[Op, Any] | None:
    """One operation equal to ``first`` followed by ``then``, or None when there is none."""
    op_a, a = first
    op_b, b = then
    if op_b == "keep":
        return first
    if op_a == "keep" or op_b == "set":
        return then
    if op_b == "coalesce":
        if op_a == "set":
            return ("set", a if a is not None else b)
        if op_a == "coalesce":
            return ("coalesce", a if a is not None else b)
        return None
    # op_b == "greatest"
    if op_a == "set":
        return ("set", pg_greatest(a, b))
    if op_a == "greatest":
        return ("greatest", pg_greatest(a, b))
    return None


@dataclass
class RowPlan:
    """One write of one row: ``insert`` if the row is new, ``ops`` (column → (op, arg)) if not."""

    key: RowKey
    insert: ColumnValues
    ops: dict[str, tuple[Op, Any]]

    @classmethod
    def start(cls, change: RowChange, columns: Iterable[str]) -> RowPlan:
        """The plan of one change; ``columns`` are the table's non-key columns."""
        values = change.values
        insert = dict.fromkeys(columns)
        for column, value in values.items():
            if column in insert:
                insert[column] = value
        ops: dict[str, tuple[Op, Any]] = dict.fromkeys(insert, _KEEP)
        for column, how in change.merge.items():
            ops[column] = (how, values.get(column))
        return cls(change.key.copy(), insert, ops)

    def extend(self, change: RowChange) -> bool:
        """Fold ``change`` (applied after this plan) into it; False (plan unchanged) if impossible."""
        ops = self.ops
        values = change.values
        composed: list[tuple[str, tuple[Op, Any]]] = []
        for column, how in change.merge.items():
            op = compose(ops[column], (how, values.get(column)))
            if op is None:
                return False
            composed.append((column, op))
        insert = self.insert
        for column, how in change.merge.items():
            insert[column] = apply_op(how, insert[column], values.get(column))
        ops.update(composed)
        return True

    def apply(self, existing: ColumnValues | None) -> ColumnValues:
        """The row after this plan's upsert (``existing``: the row's non-key columns, or None)."""
        if existing is None:
            return dict(self.insert)
        return {c: apply_op(op, existing[c], arg) for c, (op, arg) in self.ops.items()}


def plan_rows(changes: Iterable[RowChange], columns: Iterable[str]) -> list[list[RowPlan]]:
    """Rounds of plans: round *k* holds the *k*-th plan of each row, rows in first-seen order."""
    cols = tuple(columns)
    per_row: dict[tuple[Any, ...], list[RowPlan]] = {}
    for change in changes:
        key = tuple(change.key.values())
        plans = per_row.get(key)
        if plans is None:
            per_row[key] = [RowPlan.start(change, cols)]
        elif not plans[-1].extend(change):
            plans.append(RowPlan.start(change, cols))
    rounds: list[list[RowPlan]] = []
    for plans in per_row.values():
        for k, plan in enumerate(plans):
            if k == len(rounds):
                rounds.append([])
            rounds[k].append(plan)
    return rounds


RUN_SET_COLUMNS = (
    "state",
    "created_at",
    "event_type",
    "trigger_data",
    "idempotency_key",
    "finished_at",
    "error_kind",
    "error_message",
    "parent_run_id",
)


@dataclass
class RunPlan:
    """One ``UPDATE runs`` applied only when ``runs.last_seq < after_seq``.

    Sets ``last_seq``, ``updated_at`` and ``sets`` (columns of :data:`RUN_SET_COLUMNS`);
    ``started_at`` is only filled when still NULL.
    """

    run_id: str
    after_seq: int
    last_seq: int
    updated_at: datetime
    sets: ColumnValues
    started_at: datetime | None = None


def _single_run_plan(ev: ProjectedEvent) -> RunPlan:
    values = run_update(ev)
    sets = {c: v for c, v in values.items() if c not in ("last_seq", "updated_at")}
    started = ev.at if run_started_at(ev) else None
    return RunPlan(ev.run_id, ev.seq, ev.seq, ev.at, sets, started)


def _is_full(ev: ProjectedEvent) -> bool:
    """Whether ``ev`` changes more of its run than ``last_seq`` / ``updated_at``."""
    return len(run_update(ev)) > 2


def run_sequence(events: list[ProjectedEvent]) -> list[RunPlan]:
    """The run's changes one event at a time (then the ``last_seq`` bump), as applied one by one."""
    plans = [_single_run_plan(ev) for ev in events if _is_full(ev)]
    newest = max(events, key=lambda e: e.seq)
    plans.append(RunPlan(newest.run_id, newest.seq, newest.seq, newest.at, {}))
    return plans


def run_composite(events: list[ProjectedEvent]) -> RunPlan | None:
    """One plan equal to :func:`run_sequence` when ``runs.last_seq`` is below its ``after_seq``.

    None when the events that change the run are not in increasing ``seq`` order (then only the
    sequence is exact). Otherwise, if the stored ``last_seq`` is already at or past the first of
    them, the composite does not apply (its condition fails) and the sequence must be used.
    """
    full = [ev for ev in events if _is_full(ev)]
    if any(b.seq <= a.seq for a, b in pairwise(full)):
        return None
    newest = max(events, key=lambda e: e.seq)
    plan = RunPlan(newest.run_id, full[0].seq if full else newest.seq, newest.seq, newest.at, {})
    for ev in full:
        single = _single_run_plan(ev)
        plan.sets.update(single.sets)
        if plan.started_at is None:
            plan.started_at = single.started_at
    return plan


def apply_run_plan(plan: RunPlan, row: ColumnValues) -> ColumnValues:
    """What ``plan`` leaves in a ``runs`` row (for tests: the SQL does the same)."""
    if not row["last_seq"] < plan.after_seq:
        return dict(row)
    out = {**row, **plan.sets, "last_seq": plan.last_seq, "updated_at": plan.updated_at}
    out["started_at"] = row.get("started_at") if row.get("started_at") is not None else plan.started_at
    return out
