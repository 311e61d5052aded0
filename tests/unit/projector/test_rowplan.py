"""Coalescing a batch per row gives exactly what applying its events one by one gives."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, cast

from hypothesis import given, settings
from hypothesis import strategies as st

from services.projector.changes import Merge, RowChange, RowKey, RowValues, attempt_change, step_change
from services.projector.events import Coordinates, ProjectedEvent
from services.projector.rowplan import (
    RowPlan,
    apply_op,
    apply_run_plan,
    compose,
    plan_rows,
    run_composite,
    run_sequence,
)

COLUMNS = ("a", "b", "c")
T0 = datetime(2025, 1, 1, tzinfo=UTC)


def synthetic(key: str, values: dict[str, int | None], merge: dict[str, Merge]) -> RowChange:
    """A change of a synthetic table (key ``k``, columns ``COLUMNS``): the planner is generic over
    columns, RowChange's types name the steps and attempts tables only (hence the casts)."""
    return RowChange(cast(RowKey, {"k": key}), cast(RowValues, values), merge)


def k(key: RowKey) -> str:
    """The key of a :func:`synthetic` row."""
    return cast(dict[str, str], key)["k"]


values = st.one_of(st.none(), st.integers(-3, 3))
merges = st.sampled_from(["set", "coalesce", "greatest"])
changes = st.builds(
    lambda vals, merge, key: synthetic(key, vals, merge),
    st.dictionaries(st.sampled_from(COLUMNS), values),
    st.dictionaries(st.sampled_from(COLUMNS), merges),
    st.sampled_from(["x", "y"]),
)
rows = st.one_of(st.none(), st.fixed_dictionaries({c: values for c in COLUMNS}))


def one_by_one(row: dict[str, Any] | None, change: RowChange) -> dict[str, Any]:
    """What one ``INSERT … ON CONFLICT DO UPDATE`` of ``change`` does (the pre-coalescing writer)."""
    if row is None:
        return {c: change.values.get(c) for c in COLUMNS}
    out = dict(row)
    for column, how in change.merge.items():
        out[column] = apply_op(how, row[column], change.values.get(column))
    return out


@settings(max_examples=300, deadline=None)
@given(st.lists(changes, max_size=8), rows, rows)
def test_planned_rounds_equal_one_change_at_a_time(
    batch: list[RowChange], x: dict[str, Any] | None, y: dict[str, Any] | None
) -> None:
    expected = {"x": x, "y": y}
    for change in batch:
        expected[k(change.key)] = one_by_one(expected[k(change.key)], change)
    actual = {"x": x, "y": y}
    for plans in plan_rows(batch, COLUMNS):
        assert len({k(p.key) for p in plans}) == len(plans)  # one write per row per round
        for plan in plans:
            actual[k(plan.key)] = plan.apply(actual[k(plan.key)])
    assert actual == expected


def test_a_composable_sequence_is_one_write() -> None:
    first = synthetic("x", {"a": 1, "b": None}, {"a": "set", "b": "coalesce"})
    then = synthetic("x", {"a": 2, "b": 5}, {"a": "greatest", "b": "coalesce"})
    (only,) = plan_rows([first, then], COLUMNS)
    assert len(only) == 1
    assert only[0].insert == {"a": 2, "b": 5, "c": None}
    assert only[0].ops["a"] == ("set", 2) and only[0].ops["b"] == ("coalesce", 5)


def test_coalesce_then_greatest_is_not_one_operation() -> None:
    assert compose(("coalesce", 1), ("greatest", 2)) is None
    assert compose(("greatest", 1), ("coalesce", 2)) is None
    first = synthetic("x", {"a": 1}, {"a": "coalesce"})
    then = synthetic("x", {"a": 2}, {"a": "greatest"})
    assert [len(r) for r in plan_rows([first, then], COLUMNS)] == [1, 1]


# -- real events of one step -------------------------------------------------------------------

STEP_EVENTS = ["step_scheduled", "step_succeeded", "step_failed", "step_retrying", "step_timed_out",
               "step_reset", "step_skipped", "step_cancelled"]  # fmt: skip


def step_event(type_: str, seq: int, attempt: int | None, detail: dict[str, Any]) -> ProjectedEvent:
    return ProjectedEvent(
        event_id=f"e{seq}", run_id="r", tenant="acme", workflow="w", version=1, seq=seq, type=type_,
        step_id="s", attempt=attempt, state=None, at=T0 + timedelta(seconds=seq), correlation_id="c",
        detail=detail, raw_detail=detail, where=Coordinates("t", 0, seq),
    )  # fmt: skip


details = st.fixed_dictionaries(
    {},
    optional={
        "output": st.one_of(st.none(), st.integers()),
        "started_at": st.integers(1_700_000_000_000, 1_700_000_100_000),
        "error_kind": st.sampled_from(["boom", "declined"]),
        "executor_id": st.sampled_from(["e1", "e2"]),
        "inputs": st.just({"n": 1}),
    },
)
step_events = st.lists(
    st.tuples(st.sampled_from(STEP_EVENTS), st.one_of(st.none(), st.integers(1, 3)), details), max_size=8
)


def step_columns(change: RowChange | None) -> list[str]:
    return [] if change is None else list(change.values)


@settings(max_examples=300, deadline=None)
@given(step_events)
def test_real_step_and_attempt_changes_coalesce_exactly(
    spec: list[tuple[str, int | None, dict[str, Any]]],
) -> None:
    events = [step_event(t, i + 1, a, d) for i, (t, a, d) in enumerate(spec)]
    for make in (step_change, attempt_change):
        batch = [c for c in (make(ev) for ev in events) if c is not None]
        columns = sorted({c for ch in batch for c in ch.values})
        table: dict[tuple[Any, ...], dict[str, Any]] = {}
        for change in batch:
            key = tuple(change.key.values())
            old = table.get(key)
            new = {c: change.values.get(c) for c in columns} if old is None else dict(old)
            if old is not None:
                for column, how in change.merge.items():
                    new[column] = apply_op(how, old[column], change.values.get(column))
            table[key] = new
        planned: dict[tuple[Any, ...], dict[str, Any]] = {}
        for plans in plan_rows(batch, columns):
            for plan in plans:
                key = tuple(plan.key.values())
                planned[key] = plan.apply(planned.get(key))
        assert planned == table


# -- runs --------------------------------------------------------------------------------------

RUN_EVENTS: list[tuple[str, str | None, dict[str, Any]]] = [
    ("run_pending", "pending", {"trigger": {"event_type": "e", "data": {"n": 1}, "idempotency_key": "k"}}),
    ("run_started", "running", {}),
    ("run_succeeded", "succeeded", {}),
    ("run_failed", "failed", {"error_kind": "boom", "error_message": "no"}),
    ("run_replayed", "pending", {}),
    ("step_scheduled", "running", {}),
    ("step_succeeded", "succeeded", {}),
    ("run_note", None, {}),
]


def run_event(index: int, seq: int) -> ProjectedEvent:
    type_, state, detail = RUN_EVENTS[index]
    return ProjectedEvent(
        event_id=f"e{seq}", run_id="r", tenant="acme", workflow="w", version=1, seq=seq, type=type_,
        step_id="s" if type_.startswith("step_") else None, attempt=None, state=state,
        at=T0 + timedelta(seconds=seq), correlation_id="c", detail=detail, raw_detail=detail,
        where=Coordinates("t", 0, seq),
    )  # fmt: skip


stored_runs = st.fixed_dictionaries(
    {
        "last_seq": st.integers(0, 12),
        "state": st.sampled_from(["pending", "running", "failed"]),
        "started_at": st.one_of(st.none(), st.just(T0)),
        "updated_at": st.just(T0),
        "finished_at": st.one_of(st.none(), st.just(T0)),
        "error_kind": st.none(),
    }
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, len(RUN_EVENTS) - 1), st.integers(1, 12)), min_size=1, max_size=8),
    stored_runs,
)
def test_one_run_update_equals_the_events_one_by_one(
    spec: list[tuple[int, int]], row: dict[str, Any]
) -> None:
    seen: set[int] = set()
    events = []
    for index, seq in spec:  # (run_id, seq) is unique in run_events: applied events never share a seq
        if seq not in seen:
            seen.add(seq)
            events.append(run_event(index, seq))
    expected = row
    for plan in run_sequence(events):
        expected = apply_run_plan(plan, expected)
    composite = run_composite(events)
    if composite is None or row["last_seq"] >= composite.after_seq:
        return  # the writer itself falls back to the sequence (a failed composite changes nothing)
    assert apply_run_plan(composite, row) == expected


def test_an_in_order_batch_of_a_new_run_is_one_update() -> None:
    events = [run_event(0, 1), run_event(1, 2), run_event(5, 3), run_event(6, 4), run_event(2, 5)]
    plan = run_composite(events)
    assert plan is not None
    assert (plan.after_seq, plan.last_seq, plan.sets["state"]) == (1, 5, "succeeded")
    assert plan.started_at == T0 + timedelta(seconds=2)


def test_plan_start_keeps_only_first_values_for_insert_only_columns() -> None:
    plan = RowPlan.start(synthetic("x", {"a": 1, "b": 2}, {"a": "set"}), COLUMNS)
    assert plan.ops["b"] == ("keep", None) and plan.insert == {"a": 1, "b": 2, "c": None}
