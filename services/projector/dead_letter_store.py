"""From a record of the dead-letter topic to a :class:`DeadLetter` (or a :class:`~.events.Rejected`).

Pure: no I/O. A dead letter whose ``original_topic`` is the control topic (or the inbox: the
router core's refusals) is an operator command refused before it reached a run; its
``original_value`` is decoded as a ``ControlCommand`` when it can be (garbage, the very reason it
was refused, stays ``None``), so that the refusal can be recorded in ``control_commands`` too (see
:mod:`.control`).

Total, like :func:`~.events.decode_event`: every field is made storable (see :mod:`.bounds`) —
the engine's own dead letters are already bounded the same way, but the projector reads whatever
the topic holds — and :func:`decode_dead_letter` never raises.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypedDict, cast

from services.contracts import records
from services.contracts.records import ControlCommand
from services.contracts.redaction import redact_text
from services.contracts.serde import ContractError, decode, decode_inbox
from services.projector.bounds import (
    MAX_KIND,
    MAX_LONG_ID,
    MAX_MESSAGE,
    MAX_NAME,
    MAX_TOPIC,
    storable_bytes,
    storable_id,
    storable_optional,
    storable_optional_id,
    storable_text,
)
from services.projector.events import (
    Coordinates,
    LogIds,
    Rejected,
    Unprojectable,
    from_epoch_ms,
    int32,
    rejected,
)

log = logging.getLogger(__name__)

MAX_ORIGINAL_VALUE = 64 * 1024


class DeadLetterValues(TypedDict):
    """A ``dead_letters`` row as inserted (the columns of :class:`~.models.DeadLetterRow`)."""

    dlq_id: str
    service: str
    error_kind: str
    error_message: str
    original_topic: str | None
    original_partition: int | None
    original_offset: int | None
    original_key: bytes | None
    original_value: bytes | None
    original_value_size: int
    tenant: str | None
    correlation_id: str | None
    run_id: str | None
    step_id: str | None
    attempt: int | None
    failed_at: datetime
    kafka_topic: str
    kafka_partition: int
    kafka_offset: int


@dataclass(frozen=True)
class DeadLetter:
    """One decoded ``DeadLetter`` record with its Kafka coordinates."""

    dlq_id: str
    service: str
    error_kind: str
    error_message: str
    original_topic: str | None
    original_partition: int | None
    original_offset: int | None
    original_key: bytes | None
    original_value: bytes | None
    tenant: str | None
    correlation_id: str | None
    run_id: str | None
    step_id: str | None
    attempt: int | None
    failed_at: datetime
    where: Coordinates
    command: ControlCommand | None = None
    key: bytes | None = field(default=None, repr=False, compare=False)
    payload: bytes | None = field(default=None, repr=False, compare=False)

    def row(self) -> DeadLetterValues:
        """The ``dead_letters`` row (``original_value`` capped at 64 KiB, its full size kept)."""
        value = self.original_value
        return {
            "dlq_id": self.dlq_id,
            "service": self.service,
            "error_kind": self.error_kind,
            "error_message": self.error_message,
            "original_topic": self.original_topic,
            "original_partition": self.original_partition,
            "original_offset": self.original_offset,
            "original_key": self.original_key,
            "original_value": value[:MAX_ORIGINAL_VALUE] if value is not None else None,
            "original_value_size": len(value) if value is not None else 0,
            "tenant": self.tenant,
            "correlation_id": self.correlation_id,
            "run_id": self.run_id,
            "step_id": self.step_id,
            "attempt": self.attempt,
            "failed_at": self.failed_at,
            "kafka_topic": self.where.topic,
            "kafka_partition": self.where.partition,
            "kafka_offset": self.where.offset,
        }

    def log_ids(self, **more: object) -> LogIds:
        return {
            "tenant": self.tenant,
            "run_id": self.run_id,
            "correlation_id": self.correlation_id,
            "error_kind": self.error_kind,
            "dlq_id": self.dlq_id,
            **more,
        }


def _opt_int32(value: Any, what: str) -> int | None:
    return None if value is None else int32(value, what)


def _opt_int64(value: Any, what: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not -(2**63) <= value < 2**63:
        raise Unprojectable("bad_dead_letter", f"{what} is not a 64-bit integer")
    return value


def control_command_of(value: bytes | None) -> ControlCommand | None:
    """The ``ControlCommand`` in a dead-lettered control record (bare, or in the inbox envelope the
    router core refused), or None when it does not decode."""
    try:
        name, command = decode(value)
        if name == "InboxRecord":
            name, command = decode_inbox(value)
    except Exception:  # garbage is the usual reason it was dead-lettered
        return None
    # serde checked it against the ControlCommand schema: it has that shape
    return cast(ControlCommand, command) if name == "ControlCommand" and command.get("command_id") else None


def _inbox_beside(control_topic: str) -> str:
    """The router core's inbox under the control topic's prefix: the core dead-letters the
    commands it refuses (no such run of that tenant) with that topic as their origin."""
    return control_topic.removesuffix(".control") + ".inbox"


def dead_letter_from_record(
    record: records.DeadLetter,
    where: Coordinates,
    control_topic: str | None = None,
    key: bytes | None = None,
    payload: bytes | None = None,
) -> DeadLetter:
    """A :class:`DeadLetter` from a decoded record; ``control_topic`` marks control refusals.

    Every field is storable; raises :class:`~.events.Unprojectable` (``bad_dead_letter``) for a
    record without a projection (a field missing or of the wrong type, a time beyond ``datetime``).
    """
    try:
        return _dead_letter_from_record(record, where, control_topic, key, payload)
    except (KeyError, TypeError, ValueError, OverflowError, OSError) as exc:
        if isinstance(exc, Unprojectable):
            raise Unprojectable("bad_dead_letter", str(exc)) from exc
        raise Unprojectable("bad_dead_letter", f"{type(exc).__name__}: {exc}") from exc


def _bytes(value: Any, what: str) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    raise Unprojectable("bad_dead_letter", f"{what} is not bytes")


def _dead_letter_from_record(
    record: records.DeadLetter,
    where: Coordinates,
    control_topic: str | None,
    key: bytes | None,
    payload: bytes | None,
) -> DeadLetter:
    raw_topic = record.get("original_topic")
    original_value = _bytes(record.get("original_value"), "original_value")
    command = None
    if control_topic is not None and raw_topic in (control_topic, _inbox_beside(control_topic)):
        command = control_command_of(original_value)
    return DeadLetter(
        dlq_id=storable_id(str(record["dlq_id"]), MAX_LONG_ID),
        service=storable_text(str(record["service"]), MAX_KIND),
        error_kind=storable_text(str(record["error_kind"]), MAX_KIND),
        error_message=storable_text(redact_text(str(record["error_message"])), MAX_MESSAGE),
        original_topic=storable_optional(raw_topic, MAX_TOPIC),
        original_partition=_opt_int32(record.get("original_partition"), "original_partition"),
        original_offset=_opt_int64(record.get("original_offset"), "original_offset"),
        original_key=storable_bytes(_bytes(record.get("original_key"), "original_key")),
        original_value=original_value,
        tenant=storable_optional(record.get("tenant"), MAX_NAME),
        correlation_id=storable_optional_id(record.get("correlation_id"), MAX_LONG_ID),
        run_id=storable_optional_id(record.get("run_id")),
        step_id=storable_optional_id(record.get("step_id")),
        attempt=_opt_int32(record.get("attempt"), "attempt"),
        failed_at=from_epoch_ms(int(record["failed_at"])),
        where=where,
        command=command,
        key=key,
        payload=payload,
    )


def decode_dead_letter(
    value: bytes | None, key: bytes | None, where: Coordinates, control_topic: str | None = None
) -> DeadLetter | Rejected:
    """Decode one record of the dead-letter topic; never raises."""
    try:
        record = records.decode_dead_letter(value)
    except ContractError as exc:
        return rejected(where, exc.kind, exc.message, key, value)
    try:
        return dead_letter_from_record(record, where, control_topic, key, value)
    except Unprojectable as exc:
        return rejected(where, exc.reason, str(exc), key, value)
    except Exception as exc:  # a bug on one odd record must not stop the partition: reject it
        log.exception("dead letter cannot be decoded", extra={"topic": where.topic, "offset": where.offset})
        return rejected(where, "bad_dead_letter", f"{type(exc).__name__}: {exc}", key, value)
