"""From a record of the dead-letter topic to a :class:`DeadLetter` (or a :class:`~.events.Rejected`).

Pure: no I/O. A dead letter whose ``original_topic`` is the control topic is an operator command
refused before it reached a run; its ``original_value`` is decoded as a ``ControlCommand`` when it
can be (garbage, the very reason it was refused, stays ``None``), so that the refusal can be
recorded in ``control_commands`` too (see :mod:`.control`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from services.contracts.serde import ContractError, decode
from services.projector.events import Coordinates, Rejected, from_epoch_ms

MAX_ORIGINAL_VALUE = 64 * 1024


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
    command: dict[str, Any] | None = None
    key: bytes | None = field(default=None, repr=False, compare=False)
    payload: bytes | None = field(default=None, repr=False, compare=False)

    def row(self) -> dict[str, Any]:
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

    def log_ids(self, **more: Any) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "run_id": self.run_id,
            "correlation_id": self.correlation_id,
            "error_kind": self.error_kind,
            "dlq_id": self.dlq_id,
            **more,
        }


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


def control_command_of(value: bytes | None) -> dict[str, Any] | None:
    """The ``ControlCommand`` in a dead-lettered control record, or None when it does not decode."""
    try:
        _, command = decode(value, expected="ControlCommand")
    except ContractError:
        return None
    return command if command.get("command_id") else None


def dead_letter_from_record(
    record: dict[str, Any],
    where: Coordinates,
    control_topic: str | None = None,
    key: bytes | None = None,
    payload: bytes | None = None,
) -> DeadLetter:
    """A :class:`DeadLetter` from a decoded record; ``control_topic`` marks control refusals."""
    original_topic = _opt_str(record.get("original_topic"))
    original_value = record.get("original_value")
    command = None
    if control_topic is not None and original_topic == control_topic:
        command = control_command_of(original_value)
    return DeadLetter(
        dlq_id=str(record["dlq_id"]),
        service=str(record["service"]),
        error_kind=str(record["error_kind"]),
        error_message=str(record["error_message"]),
        original_topic=original_topic,
        original_partition=_opt_int(record.get("original_partition")),
        original_offset=_opt_int(record.get("original_offset")),
        original_key=record.get("original_key"),
        original_value=original_value,
        tenant=_opt_str(record.get("tenant")),
        correlation_id=_opt_str(record.get("correlation_id")),
        run_id=_opt_str(record.get("run_id")),
        step_id=_opt_str(record.get("step_id")),
        attempt=_opt_int(record.get("attempt")),
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
        _, record = decode(value, expected="DeadLetter")
    except ContractError as exc:
        return Rejected(where, exc.kind, exc.message, key, value)
    try:
        return dead_letter_from_record(record, where, control_topic, key, value)
    except (KeyError, TypeError, ValueError, OverflowError, OSError) as exc:
        return Rejected(where, "bad_dead_letter", f"{type(exc).__name__}: {exc}", key, value)
