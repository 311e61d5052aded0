"""One batch of Kafka records → one PostgreSQL transaction (rows *and* the next offsets).

Fast path, in one transaction: insert the runs that are new (skeletons), insert every event into
``run_events`` with ``ON CONFLICT DO NOTHING RETURNING event_id``, apply only the events that were
really inserted (so a replayed batch changes nothing) to ``runs``, ``steps`` and ``attempts``,
insert the dead letters (same way, by ``dlq_id``), record the control decisions of the new events
and dead letters in ``control_commands`` (see :mod:`.control`), store the rejects, and upsert
``consumer_offsets``
— forward only, so a zombie instance that lost its partition can never move an offset back.

Set-based: the applied events' changes are coalesced per row in memory (:mod:`.rowplan`; the
events of a partition are ordered) and each table is written by one statement per batch, built
once at import, whose one parameter is the rows as a jsonb array of arrays, serialised by orjson
and read with ``jsonb_array_elements`` (``run_events``:
one ``INSERT … SELECT``; ``runs``: skeletons, then one ``UPDATE … FROM``; ``steps`` and
``attempts``: ``UPDATE … FROM`` of the existing rows, then ``INSERT … ON CONFLICT DO NOTHING`` of
the new ones). The hot path speaks psycopg directly on the SQLAlchemy connection's transaction.

Every value written from a record was made storable when the record was decoded (see
:mod:`.bounds`), so a record's data should never fail a statement. If the fast path fails on
*data* all the same (see :func:`is_data_error`: a data exception, an integrity violation, a
program limit such as an index entry too large, text PostgreSQL refuses, a bug on one odd
event), the transaction is rolled back and the batch is replayed event by event, each in a
savepoint; the events that still fail become rejects (``apply_error``), so one poison event never
stalls its partition. Any other error (connection lost, server shutting down, serialization
failure or deadlock, missing table, ...) propagates: the caller retries the whole batch, which
is safe.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

import orjson
import psycopg
import sqlalchemy as sa
from psycopg.types.json import Jsonb
from sqlalchemy.dialects.postgresql import insert as pg_insert

from services.projector.bounds import MAX_KIND, MAX_MESSAGE, storable_bytes, storable_text
from services.projector.changes import RowChange, attempt_change, run_skeleton, step_change
from services.projector.control import (
    ControlRow,
    control_from_dead_letter,
    control_from_event,
    first_decisions,
)
from services.projector.dead_letter_store import DeadLetter
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


#: SQLSTATE classes a record's data can cause: data exception (22: invalid text representation,
#: untranslatable character, out of range, ...), integrity constraint violation (23), program
#: limit exceeded (54: index row too large, jsonb string too long, statement too complex), and
#: cardinality violation (21: two records of one batch updating one row in one statement, which
#: the replay event by event cannot do).
DATA_SQLSTATE_CLASSES = frozenset({"21", "22", "23", "54"})


def is_data_error(exc: BaseException) -> bool:
    """Whether ``exc`` is about the data of one record (replay event by event, reject what still
    fails) rather than the database or the connection (retry the batch as it is).

    Data: a PostgreSQL error of :data:`DATA_SQLSTATE_CLASSES`; a client-side ``DataError`` or
    ``IntegrityError`` (a NUL byte in text); an error raised before any statement was sent (a lone
    surrogate cannot be encoded, a value our code cannot convert). Everything else is retried:
    connection lost or invalidated, server shutting down (57), serialization failure or deadlock
    (40), insufficient resources (53), missing table (42), and any error not known to be the data's.
    """
    if isinstance(exc, psycopg.Error):  # the hot path speaks psycopg directly
        if isinstance(exc, psycopg.DataError | psycopg.IntegrityError):
            return True  # includes client-side ones without SQLSTATE (e.g. a NUL byte in text)
        return (exc.sqlstate or "")[:2] in DATA_SQLSTATE_CLASSES
    if isinstance(exc, sa.exc.DBAPIError):
        if exc.connection_invalidated:
            return False
        if isinstance(exc, sa.exc.DataError | sa.exc.IntegrityError):
            return True  # includes client-side ones without SQLSTATE (e.g. a NUL byte in text)
        orig = exc.orig
        if isinstance(orig, psycopg.Error):
            return is_data_error(orig)
        sqlstate = getattr(orig, "sqlstate", None) or ""
        return sqlstate[:2] in DATA_SQLSTATE_CLASSES
    if isinstance(exc, sa.exc.StatementError):  # raised while preparing parameters: about them
        return exc.orig is not None and is_data_error(exc.orig)
    # Our own code on one record (UnicodeEncodeError of a lone surrogate, ValueError, ...); an
    # SQLAlchemy error that is none of the above (a closed connection, a pool timeout) is not.
    return isinstance(exc, Exception) and not isinstance(exc, sa.exc.SQLAlchemyError)


def _raw(conn: sa.Connection) -> psycopg.Connection[Any]:
    """The psycopg connection under ``conn`` (same transaction): the hot path skips SQLAlchemy."""
    return cast("psycopg.Connection[Any]", conn.connection.driver_connection)


# Every hot statement takes its rows as one jsonb array of row arrays (serialised by orjson, in C)
# and reads them with jsonb_array_elements(): one statement (one round trip, one plan) per table
# per batch, however many rows, and no per-value work in Python on the way out. A JSON null in a
# jsonb column is SQL NULL, as Python None always was (JSONB(none_as_null=True) in the models).
def _rows(columns: dict[str, str], *, ordinality: bool = False) -> str:
    """``(SELECT … FROM jsonb_array_elements(%b) …) AS s`` naming ``columns`` (name → SQL type) in
    the order of each row array; ``ord`` numbers the rows."""
    fields = ", ".join(
        f"nullif(r.j->{i}, 'null') AS {c}" if t == "jsonb" else f"(r.j->>{i})::{t} AS {c}"
        for i, (c, t) in enumerate(columns.items())
    )
    if ordinality:
        return f"(SELECT {fields}, r.ord FROM jsonb_array_elements(%b) WITH ORDINALITY AS r(j, ord)) AS s"  # noqa: S608
    return f"(SELECT {fields} FROM jsonb_array_elements(%b) AS r(j)) AS s"  # noqa: S608


def _plain(value: Any) -> Any:
    """A value orjson writes as is; any other (a JSON value orjson refuses: an integer beyond 64
    bits) as the standard library writes it."""
    if value is None or isinstance(value, str | int | float | datetime | orjson.Fragment):
        return value
    try:
        return orjson.Fragment(orjson.dumps(value))
    except orjson.JSONEncodeError:
        # allow_nan=False: NaN is not JSON (jsonb refuses it); values are storable (see .bounds)
        # already, so this only fails on a bug, which then fails its record, not the batch forever.
        return orjson.Fragment(json.dumps(value, allow_nan=False))


def _dump_rows(rows: Sequence[Sequence[Any]]) -> bytes:
    try:
        return orjson.dumps(rows)
    except orjson.JSONEncodeError:  # rare: redo value by value (see _plain)
        return orjson.dumps([[_plain(v) for v in row] for row in rows])


def _param(rows: Sequence[Sequence[Any]]) -> Jsonb:
    return Jsonb(rows, dumps=_dump_rows)


_STEP_KEYS = {"run_id": "text", "step_id": "text"}
_STEP_TYPES = {
    "state": "text",
    "attempts": "integer",
    "started_at": "timestamptz",
    "finished_at": "timestamptz",
    "output": "jsonb",
    "error_kind": "text",
    "error_message": "text",
}
_ATTEMPT_KEYS = {"run_id": "text", "step_id": "text", "attempt": "integer"}
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


def _plan_sql(table: str, keys: dict[str, str], types: dict[str, str]) -> tuple[bytes, bytes]:
    """(UPDATE of the existing rows, INSERT of the others) for one round of :class:`RowPlan`.

    The update runs first: per column, operation ``o_<c>`` with argument ``a_<c>`` (see
    :mod:`.rowplan`); then the rows still missing are inserted with their ``i_<c>`` values.
    """
    ins = {f"i_{c}": t for c, t in types.items()}
    ops = {f"o_{c}": "integer" for c in types}
    args = {f"a_{c}": t for c, t in types.items()}
    sets = ", ".join(
        f"{c} = CASE s.o_{c} WHEN 1 THEN s.a_{c} WHEN 2 THEN coalesce(t.{c}, s.a_{c}) "
        f"WHEN 3 THEN greatest(t.{c}, s.a_{c}) ELSE t.{c} END"
        for c in types
    )
    match = " AND ".join(f"t.{k} = s.{k}" for k in keys)
    update = f"UPDATE {table} AS t SET {sets} FROM {_rows({**keys, **ops, **args})} WHERE {match}"  # noqa: S608
    cols = (*keys, *types)
    values = ", ".join([*(f"s.{k}" for k in keys), *(f"s.i_{c}" for c in types)])
    insert = (
        f"INSERT INTO {table} ({', '.join(cols)}) SELECT {values} FROM {_rows({**keys, **ins})} "  # noqa: S608
        f"ON CONFLICT ({', '.join(keys)}) DO NOTHING"
    )
    return update.encode(), insert.encode()


_STEPS_SQL = _plan_sql("steps", _STEP_KEYS, _STEP_TYPES)
_ATTEMPTS_SQL = _plan_sql("attempts", _ATTEMPT_KEYS, _ATTEMPT_TYPES)

_RUN_SKELETON = {
    "run_id": "text",
    "tenant": "text",
    "workflow": "text",
    "version": "integer",
    "state": "text",
    "correlation_id": "text",
    "created_at": "timestamptz",
    "updated_at": "timestamptz",
    "last_seq": "integer",
}
_SKELETONS_SQL = (
    f"INSERT INTO runs ({', '.join(_RUN_SKELETON)}) SELECT * FROM {_rows(_RUN_SKELETON)} "  # noqa: S608
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
    "parent_run_id": "text",
}
_RUN_PLAN = {
    "run_id": "text",
    "after_seq": "integer",
    "last_seq": "integer",
    "updated_at": "timestamptz",
    "started_at": "timestamptz",
    **{f"h_{c}": "boolean" for c in _RUN_TYPES},
    **{f"v_{c}": t for c, t in _RUN_TYPES.items()},
}
_RUN_UPDATE_SQL = (
    "UPDATE runs AS t SET last_seq = s.last_seq, updated_at = s.updated_at, "  # noqa: S608
    + ", ".join(f"{c} = CASE WHEN s.h_{c} THEN s.v_{c} ELSE t.{c} END" for c in _RUN_TYPES)
    + f", started_at = coalesce(t.started_at, s.started_at) FROM {_rows(_RUN_PLAN)} "
    "WHERE t.run_id = s.run_id AND t.last_seq < s.after_seq RETURNING t.run_id"
).encode()

_EVENT_TYPES = {
    "event_id": "text",
    "run_id": "text",
    "tenant": "text",
    "workflow": "text",
    "version": "integer",
    "seq": "integer",
    "type": "text",
    "step_id": "text",
    "attempt": "integer",
    "state": "text",
    "at": "timestamptz",
    "correlation_id": "text",
    "detail": "jsonb",
    "kafka_topic": "text",
    "kafka_partition": "integer",
    "kafka_offset": "bigint",
}
# No conflict target: a duplicate event_id *or* (run_id, seq) is a replay, not an error. ORDER BY
# keeps the batch's order, so of two records with one (run_id, seq) the first read is the one kept.
_EVENTS_SQL = (
    f"INSERT INTO run_events ({', '.join(_EVENT_TYPES)}) "  # noqa: S608
    f"SELECT {', '.join(f's.{c}' for c in _EVENT_TYPES)} "
    f"FROM {_rows(_EVENT_TYPES, ordinality=True)} ORDER BY ord "
    "ON CONFLICT DO NOTHING RETURNING event_id"
).encode()


def _skeleton_row(skeleton: Mapping[str, object]) -> tuple[object, ...]:
    return tuple(skeleton[c] for c in _RUN_SKELETON)


def _insert_skeletons(conn: sa.Connection, events: Sequence[ProjectedEvent]) -> None:
    first: dict[str, ProjectedEvent] = {}
    for ev in events:
        first.setdefault(ev.run_id, ev)
    if first:
        rows = [_skeleton_row(run_skeleton(ev)) for ev in first.values()]
        _raw(conn).execute(_SKELETONS_SQL, (_param(rows),))


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
        orjson.Fragment(ev.detail_text) if ev.detail_text is not None else ev.raw_detail,
        ev.where.topic,
        ev.where.partition,
        ev.where.offset,
    )


def _insert_events(conn: sa.Connection, events: Sequence[ProjectedEvent]) -> set[str]:
    if not events:
        return set()
    rows = [_event_row(ev) for ev in events]
    cur = _raw(conn).execute(_EVENTS_SQL, (_param(rows),))
    return {row[0] for row in cur.fetchall()}


def _write_plans(
    conn: psycopg.Connection[Any],
    sql: tuple[bytes, bytes],
    rounds: list[list[RowPlan]],
    types: dict[str, str],
) -> None:
    update, insert = sql
    columns = tuple(types)
    codes = OP_CODES
    for plans in rounds:
        updates: list[list[Any]] = []
        inserts: list[list[Any]] = []
        for plan in plans:
            key = list(plan.key.values())
            ops = plan.ops
            pairs = [ops[c] for c in columns]
            updates.append(key + [codes[op] for op, _ in pairs] + [arg for _, arg in pairs])
            values = plan.insert
            inserts.append(key + [values[c] for c in columns])
        conn.execute(update, (_param(updates),))
        conn.execute(insert, (_param(inserts),))


def _run_row(plan: RunPlan) -> tuple[Any, ...]:
    present = [c in plan.sets for c in _RUN_TYPES]
    values = [plan.sets.get(c) for c in _RUN_TYPES]
    return (plan.run_id, plan.after_seq, plan.last_seq, plan.updated_at, plan.started_at, *present, *values)


def _update_runs(conn: psycopg.Connection[Any], events: Sequence[ProjectedEvent]) -> None:
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
        rows = [_run_row(p) for p in composites]
        updated = {row[0] for row in conn.execute(_RUN_UPDATE_SQL, (_param(rows),)).fetchall()}
        sequential.extend(p.run_id for p in composites if p.run_id not in updated)
    for run_id in sequential:
        for plan in run_sequence(per_run[run_id]):
            conn.execute(_RUN_UPDATE_SQL, (_param([_run_row(plan)]),))


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
    raw = _raw(conn)
    _update_runs(raw, events)
    _write_plans(raw, _STEPS_SQL, plan_rows(steps, _STEP_TYPES), _STEP_TYPES)
    _write_plans(raw, _ATTEMPTS_SQL, plan_rows(attempts, _ATTEMPT_TYPES), _ATTEMPT_TYPES)


def _insert_dead_letters(conn: sa.Connection, letters: Sequence[DeadLetter]) -> set[str]:
    if not letters:
        return set()
    stmt = pg_insert(DeadLetterRow).on_conflict_do_nothing().returning(DeadLetterRow.dlq_id)
    return {row[0] for row in conn.execute(stmt, [dl.row() for dl in letters])}


def _store_controls(conn: sa.Connection, rows: Iterable[ControlRow | None]) -> None:
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
            "reason": storable_text(r.reason, MAX_KIND),
            "message": storable_text(r.message, MAX_MESSAGE),
            "key": storable_bytes(r.key),
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
    controls: list[ControlRow | None] = []
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
    """The first line of what went wrong (storable: it becomes a reject's message)."""
    text = f"{type(exc).__name__}: {getattr(exc, 'orig', None) or exc}".splitlines()[0]
    return storable_text(text, MAX_MESSAGE)


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
        log.warning("batch failed on its data, replaying it event by event: %s", _apply_error(exc))
    result = BatchResult(rejected=list(decoded_rejects))
    with engine.begin() as conn:
        _slow(conn, events, letters, result)
        _store_rejects(conn, consumer, result.rejected)
        _store_offsets(conn, consumer, next_offsets)
    return result
