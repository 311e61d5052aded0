"""From a Kafka record to a :class:`ProjectedEvent` (or a :class:`Rejected` with the reason).

Pure: no I/O. Decoding goes through :func:`services.contracts.serde.decode`, so an older writer
schema is resolved to the current ``RunEvent``. ``detail_json`` that is not a JSON object is kept
(under ``"_raw"``) rather than rejected: the event's fields still say what happened.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from services.contracts.serde import ContractError, decode


@dataclass(frozen=True)
class Coordinates:
    """Where a record was read: the projection stores it with the event and in rejects."""

    topic: str
    partition: int
    offset: int


@dataclass(frozen=True)
class ProjectedEvent:
    """One decoded ``RunEvent`` with its Kafka coordinates."""

    event_id: str
    run_id: str
    tenant: str
    workflow: str
    version: int
    seq: int
    type: str
    step_id: str | None
    attempt: int | None
    state: str | None
    at: datetime
    correlation_id: str
    detail: dict[str, Any]
    raw_detail: Any
    where: Coordinates
    key: bytes | None = field(default=None, repr=False, compare=False)
    payload: bytes | None = field(default=None, repr=False, compare=False)
    #: ``detail_json`` as received when it is a JSON object (stored as is: no re-encoding)
    detail_text: str | None = field(default=None, repr=False, compare=False)

    @property
    def is_run_event(self) -> bool:
        return self.type.startswith("run_")

    def log_ids(self, **more: Any) -> dict[str, Any]:
        """``extra=`` of a log line about this event."""
        return {
            "tenant": self.tenant,
            "run_id": self.run_id,
            "correlation_id": self.correlation_id,
            "event_type": self.type,
            "seq": self.seq,
            **more,
        }


@dataclass(frozen=True)
class Rejected:
    """A record that cannot be projected, and why (``reason`` is a short machine-readable kind)."""

    where: Coordinates
    reason: str
    message: str
    key: bytes | None = None
    payload: bytes | None = None
    identity: dict[str, Any] = field(default_factory=dict)


def from_epoch_ms(value: int | float) -> datetime:
    return datetime.fromtimestamp(value / 1000.0, tz=UTC)


def parse_time(value: Any) -> datetime | None:
    """A timestamp from a detail field: epoch milliseconds, epoch seconds (float) or ISO 8601."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return from_epoch_ms(value)
    if isinstance(value, float):
        # Floats below 1e11 are seconds (year < 5138); larger ones milliseconds.
        return datetime.fromtimestamp(value if value < 1e11 else value / 1000.0, tz=UTC)
    if isinstance(value, str) and value:
        text = value.strip()
        if text.lstrip("-").isdigit():
            return from_epoch_ms(int(text))
        try:
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            return None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return None


def parse_detail(detail_json: str | None) -> tuple[dict[str, Any], Any]:
    """(detail as a dict for the projection, detail as stored in ``run_events.detail``)."""
    if detail_json is None:
        return {}, None
    try:
        value = json.loads(detail_json)
    except ValueError:
        return {}, {"_raw": detail_json}
    if isinstance(value, dict):
        return value, value
    return {}, {"_raw": value}


def event_from_record(
    record: dict[str, Any], where: Coordinates, key: bytes | None = None, payload: bytes | None = None
) -> ProjectedEvent:
    """A :class:`ProjectedEvent` from a decoded ``RunEvent`` record (``payload``: its raw bytes)."""
    detail, raw = parse_detail(record.get("detail_json"))
    return ProjectedEvent(
        event_id=str(record["event_id"]),
        run_id=str(record["run_id"]),
        tenant=str(record["tenant"]),
        workflow=str(record["workflow"]),
        version=int(record["version"]),
        seq=int(record["seq"]),
        type=str(record["type"]),
        step_id=record.get("step_id"),
        attempt=record.get("attempt"),
        state=record.get("state"),
        at=from_epoch_ms(int(record["at"])),
        correlation_id=str(record["correlation_id"]),
        detail=detail,
        raw_detail=raw,
        where=where,
        key=key,
        payload=payload,
        detail_text=record.get("detail_json") if raw is detail and raw is not None else None,
    )


def decode_event(value: bytes | None, key: bytes | None, where: Coordinates) -> ProjectedEvent | Rejected:
    """Decode one record of the events topic; never raises."""
    try:
        _, record = decode(value, expected="RunEvent")
    except ContractError as exc:
        return Rejected(where, exc.kind, exc.message, key, value)
    try:
        return event_from_record(record, where, key, value)
    except (KeyError, TypeError, ValueError, OverflowError, OSError) as exc:
        return Rejected(where, "bad_event", f"{type(exc).__name__}: {exc}", key, value)
