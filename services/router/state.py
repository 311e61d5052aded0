"""Run and step state as the router core keeps it in memory and in the changelog.

The snapshot is plain JSON (``to_json`` / ``from_json``) so the compacted changelog stays
readable by any tool. Two encodings, told apart by their first character:

- version 2 (written since the hot-path work, issue 17): a JSON array, ``[2, run_id, tenant, …]``
  — the fields in the order of :data:`_RUN_FIELDS`, each step ``[status, attempt, …]`` in the
  order of :data:`_STEP_FIELDS`. No field names: about a third of the size, ~3 times faster both ways
  (``python -m benchmarks.serde_bench``). A field is only ever added at the end, with its
  default, so a snapshot shorter than this version's layout reads with the defaults;
- version 1: a JSON object with the field names (what earlier versions wrote; still read, since
  users upgrade with state in the changelog).

It is written with the strict encoder (:mod:`services.contracts.strict_json`): a value the engine
could not write again never gets into a record. State written by older versions may still hold
what the strict decoder refuses (lone surrogates from ``\\udxxx`` escapes, integers beyond 64
bits): :func:`from_json` reads it leniently and makes it writable (:func:`writable`).

A finished run may be *compacted* (``compacted`` says why, see :mod:`services.router.retention`):
it keeps its identity, outcome and history position — what deduplication, control decisions and
late results need — and drops its trigger data and step records, so it can be replayed only once
read back from its history (:mod:`services.router.rehydrate`).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field, fields
from typing import Any, TypedDict, cast

import orjson

from services.contracts import strict_json
from services.contracts.records import JsonObject, RunParent
from services.contracts.text import utf8_safe
from services.contracts.vocabulary import RunStatus as RunStatus  # re-exported for existing importers


class RunTrigger(TypedDict, total=False):
    """The trigger a run keeps (empty once the run is compacted)."""

    event: str | None  # the event type (None only for a run read back without it)
    data: Any  # the tenant's trigger data


class TriggerView(RunTrigger):
    """The trigger as expressions see it (the CEL variable ``trigger``)."""

    key: str
    tenant: str


@dataclass(slots=True)
class StepRecord:
    status: str = "pending"  # a services.contracts.vocabulary StepStatus value
    attempt: int = 0
    deadline_ms: int | None = None  # router-side deadline of the running attempt
    retry_at_ms: int | None = None  # when the next attempt starts (status retrying)
    output: Any = None
    error_kind: str | None = None
    error_message: str | None = None
    retry_base: int = 0  # attempts before the last replay; the retry budget counts from here
    output_bytes: int = 0  # size of ``output`` as JSON: counts toward the run's output budget
    child: str | None = None  # a workflow step's child run id (of its latest attempt)

    def copy(self) -> StepRecord:
        return StepRecord(
            self.status,
            self.attempt,
            self.deadline_ms,
            self.retry_at_ms,
            self.output,
            self.error_kind,
            self.error_message,
            self.retry_base,
            self.output_bytes,
            self.child,
        )


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """What one step of processing may change in a run, taken before it (see :meth:`RunState.rollback`)."""

    status: RunStatus
    seq: int
    finished_ms: int | None
    replays: int
    trigger: RunTrigger
    idempotency_key: str
    compacted: str | None
    steps: dict[str, StepRecord]


@dataclass(slots=True)
class RunState:
    run_id: str
    tenant: str
    workflow: str
    version: int
    partition: int
    correlation_id: str
    idempotency_key: str
    trigger: RunTrigger  # expressions see trigger_view()
    arrival: int  # FIFO order of admission within the partition
    created_ms: int
    status: RunStatus = RunStatus.PENDING
    seq: int = 0  # last history event sequence number
    steps: dict[str, StepRecord] = field(default_factory=dict)
    finished_ms: int | None = None
    replays: int = 0
    compacted: str | None = None  # why a finished run's replay state was dropped (None: kept)
    # Control command ids decided for this run -> issued-at ms (services.control.command_log).
    commands: dict[str, int] = field(default_factory=dict)
    # The run and step attempt that started this run as a sub-workflow (None: a trigger did).
    parent: RunParent | None = None

    def __post_init__(self) -> None:
        # The idempotency key and the tenant are fields of their own; older snapshots also kept
        # them in the trigger, which stored a (possibly huge) key twice.
        if "key" in self.trigger or "tenant" in self.trigger:
            kept = {k: v for k, v in self.trigger.items() if k not in ("key", "tenant")}
            self.trigger = cast(RunTrigger, kept)
        # Every decoded record brings its own copy of these few distinct names: one shared copy
        # saves ~110 bytes per in-flight run (benchmarks/router_memory.py).
        if type(self.tenant) is str and type(self.workflow) is str:
            self.tenant = sys.intern(self.tenant)
            self.workflow = sys.intern(self.workflow)
        event = self.trigger.get("event")
        if type(event) is str:
            self.trigger["event"] = sys.intern(event)

    def trigger_view(self) -> TriggerView:
        """The trigger as expressions see it: ``event``, ``data``, ``key``, ``tenant``."""
        return {**self.trigger, "key": self.idempotency_key, "tenant": self.tenant}

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    # --- one step's undo ----------------------------------------------------------------------------
    def checkpoint(self) -> Checkpoint:
        return Checkpoint(
            self.status,
            self.seq,
            self.finished_ms,
            self.replays,
            self.trigger,
            self.idempotency_key,
            self.compacted,
            {step_id: rec.copy() for step_id, rec in self.steps.items()},
        )

    def rollback(self, mark: Checkpoint) -> None:
        """Undo everything since ``mark`` (trigger data and outputs are replaced, never mutated,
        so restoring the references restores them)."""
        self.status = mark.status
        self.seq = mark.seq
        self.finished_ms = mark.finished_ms
        self.replays = mark.replays
        self.trigger = mark.trigger
        self.idempotency_key = mark.idempotency_key
        self.compacted = mark.compacted
        self.steps = {step_id: rec.copy() for step_id, rec in mark.steps.items()}

    # --- snapshot -------------------------------------------------------------------------------------
    def to_json(self) -> str:
        """Compact UTF-8 JSON (non-ASCII text unescaped: escapes would multiply the record's size).

        Raises :class:`~services.contracts.strict_json.StrictJSONError` only if a value stays
        unwritable after :func:`writable` (it cannot, for JSON-born data)."""
        try:
            return strict_json.dumps(self._compact()).decode("utf-8")
        except strict_json.StrictJSONError:
            # Data that predates the strict decoder: make it writable once, for good.
            self.trigger = writable(self.trigger)
            for rec in self.steps.values():
                rec.output = writable(rec.output)
                rec.error_message = None if rec.error_message is None else utf8_safe(rec.error_message)
            return strict_json.dumps(self._compact()).decode("utf-8")

    def to_json_v1(self) -> str:
        """The version 1 snapshot (named fields), as routers before version 2 wrote it; kept to
        test that such state still restores."""
        return strict_json.dumps(self).decode("utf-8")

    def _compact(self) -> list[Any]:
        """The version 2 layout (:data:`_RUN_FIELDS`, :data:`_STEP_FIELDS`); keep in step."""
        return [
            2,
            self.run_id,
            self.tenant,
            self.workflow,
            self.version,
            self.partition,
            self.correlation_id,
            self.idempotency_key,
            self.trigger,
            self.arrival,
            self.created_ms,
            self.status,
            self.seq,
            {
                k: [
                    r.status,
                    r.attempt,
                    r.deadline_ms,
                    r.retry_at_ms,
                    r.output,
                    r.error_kind,
                    r.error_message,
                    r.retry_base,
                    r.output_bytes,
                    r.child,
                ]
                for k, r in self.steps.items()
            },
            self.finished_ms,
            self.replays,
            self.compacted,
            self.commands,
            self.parent,
        ]

    @classmethod
    def from_json(cls, text: str | bytes) -> RunState:
        """A run from a snapshot of either version; ``ValueError`` for one of a newer version."""
        try:
            data = orjson.loads(text)
        except orjson.JSONDecodeError:
            # Written before the strict encoder; bytes (a restore's) are UTF-8, as the record's string was.
            data = writable(json.loads(text.decode() if isinstance(text, bytes) else text))
        if isinstance(data, list):
            return cls._from_compact(data)
        data["status"] = RunStatus(data["status"])
        data["steps"] = {k: _step_record(v) for k, v in data["steps"].items()}
        try:
            return cls(**data)
        except TypeError:  # fields of another version: keep the ones this one knows
            known = {f.name for f in fields(cls)}
            return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def _from_compact(cls, data: list[Any]) -> RunState:
        if not data or data[0] != 2:
            raise ValueError(f"run state snapshot of unknown version {data[:1]!r} (a newer router's?)")
        # Positional: _RUN_FIELDS / _STEP_FIELDS are the dataclasses' field order (a unit test
        # holds them to it); fields a newer version appended are dropped, missing ones defaulted.
        values = data[1 : len(_RUN_FIELDS) + 1]
        values[_STATUS] = RunStatus(values[_STATUS])
        width = len(_STEP_FIELDS)
        values[_STEPS] = {k: StepRecord(*v[:width]) for k, v in values[_STEPS].items()}
        return cls(*values)


#: The version 2 layouts: positions of the fields after the version number (append only).
_RUN_FIELDS = (
    "run_id",
    "tenant",
    "workflow",
    "version",
    "partition",
    "correlation_id",
    "idempotency_key",
    "trigger",
    "arrival",
    "created_ms",
    "status",
    "seq",
    "steps",
    "finished_ms",
    "replays",
    "compacted",
    "commands",
    "parent",
)
_STATUS, _STEPS = _RUN_FIELDS.index("status"), _RUN_FIELDS.index("steps")
_STEP_FIELDS = (
    "status",
    "attempt",
    "deadline_ms",
    "retry_at_ms",
    "output",
    "error_kind",
    "error_message",
    "retry_base",
    "output_bytes",
    "child",
)


def _step_record(data: JsonObject) -> StepRecord:
    try:
        return StepRecord(**data)
    except TypeError:
        known = {f.name for f in fields(StepRecord)}
        return StepRecord(**{k: v for k, v in data.items() if k in known})


#: Integers JSON encoders accept (orjson: signed and unsigned 64 bits).
_INT_RANGE = (-(2**63), 2**64 - 1)


def writable(value: Any) -> Any:
    """``value`` with what the strict encoder refuses replaced: lone surrogates become visible
    ``\\udxxx`` escapes, integers beyond 64 bits become floats (``None`` past the float range),
    non-finite floats ``None``, non-string keys strings. Iterative: no recursion limit."""
    root: list[Any] = [value]
    stack: list[tuple[Any, Any]] = [(root, 0)]
    while stack:
        container, index = stack.pop()
        item = container[index]
        if isinstance(item, str):
            container[index] = utf8_safe(item)
        elif isinstance(item, bool) or item is None:
            continue
        elif isinstance(item, int):
            if not _INT_RANGE[0] <= item <= _INT_RANGE[1]:
                container[index] = float(item) if abs(item) < 1e308 else None
        elif isinstance(item, float):
            if item != item or item in (float("inf"), float("-inf")):
                container[index] = None
        elif isinstance(item, dict):
            copy = {utf8_safe(str(k)): v for k, v in item.items()}
            container[index] = copy
            stack.extend((copy, k) for k in copy)
        elif isinstance(item, list | tuple):
            items = list(item)
            container[index] = items
            stack.extend((items, i) for i in range(len(items)))
    return root[0]
