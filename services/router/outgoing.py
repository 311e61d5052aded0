"""The records one step of a run produces, encoded and size-checked before any is sent.

A *step* is one change to one run: a record applied to it, a timer, its admission, its failure.
A step writes all of its records or none: :class:`RecordMapper` encodes the run's history
events, step commands, dead letters and state record first, checks each against the record
budget (:mod:`services.bus.record_budget`), and only then does the core hand them to the outbox.
So a record that cannot be written (too large, or holding what cannot be encoded) is known
before anything of the step was produced, and the core can replace the step with a small,
final failure instead of leaving a gap in the run's history or failing the transaction forever.

:meth:`RecordMapper.step` is the whole mapping of one step: its records, the run's ``seq``
advanced, a finished run shrunk as retention says, and its state record. :func:`send` hands a
checked record to the outbox.
"""

from __future__ import annotations

from dataclasses import dataclass

from confluent_kafka import KafkaException

from services.bus.clients import headers_for
from services.bus.record_budget import Headers, RecordTooLarge, record_size
from services.bus.topics import Topics
from services.bus.txloop import Outbox
from services.contracts.dead_letters import encode_dead_letter
from services.contracts.strict_json import StrictJSONError
from services.router import records, retention
from services.router.machine import Effects
from services.router.state import RunState, RunStatus


@dataclass(frozen=True, slots=True)
class Outgoing:
    topic: str
    value: bytes | None
    key: str | bytes | None
    partition: int | None = None
    headers: list[tuple[str, str | bytes | None]] | None = None


def checked(record: Outgoing, limit: int) -> Outgoing:
    """``record`` if it fits in ``limit`` bytes (key + value + headers), else :class:`RecordTooLarge`."""
    size = record_size(record.key, record.value, record.headers)
    if size > limit:
        raise RecordTooLarge(record.topic, size, limit)
    return record


class OutboxFailure(RuntimeError):
    """The outbox refused a record the core had already checked: the transaction's output is
    incomplete, so it must abort. Never contained per record."""


def send(out: Outbox, record: Outgoing) -> None:
    try:
        out.send(
            record.topic, record.value, key=record.key, partition=record.partition, headers=record.headers
        )
    except KafkaException:
        raise
    except Exception as exc:
        raise OutboxFailure(f"the outbox refused a checked {record.topic} record: {exc}") from exc


def error_kind(exc: BaseException) -> str:
    """The ``error_kind`` of a record that could not be written."""
    if isinstance(exc, RecordTooLarge):
        return "record_too_large"
    if isinstance(exc, StrictJSONError):
        return exc.kind
    if isinstance(exc, UnicodeError):
        return "unencodable"
    return "router_error"


@dataclass(frozen=True, slots=True)
class StepRecords:
    """A step's encoded records, all within the budget."""

    records: list[Outgoing]  # events, then commands, then dead letters
    last_seq: int  # the run's seq once the events are written


class RecordMapper:
    """Maps a run's effects to Kafka records (topics, keys, partitions, identity headers)."""

    def __init__(self, topics: Topics, service: str) -> None:
        self.topics = topics
        self.service = service

    def headers(self, run: RunState) -> Headers:
        return headers_for(run.tenant, run.run_id, run.correlation_id)

    def effects(
        self, run: RunState, effects: Effects, scopes: list[str], now_ms: int, limit: int
    ) -> StepRecords:
        """Encode and check every record of ``effects``. Raises :class:`RecordTooLarge`,
        :class:`StrictJSONError` or :class:`UnicodeError` — with nothing sent and ``run.seq``
        untouched."""
        headers = headers_for(run.tenant, run.run_id, run.correlation_id)
        out: list[Outgoing] = []
        seq = run.seq
        for event in effects.events:
            seq += 1
            value = records.run_event(run, event, seq, now_ms)
            out.append(
                checked(Outgoing(self.topics.events, value, run.run_id, run.partition, headers), limit)
            )
        for command in effects.commands:
            value = records.step_command(run, command, scopes, now_ms)
            out.append(
                checked(Outgoing(self.topics.commands, value, run.run_id, run.partition, headers), limit)
            )
        for dead in effects.dead_letters:
            value = encode_dead_letter(
                self.service,
                dead["error_kind"],
                dead["error_message"],
                now_ms,
                tenant=run.tenant,
                correlation_id=run.correlation_id,
                run_id=run.run_id,
                step_id=dead["step_id"],
                attempt=dead["attempt"],
                max_bytes=limit,
            )
            out.append(checked(Outgoing(self.topics.dlq, value, run.run_id, None, headers), limit))
        return StepRecords(out, seq)

    def step(
        self, run: RunState, effects: Effects, scopes: list[str], now_ms: int, limit: int
    ) -> tuple[StepRecords, Outgoing]:
        """Every record of a step, checked, and the run's state record after it: ``run.seq``
        advanced and, once the run succeeded, its state shrunk (a finished run whose state record
        would be too large shrinks too). Raises before anything is sent (the caller rolls the run
        back)."""
        encoded = self.effects(run, effects, scopes, now_ms, limit)
        run.seq = encoded.last_seq
        if run.status == RunStatus.SUCCEEDED and run.compacted is None:
            retention.compact(run, retention.SUCCEEDED)
        try:
            state = self.changelog(run, now_ms, limit)
        except RecordTooLarge:
            if not run.status.terminal or run.compacted is not None:
                raise
            retention.compact(run, retention.TOO_LARGE)  # a finished run can do without replay state
            state = self.changelog(run, now_ms, limit)
        return encoded, state

    def changelog(self, run: RunState, now_ms: int, limit: int) -> Outgoing:
        """The run's state record, checked (same exceptions as :meth:`effects`)."""
        return checked(
            Outgoing(self.topics.router_state, records.changelog(run, now_ms), run.run_id, run.partition),
            limit,
        )

    def tombstone(self, run_id: str, partition: int) -> Outgoing:
        return Outgoing(self.topics.router_state, None, run_id, partition)
