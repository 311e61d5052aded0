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

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert

from services.projector.changes import RowChange, attempt_change, run_skeleton, run_update, step_change
from services.projector.control import control_from_dead_letter, control_from_event, first_decisions
from services.projector.dead_letters import DeadLetter
from services.projector.events import ProjectedEvent, Rejected
from services.projector.models import (
    Attempt,
    Base,
    ConsumerOffset,
    ControlCommandRow,
    DeadLetterRow,
    ProjectorReject,
    Run,
    RunEventRow,
    Step,
)

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


RUNS, STEPS, ATTEMPTS, OFFSETS = _table(Run), _table(Step), _table(Attempt), _table(ConsumerOffset)
CONTROL = _table(ControlCommandRow)


def is_data_error(exc: BaseException) -> bool:
    """Whether ``exc`` is about the data of one event (reject it) rather than the database (retry)."""
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


def _upsert(conn: sa.Connection, table: sa.Table, change: RowChange) -> None:
    stmt = pg_insert(table).values({**change.key, **change.values})
    sets: dict[str, Any] = {}
    for column, how in change.merge.items():
        new, old = stmt.excluded[column], table.c[column]
        if how == "set":
            sets[column] = new
        elif how == "coalesce":
            sets[column] = sa.func.coalesce(old, new)
        else:
            sets[column] = sa.func.greatest(old, new)
    if sets:
        conn.execute(stmt.on_conflict_do_update(index_elements=list(change.key), set_=sets))
    else:
        conn.execute(stmt.on_conflict_do_nothing(index_elements=list(change.key)))


def _insert_skeletons(conn: sa.Connection, events: Sequence[ProjectedEvent]) -> None:
    first: dict[str, ProjectedEvent] = {}
    for ev in events:
        first.setdefault(ev.run_id, ev)
    if first:
        rows = [run_skeleton(ev) for ev in first.values()]
        conn.execute(pg_insert(Run).on_conflict_do_nothing(index_elements=["run_id"]), rows)


def _insert_events(conn: sa.Connection, events: Sequence[ProjectedEvent]) -> set[str]:
    if not events:
        return set()
    rows = [
        {
            "event_id": ev.event_id,
            "run_id": ev.run_id,
            "tenant": ev.tenant,
            "workflow": ev.workflow,
            "version": ev.version,
            "seq": ev.seq,
            "type": ev.type,
            "step_id": ev.step_id,
            "attempt": ev.attempt,
            "state": ev.state,
            "at": ev.at,
            "correlation_id": ev.correlation_id,
            "detail": ev.raw_detail,
            "kafka_topic": ev.where.topic,
            "kafka_partition": ev.where.partition,
            "kafka_offset": ev.where.offset,
        }
        for ev in events
    ]
    # No conflict target: a duplicate event_id *or* (run_id, seq) is a replay, not an error.
    stmt = pg_insert(RunEventRow).on_conflict_do_nothing().returning(RunEventRow.event_id)
    return {row[0] for row in conn.execute(stmt, rows)}


def _apply_event(conn: sa.Connection, ev: ProjectedEvent) -> None:
    runs = RUNS
    values = run_update(ev)
    if len(values) > 2:  # more than the seq bump, which _bump_runs does for the whole batch
        stmt = sa.update(runs).where(runs.c.run_id == ev.run_id, runs.c.last_seq < ev.seq).values(values)
        if "state" in values and values["state"] == "running":
            stmt = stmt.values(started_at=sa.func.coalesce(runs.c.started_at, ev.at))
        conn.execute(stmt)
    step = step_change(ev)
    if step is not None:
        _upsert(conn, STEPS, step)
        attempt = attempt_change(ev)
        if attempt is not None:
            _upsert(conn, ATTEMPTS, attempt)


def _bump_runs(conn: sa.Connection, events: Iterable[ProjectedEvent]) -> None:
    newest: dict[str, ProjectedEvent] = {}
    for ev in events:
        if ev.run_id not in newest or ev.seq > newest[ev.run_id].seq:
            newest[ev.run_id] = ev
    if not newest:
        return
    runs = RUNS
    stmt = (
        sa.update(runs)
        .where(runs.c.run_id == sa.bindparam("b_run"), runs.c.last_seq < sa.bindparam("b_seq"))
        .values(last_seq=sa.bindparam("b_seq"), updated_at=sa.bindparam("b_at"))
    )
    conn.execute(stmt, [{"b_run": e.run_id, "b_seq": e.seq, "b_at": e.at} for e in newest.values()])


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
            _apply_event(conn, ev)
            controls.append(control_from_event(ev))
            result.applied.append(ev)
        else:
            result.duplicates.append(ev)
        seen.add(ev.event_id)
    _bump_runs(conn, result.applied)
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
                    _apply_event(conn, ev)
                    _bump_runs(conn, [ev])
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
