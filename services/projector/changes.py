"""What one ``RunEvent`` changes in ``runs``, ``steps`` and ``attempts`` — as plain data, no I/O.

The writer turns these into SQL. A change is applied at most once per event (the event's row in
``run_events`` is inserted first, and only a *new* row is applied), and run-level changes only
when the event is newer than the run's ``last_seq``; so replaying a batch never double-applies.

Semantics:

- ``run_*`` events with a ``state`` set ``runs.state``; ``run_pending`` also records the trigger;
  terminal states set ``finished_at``, ``run_failed`` the error; a run back to a non-terminal
  state (retry, replay) clears ``finished_at`` and the error.
  ``run_replayed`` (state ``pending``) is such a return: the run waits for a slot again, then
  ``run_started`` follows; ``started_at`` keeps the first start.
- ``step_*`` events upsert the step and, when they name an attempt, the attempt.
  ``step_reset`` (a replay) puts the step back to ``pending`` and clears its finish, output and
  error (the attempts keep the history; ``attempts`` keeps the highest attempt number, and the next
  ``step_scheduled`` names attempt n + 1).
- ``control_accepted`` / ``control_refused`` also fill ``control_commands`` (see :mod:`.control`).
- Every other type is history only (stored in ``run_events``): unknown types never fail.

Every text taken from a detail is bounded to its column (see :mod:`.bounds`); the event's own
fields and its detail were made storable when it was decoded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Required, TypeAlias, TypedDict

from services.contracts.vocabulary import (
    RUN_TERMINAL,
    STEP_TERMINAL,
    ErrorKind,
    EventType,
    RunStatus,
    StepStatus,
)
from services.projector.bounds import (
    MAX_KIND,
    MAX_LONG_ID,
    MAX_MESSAGE,
    MAX_NAME,
    storable_optional,
    storable_optional_id,
    storable_text,
)
from services.projector.events import ProjectedEvent, parse_time

Merge = Literal["set", "coalesce", "greatest"]


class RunSkeleton(TypedDict):
    """The ``runs`` row :func:`run_skeleton` inserts."""

    run_id: str
    tenant: str
    workflow: str
    version: int
    state: str
    correlation_id: str
    created_at: datetime
    updated_at: datetime
    last_seq: int


class RunUpdate(TypedDict, total=False):
    """The ``runs`` columns :func:`run_update` sets (``last_seq`` and ``updated_at`` always)."""

    last_seq: Required[int]
    updated_at: Required[datetime]
    state: str
    created_at: datetime
    event_type: str | None
    trigger_data: Any  # the trigger's data: tenant JSON
    idempotency_key: str | None
    finished_at: datetime | None
    error_kind: str | None
    error_message: str | None
    parent_run_id: str | None


class StepKey(TypedDict):
    run_id: str
    step_id: str


class StepValues(TypedDict, total=False):
    """``steps`` columns an event gives (the key apart)."""

    state: str
    attempts: int
    started_at: datetime | None
    finished_at: datetime | None
    output: Any  # the step's output: tenant JSON
    error_kind: str | None
    error_message: str | None


class AttemptKey(TypedDict):
    run_id: str
    step_id: str
    attempt: int


class AttemptValues(TypedDict, total=False):
    """``attempts`` columns an event gives (the key apart)."""

    state: str
    idempotency_key: str | None
    inputs: Any  # tenant JSON
    scheduled_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    output: Any  # tenant JSON
    error_kind: str | None
    error_message: str | None
    executor_id: str | None


RowKey: TypeAlias = StepKey | AttemptKey
RowValues: TypeAlias = StepValues | AttemptValues


@dataclass(frozen=True)
class RowChange:
    """An upsert: ``values`` make a new row; ``merge`` says how each column updates an existing one.

    ``set`` overwrites, ``coalesce`` keeps an existing non-null value, ``greatest`` only raises.
    Columns of ``values`` absent from ``merge`` are only used when the row is new.
    """

    key: RowKey
    values: RowValues
    merge: dict[str, Merge] = field(default_factory=dict)


def _kind(value: Any) -> str | None:
    return storable_optional(value, MAX_KIND)


def _message(value: Any) -> str | None:
    return storable_optional(value, MAX_MESSAGE)


def run_skeleton(ev: ProjectedEvent) -> RunSkeleton:
    """The ``runs`` row inserted (if missing) before any event of the run is applied.

    ``last_seq`` is 0 so that the run's first event is applied on top of it. A run first seen
    through a later event (its start aged out of the topic) is assumed running.
    """
    if ev.is_run_event and ev.state:
        state = ev.state
    else:
        state = RunStatus.RUNNING if ev.type.startswith("step_") else RunStatus.PENDING
    return {
        "run_id": ev.run_id,
        "tenant": ev.tenant,
        "workflow": ev.workflow,
        "version": ev.version,
        "state": state,
        "correlation_id": ev.correlation_id,
        "created_at": ev.at,
        "updated_at": ev.at,
        "last_seq": 0,
    }


def run_update(ev: ProjectedEvent) -> RunUpdate:
    """Columns of ``runs`` set by ``ev`` when it is newer than ``runs.last_seq``."""
    values: RunUpdate = {"last_seq": ev.seq, "updated_at": ev.at}
    if ev.type == EventType.RUN_PENDING:
        trigger = ev.detail.get("trigger")
        trigger = trigger if isinstance(trigger, dict) else {}
        values.update(
            {
                "created_at": ev.at,
                "event_type": storable_optional(trigger.get("event_type"), MAX_NAME),
                "trigger_data": trigger.get("data"),
                "idempotency_key": storable_optional_id(trigger.get("idempotency_key"), MAX_LONG_ID),
            }
        )
        parent = ev.detail.get("parent")  # a sub-workflow's child run
        if isinstance(parent, dict):
            values["parent_run_id"] = storable_optional(parent.get("run_id"), MAX_NAME)
    if not ev.is_run_event or not ev.state:
        return values
    values["state"] = ev.state
    if ev.state in RUN_TERMINAL:
        values["finished_at"] = ev.at
    else:
        values.update({"finished_at": None, "error_kind": None, "error_message": None})
    if ev.type == EventType.RUN_FAILED or (ev.state == RunStatus.FAILED and "error_kind" in ev.detail):
        values.update(
            {
                "error_kind": _kind(ev.detail.get("error_kind")) or ErrorKind.FAILED,
                "error_message": _message(ev.detail.get("error_message")),
            }
        )
    return values


def run_started_at(ev: ProjectedEvent) -> bool:
    """Whether ``ev`` starts the run (``started_at`` is set once, by the first such event)."""
    return ev.is_run_event and ev.state == RunStatus.RUNNING


def _timeout_message(ev: ProjectedEvent) -> str:
    deadline = ev.detail.get("deadline")
    return _message(ev.detail.get("error_message")) or storable_text(
        f"attempt {ev.attempt} exceeded its deadline" + (f" ({deadline})" if deadline is not None else ""),
        MAX_MESSAGE,
    )


def step_change(ev: ProjectedEvent) -> RowChange | None:
    """The ``steps`` upsert of a ``step_*`` event naming a step."""
    if not ev.type.startswith("step_") or ev.step_id is None:
        return None
    d = ev.detail
    key: StepKey = {"run_id": ev.run_id, "step_id": ev.step_id}
    attempts = ev.attempt if ev.attempt is not None else 0
    base: StepValues = {"attempts": attempts, "started_at": None, "finished_at": None}
    values: StepValues
    merge: dict[str, Merge] = {"state": "set", "attempts": "greatest"}
    kind = ev.type
    if kind == EventType.STEP_SCHEDULED:
        state = ev.state or StepStatus.RUNNING
        values = {**base, "state": state, "started_at": ev.at, "finished_at": None}
        merge.update(started_at="coalesce", finished_at="set")
    elif kind == EventType.STEP_SUCCEEDED:
        state = ev.state or StepStatus.SUCCEEDED
        values = {
            **base,
            "state": state,
            "started_at": parse_time(d.get("started_at")) or ev.at,
            "finished_at": parse_time(d.get("finished_at")) or ev.at,
            "output": d.get("output"),
            "error_kind": None,
            "error_message": None,
        }
        merge.update(
            started_at="coalesce", finished_at="set", output="set", error_kind="set", error_message="set"
        )
    elif kind in (EventType.STEP_FAILED, EventType.STEP_RETRYING, EventType.STEP_TIMED_OUT):
        default = StepStatus.RETRYING if kind == EventType.STEP_RETRYING else StepStatus.FAILED
        state = ev.state or default
        timed_out = kind == EventType.STEP_TIMED_OUT
        values = {
            **base,
            "state": state,
            "started_at": parse_time(d.get("started_at")) or ev.at,
            "finished_at": (parse_time(d.get("finished_at")) or ev.at) if state in STEP_TERMINAL else None,
            "error_kind": _kind(d.get("error_kind")) or (ErrorKind.TIMEOUT if timed_out else ErrorKind.ERROR),
            "error_message": _timeout_message(ev) if timed_out else _message(d.get("error_message")),
        }
        merge.update(started_at="coalesce", finished_at="set", error_kind="set", error_message="set")
    elif kind == EventType.STEP_RESET:
        values = {
            **base,
            "state": ev.state or StepStatus.PENDING,
            "output": None,
            "error_kind": None,
            "error_message": None,
        }
        merge.update(finished_at="set", output="set", error_kind="set", error_message="set")
    elif kind in (EventType.STEP_SKIPPED, EventType.STEP_CANCELLED):
        state = ev.state or kind.removeprefix("step_")
        values = {**base, "state": state, "finished_at": ev.at}
        merge.update(finished_at="set")
    elif ev.state:  # an unknown step event that still says the step's state
        values = {**base, "state": ev.state, "finished_at": ev.at if ev.state in STEP_TERMINAL else None}
        merge.update(finished_at="set")
    else:
        return None
    return RowChange(key, values, merge)


def attempt_change(ev: ProjectedEvent) -> RowChange | None:
    """The ``attempts`` upsert of a ``step_*`` event naming an attempt (after its step's upsert)."""
    if ev.step_id is None or ev.attempt is None:
        return None
    d = ev.detail
    key: AttemptKey = {"run_id": ev.run_id, "step_id": ev.step_id, "attempt": ev.attempt}
    executor = storable_optional(d.get("executor_id"), MAX_NAME)
    if ev.type == EventType.STEP_SCHEDULED:
        return RowChange(
            key,
            {
                "state": ev.state or StepStatus.RUNNING,
                "idempotency_key": storable_optional_id(d.get("idempotency_key"), MAX_LONG_ID),
                "inputs": d.get("inputs"),
                "scheduled_at": ev.at,
            },
            {"idempotency_key": "coalesce", "inputs": "coalesce", "scheduled_at": "coalesce"},
        )
    if ev.type == EventType.STEP_SUCCEEDED:
        return RowChange(
            key,
            {
                "state": StepStatus.SUCCEEDED,
                "started_at": parse_time(d.get("started_at")),
                "finished_at": parse_time(d.get("finished_at")) or ev.at,
                "output": d.get("output"),
                "error_kind": None,
                "error_message": None,
                "executor_id": executor,
            },
            {
                "state": "set",
                "started_at": "coalesce",
                "finished_at": "set",
                "output": "set",
                "error_kind": "set",
                "error_message": "set",
                "executor_id": "coalesce",
            },
        )
    if ev.type in (EventType.STEP_FAILED, EventType.STEP_RETRYING):
        return RowChange(
            key,
            {
                "state": StepStatus.FAILED,
                "started_at": parse_time(d.get("started_at")),
                "finished_at": parse_time(d.get("finished_at")) or ev.at,
                "error_kind": _kind(d.get("error_kind")) or ErrorKind.ERROR,
                "error_message": _message(d.get("error_message")),
                "executor_id": executor,
            },
            {
                "state": "set",
                "started_at": "coalesce",
                "finished_at": "coalesce",
                "error_kind": "coalesce" if ev.type == EventType.STEP_RETRYING else "set",
                "error_message": "coalesce" if ev.type == EventType.STEP_RETRYING else "set",
                "executor_id": "coalesce",
            },
        )
    if ev.type == EventType.STEP_TIMED_OUT:
        return RowChange(
            key,
            {
                "state": "timed_out",
                "finished_at": ev.at,
                "error_kind": ErrorKind.TIMEOUT,
                "error_message": _timeout_message(ev),
            },
            {"state": "set", "finished_at": "coalesce", "error_kind": "set", "error_message": "set"},
        )
    if ev.type == EventType.STEP_CANCELLED:
        return RowChange(
            key,
            {"state": StepStatus.CANCELLED, "finished_at": ev.at},
            {"state": "set", "finished_at": "coalesce"},
        )
    return None
