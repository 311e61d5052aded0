"""One batch of Kafka records → one PostgreSQL transaction (rows *and* the next offsets).

Fast path, in one transaction: insert the runs that are new (skeletons), insert every event into
``run_events`` with ``ON CONFLICT DO NOTHING RETURNING event_id``, apply only the events that were
really inserted (so a replayed batch changes nothing), raise ``runs.last_seq``, insert the dead
letters (same way, by ``dlq_id``), record the control decisions of the new events and dead letters
in ``control_commands`` (see :mod:`.control`), store the rejects, and upsert ``consumer_offsets``
— forward only, so a zombie instance that lost its partition can never move an offset back.

If the fast path fails on *data* (a PostgreSQL data or integrity error, SQLSTATE classes 22/23,
or a bug on one odd event), the transaction is rolled back and the batch is replayed event by
event, each in a savepoint; the events that still fail become rejects (``apply_error``), so one
poison event never stalls its partition. Any other database error (connection lost, missing
table, deadlock, ...) propagates: the caller retries the whole batch, which is safe.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import psycopg
import sqlalchemy as sa
from psycopg.types.json import Jsonb
from sqlalchemy.dialects.postgresql import insert as pg_insert

from services.projector.changes import RowChange, attempt_change, run_skeleton, step_change
from services.projector.control import control_from_dead_letter, control_from_event, first_decisions
from services.projector.dead_letters import DeadLetter
from services.projector.events import ProjectedEvent, Rejected
from services.projector.models import Base, ConsumerOffset, ControlCommandRow, DeadLetterRow, ProjectorReject
from services.projector.rowplan import OP_CODES, RowPlan, RunPlan, plan_rows, run_composite, run_sequence

log = logging.getLogger(__name__)

MAX_REJECT_PAYLOAD = 64 * 1024
PartitionKey = tuple[str, int]
Item = ProjectedEvent | DeadLetter | Rejected


@dataclass
class BatchResult:
    """What a committed batch did."""

    applied: list[ProjectedEvent] = field(default_factory=list)
    duplicates: list[ProjectedEvent] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    dead_letter_duplicates: list[DeadLetter] = field(default_factory=list)


def _table(model: type[Base]) -> sa.Table:
    return cast(sa.Table, model.__table__)


OFFSETS = _table(ConsumerOffset)
CONTROL = _table(ControlCommandRow)


def is_data_error(exc: BaseException) -> bool:
    """Whether ``exc`` is about the data of one event (reject it) rather than the database (retry)."""
    if isinstance(exc, psycopg.Error):  # the hot path speaks psycopg directly
        if isinstance(exc, psycopg.DataError | psycopg.IntegrityError):
            return True  # includes client-side ones without SQLSTATE (e.g. a NUL byte in text)
        return (exc.sqlstate or "")[:2] in ("22", "23")
    if isinstance(exc, sa.exc.DBAPIError):
        if exc.connection_invalidated:
            return False
        if isinstance(exc, sa.exc.DataError | sa.exc.IntegrityError):
            return True  # includes client-side ones without SQLSTATE (e.g. a NUL byte in text)
        sqlstate = getattr(exc.orig, "sqlstate", None) or ""
        return sqlstate[:2] in ("22", "23")
    return not isinstance(exc, sa.exc.SQLAlchemyError)


def _clean(text: str, limit: int = 4000) -> str:
    return text.replace("\x00", "\\0")[:limit]


def _raw(conn: sa.Connection) -> psycopg.Connection[Any]:
    """The psycopg connection under ``conn`` (same transaction): the hot path skips SQLAlchemy."""
    return cast("psycopg.Connection[Any]", conn.connection.driver_connection)


def _json(value: Any) -> Jsonb | None:
    # Python None is SQL NULL (as the models' JSONB(none_as_null=True)), not the JSON null.
    return None if value is None else Jsonb(value)


_STEP_TYPES = {
    "state": "text",
    "attempts": "integer",
    "started_at": "timestamptz",
    "finished_at": "timestamptz",
    "output": "jsonb",
    "error_kind": "text",
    "error_message": "text",
}
_ATTEMPT_TYPES = {
    "state": "text",
    "idempotency_key": "text",
    "inputs": "jsonb",
    "scheduled_at": "timestamptz",
    "started_at": "timestamptz",
    "finished_at": "timestamptz",
    "output": "jsonb",
    "error_kind": "text",
    "error_message": "text",
    "executor_id": "text",
}
_JSON_COLUMNS = frozenset({"output", "inputs", "trigger_data"})


def _upsert_sql(table: str, keys: tuple[str, ...], types: dict[str, str]) -> bytes:
    """One ``INSERT … ON CONFLICT DO UPDATE`` whose per-column operation is a parameter.

    ``i_<c>``: the value if the row is new; ``o_<c>`` / ``a_<c>``: operation code and argument
    (see :mod:`.rowplan`) applied to the existing value otherwise.
    """
    cols = (*keys, *types)
    values = (
        ", ".join(f"%(k_{c})s" for c in keys) + ", " + ", ".join(f"%(i_{c})s::{t}" for c, t in types.items())
    )
    sets = ", ".join(
        f"{c} = CASE %(o_{c})s::int WHEN 1 THEN %(a_{c})s::{t} "
        f"WHEN 2 THEN coalesce(t.{c}, %(a_{c})s::{t}) WHEN 3 THEN greatest(t.{c}, %(a_{c})s::{t}) "
        f"ELSE t.{c} END"
        for c, t in types.items()
    )
    return (
        f"INSERT INTO {table} AS t ({', '.join(cols)}) VALUES ({values}) "  # noqa: S608
        f"ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {sets}"
    ).encode()


_STEPS_SQL = _upsert_sql("steps", ("run_id", "step_id"), _STEP_TYPES)
_ATTEMPTS_SQL = _upsert_sql("attempts", ("run_id", "step_id", "attempt"), _ATTEMPT_TYPES)

_RUN_COLUMNS = (
    "run_id",
    "tenant",
    "workflow",
    "version",
    "state",
    "correlation_id",
    "created_at",
    "updated_at",
    "last_seq",
)
# Statements are built once, at import, from this module's constants only (hence the noqa).
_SKELETONS_SQL = (
    f"INSERT INTO runs ({', '.join(_RUN_COLUMNS)}) VALUES ({', '.join(f'%({c})s' for c in _RUN_COLUMNS)}) "  # noqa: S608
    "ON CONFLICT (run_id) DO NOTHING"
).encode()
_RUN_TYPES = {
    "state": "text",
    "created_at": "timestamptz",
    "event_type": "text",
    "trigger_data": "jsonb",
    "idempotency_key": "text",
    "finished_at": "timestamptz",
    "error_kind": "text",
    "error_message": "text",
}
_RUN_UPDATE_SQL = (
    "UPDATE runs AS t SET last_seq = %(last_seq)s, updated_at = %(updated_at)s, "  # noqa: S608
    + ", ".join(
        f"{c} = CASE WHEN %(h_{c})s THEN %(v_{c})s::{t} ELSE t.{c} END" for c, t in _RUN_TYPES.items()
    )
    + ", started_at = coalesce(t.started_at, %(started_at)s::timestamptz) "
    "WHERE t.run_id = %(run_id)s AND t.last_seq < %(after_seq)s RETURNING t.run_id"
).encode()

_EVENT_COLUMNS = (
    "event_id",
    "run_id",
    "tenant",
    "workflow",
    "version",
    "seq",
    "type",
    "step_id",
    "attempt",
    "state",
    "at",
    "correlation_id",
    "detail",
    "kafka_topic",
    "kafka_partition",
    "kafka_offset",
)
# No conflict target: a duplicate event_id *or* (run_id, seq) is a replay, not an error.
_EVENTS_SQL = (
    f"INSERT INTO run_events ({', '.join(_EVENT_COLUMNS)}) "  # noqa: S608
    f"VALUES ({', '.join('%s' for _ in _EVENT_COLUMNS)}) ON CONFLICT DO NOTHING RETURNING event_id"
).encode()


def _insert_skeletons(conn: sa.Connection, events: Sequence[ProjectedEvent]) -> None:
    first: dict[str, ProjectedEvent] = {}
    for ev in events:
        first.setdefault(ev.run_id, ev)
    if first:
        with _raw(conn).cursor() as cur:
            cur.executemany(_SKELETONS_SQL, [run_skeleton(ev) for ev in first.values()])


def _event_row(ev: ProjectedEvent) -> tuple[Any, ...]:
    return (
        ev.event_id,
        ev.run_id,
        ev.tenant,
        ev.workflow,
        ev.version,
        ev.seq,
        ev.type,
        ev.step_id,
        ev.attempt,
        ev.state,
        ev.at,
        ev.correlation_id,
        _json(ev.raw_detail),
        ev.where.topic,
        ev.where.partition,
        ev.where.offset,
    )


def _insert_events(conn: sa.Connection, events: Sequence[ProjectedEvent]) -> set[str]:
    if not events:
        return set()
    inserted: set[str] = set()
    with _raw(conn).cursor() as cur:
        cur.executemany(_EVENTS_SQL, [_event_row(ev) for ev in events], returning=True)
        for _ in cur.results():
            inserted.update(row[0] for row in cur.fetchall())
    return inserted


def _plan_params(plan: RowPlan, types: dict[str, str]) -> dict[str, Any]:
    params: dict[str, Any] = {f"k_{c}": v for c, v in plan.key.items()}
    for column in types:
        op, arg = plan.ops[column]
        value = plan.insert[column]
        if column in _JSON_COLUMNS:
            value, arg = _json(value), _json(arg)
        params[f"i_{column}"] = value
        params[f"o_{column}"] = OP_CODES[op]
        params[f"a_{column}"] = arg
    return params


def _write_plans(
    cur: psycopg.Cursor[Any], sql: bytes, rounds: list[list[RowPlan]], types: dict[str, str]
) -> None:
    for plans in rounds:
        cur.executemany(sql, [_plan_params(p, types) for p in plans])


def _run_params(plan: RunPlan) -> dict[str, Any]:
    params: dict[str, Any] = {
        "run_id": plan.run_id,
        "after_seq": plan.after_seq,
        "last_seq": plan.last_seq,
        "updated_at": plan.updated_at,
        "started_at": plan.started_at,
    }
    for column in _RUN_TYPES:
        present = column in plan.sets
        value = plan.sets.get(column)
        params[f"h_{column}"] = present
        params[f"v_{column}"] = _json(value) if column in _JSON_COLUMNS else value
    return params


def _update_runs(cur: psycopg.Cursor[Any], events: Sequence[ProjectedEvent]) -> None:
    """Apply the run-level changes of ``events`` (applied, in order): one update per run.

    A run whose stored ``last_seq`` is not below the batch's first change (only possible with
    out-of-order history) is redone one event at a time, exactly as before coalescing.
    """
    per_run: dict[str, list[ProjectedEvent]] = {}
    for ev in events:
        per_run.setdefault(ev.run_id, []).append(ev)
    composites: list[RunPlan] = []
    sequential: list[str] = []
    for run_id, evs in per_run.items():
        plan = run_composite(evs)
        if plan is None:
            sequential.append(run_id)
        else:
            composites.append(plan)
    if composites:
        updated: set[str] = set()
        cur.executemany(_RUN_UPDATE_SQL, [_run_params(p) for p in composites], returning=True)
        for _ in cur.results():
            updated.update(row[0] for row in cur.fetchall())
        sequential.extend(p.run_id for p in composites if p.run_id not in updated)
    for run_id in sequential:
        for plan in run_sequence(per_run[run_id]):
            cur.execute(_RUN_UPDATE_SQL, _run_params(plan))


def _apply_events(conn: sa.Connection, events: Sequence[ProjectedEvent]) -> None:
    """Apply ``events`` (new, in log order) to runs, steps and attempts: each table written once."""
    if not events:
        return
    steps: list[RowChange] = []
    attempts: list[RowChange] = []
    for ev in events:
        step = step_change(ev)
        if step is not None:
            steps.append(step)
            attempt = attempt_change(ev)
            if attempt is not None:
                attempts.append(attempt)
    with _raw(conn).cursor() as cur:
        _update_runs(cur, events)
        _write_plans(cur, _STEPS_SQL, plan_rows(steps, _STEP_TYPES), _STEP_TYPES)
        _write_plans(cur, _ATTEMPTS_SQL, plan_rows(attempts, _ATTEMPT_TYPES), _ATTEMPT_TYPES)


def _insert_dead_letters(conn: sa.Connection, letters: Sequence[DeadLetter]) -> set[str]:
    if not letters:
        return set()
    stmt = pg_insert(DeadLetterRow).on_conflict_do_nothing().returning(DeadLetterRow.dlq_id)
    return {row[0] for row in conn.execute(stmt, [dl.row() for dl in letters])}


def _store_controls(conn: sa.Connection, rows: Iterable[dict[str, Any] | None]) -> None:
    """Upsert control decisions: a run-history row replaces a dlq row; otherwise the first stays."""
    chosen = first_decisions(r for r in rows if r is not None)
    if not chosen:
        return
    table = CONTROL
    stmt = pg_insert(table)
    stmt = stmt.on_conflict_do_update(
        index_elements=["command_id"],
        set_={c.name: stmt.excluded[c.name] for c in table.columns if c.name != "command_id"},
        where=sa.and_(table.c.source == "dlq", stmt.excluded.source == "run_history"),
    )
    conn.execute(stmt, chosen)


def _store_rejects(conn: sa.Connection, consumer: str, rejects: Sequence[Rejected]) -> None:
    if not rejects:
        return
    rows = [
        {
            "topic": r.where.topic,
            "partition": r.where.partition,
            "offset": r.where.offset,
            "consumer": consumer,
            "reason": _clean(r.reason, 100),
            "message": _clean(r.message),
            "key": r.key,
            "payload": r.payload[:MAX_REJECT_PAYLOAD] if r.payload is not None else None,
            "payload_size": len(r.payload) if r.payload is not None else 0,
        }
        for r in rejects
    ]
    conn.execute(pg_insert(ProjectorReject).on_conflict_do_nothing(), rows)


def _store_offsets(conn: sa.Connection, consumer: str, next_offsets: dict[PartitionKey, int]) -> None:
    if not next_offsets:
        return
    table = OFFSETS
    stmt = pg_insert(table)
    stmt = stmt.on_conflict_do_update(
        index_elements=["consumer", "topic", "partition"],
        set_={"next_offset": stmt.excluded.next_offset, "updated_at": sa.func.now()},
        where=table.c.next_offset < stmt.excluded.next_offset,
    )
    rows = [
        {"consumer": consumer, "topic": topic, "partition": partition, "next_offset": offset}
        for (topic, partition), offset in next_offsets.items()
    ]
    conn.execute(stmt, rows)


def load_offsets(conn: sa.Connection, consumer: str, topic: str) -> dict[int, int]:
    """partition → next offset to read, as stored by this consumer (group)."""
    table = OFFSETS
    rows = conn.execute(
        sa.select(table.c.partition, table.c.next_offset).where(
            table.c.consumer == consumer, table.c.topic == topic
        )
    )
    return {int(p): int(o) for p, o in rows}


def _fast(
    conn: sa.Connection, events: Sequence[ProjectedEvent], letters: Sequence[DeadLetter], result: BatchResult
) -> None:
    _insert_skeletons(conn, events)
    inserted = _insert_events(conn, events)
    controls: list[dict[str, Any] | None] = []
    seen: set[str] = set()
    for ev in events:
        if ev.event_id in inserted and ev.event_id not in seen:
            controls.append(control_from_event(ev))
            result.applied.append(ev)
        else:
            result.duplicates.append(ev)
        seen.add(ev.event_id)
    _apply_events(conn, result.applied)
    stored = _insert_dead_letters(conn, letters)
    seen_letters: set[str] = set()
    for dl in letters:
        if dl.dlq_id in stored and dl.dlq_id not in seen_letters:
            controls.append(control_from_dead_letter(dl))
            result.dead_letters.append(dl)
        else:
            result.dead_letter_duplicates.append(dl)
        seen_letters.add(dl.dlq_id)
    _store_controls(conn, controls)


def _apply_error(exc: Exception) -> str:
    return f"{type(exc).__name__}: {getattr(exc, 'orig', None) or exc}".splitlines()[0]


def _slow(
    conn: sa.Connection, events: Sequence[ProjectedEvent], letters: Sequence[DeadLetter], result: BatchResult
) -> None:
    for ev in events:
        try:
            with conn.begin_nested():
                if _insert_events_one(conn, ev):
                    _apply_events(conn, [ev])
                    _store_controls(conn, [control_from_event(ev)])
                    result.applied.append(ev)
                else:
                    result.duplicates.append(ev)
        except Exception as exc:
            if not is_data_error(exc):
                raise
            message = _apply_error(exc)
            log.warning("event cannot be projected: %s", message, extra=ev.log_ids(reason="apply_error"))
            result.rejected.append(
                Rejected(ev.where, "apply_error", message, ev.key, ev.payload, ev.log_ids())
            )
    for dl in letters:
        try:
            with conn.begin_nested():
                if _insert_dead_letters(conn, [dl]):
                    _store_controls(conn, [control_from_dead_letter(dl)])
                    result.dead_letters.append(dl)
                else:
                    result.dead_letter_duplicates.append(dl)
        except Exception as exc:
            if not is_data_error(exc):
                raise
            message = _apply_error(exc)
            log.warning(
                "dead letter cannot be projected: %s", message, extra=dl.log_ids(reason="apply_error")
            )
            result.rejected.append(
                Rejected(dl.where, "apply_error", message, dl.key, dl.payload, dl.log_ids())
            )


def _insert_events_one(conn: sa.Connection, ev: ProjectedEvent) -> bool:
    _insert_skeletons(conn, [ev])
    return bool(_insert_events(conn, [ev]))


def write_batch(
    engine: sa.Engine,
    consumer: str,
    items: Sequence[Item],
    next_offsets: dict[PartitionKey, int],
) -> BatchResult:
    """Apply ``items`` and store ``next_offsets`` atomically. Raises only for non-data errors."""
    events = [i for i in items if isinstance(i, ProjectedEvent)]
    letters = [i for i in items if isinstance(i, DeadLetter)]
    decoded_rejects = [i for i in items if isinstance(i, Rejected)]
    result = BatchResult(rejected=list(decoded_rejects))
    try:
        with engine.begin() as conn:
            _fast(conn, events, letters, result)
            _store_rejects(conn, consumer, result.rejected)
            _store_offsets(conn, consumer, next_offsets)
        return result
    except Exception as exc:
        if not is_data_error(exc):
            raise
        log.warning("batch failed on its data, replaying it event by event: %s", str(exc).splitlines()[0])
    result = BatchResult(rejected=list(decoded_rejects))
    with engine.begin() as conn:
        _slow(conn, events, letters, result)
        _store_rejects(conn, consumer, result.rejected)
        _store_offsets(conn, consumer, next_offsets)
    return result
