"""The ``DeadLetter`` record, built the same way by every service that writes to the DLQ.

Two rules live here so that no caller can forget them:

* the copy of the original record is bounded (value 512 KiB, key 16 KiB, message 4,000 chars),
  with the truncation stated in the message: a dead letter must always be producible, or the bad
  record that caused it would fail its transaction again and again and stall its partition
  (a trigger near the broker's 1 MB limit plus the envelope would exceed the producer's own);
* the ``dlq_id`` is deterministic where the cause has an identity (the source record's position,
  or the run, step and attempt), so a dead letter written again after a rewind is the same one.
"""

from __future__ import annotations

import uuid
from typing import Any

from services.contracts import serde

MAX_ORIGINAL_VALUE = 512 * 1024
MAX_ORIGINAL_KEY = 16 * 1024
MAX_MESSAGE = 4000


def dead_letter_id(
    service: str,
    *,
    topic: str | None = None,
    partition: int | None = None,
    offset: int | None = None,
    run_id: str | None = None,
    step_id: str | None = None,
    attempt: int | None = None,
) -> str:
    if topic is not None and partition is not None and offset is not None:
        return f"{service}:{topic}:{partition}:{offset}"
    if run_id is not None:
        return f"{service}:{run_id}:{step_id or '-'}:{attempt if attempt is not None else '-'}"
    return f"{service}:{uuid.uuid4()}"


def _bounded(data: bytes | str | None, limit: int, what: str, notes: list[str]) -> bytes | None:
    raw = data.encode() if isinstance(data, str) else data
    if raw is not None and len(raw) > limit:
        notes.append(f"original {what} truncated from {len(raw)} to {limit} bytes")
        return raw[:limit]
    return raw


def encode_dead_letter(
    service: str,
    error_kind: str,
    message: str,
    failed_at_ms: int,
    *,
    topic: str | None = None,
    partition: int | None = None,
    offset: int | None = None,
    key: bytes | str | None = None,
    value: bytes | None = None,
    tenant: str | None = None,
    correlation_id: str | None = None,
    run_id: str | None = None,
    step_id: str | None = None,
    attempt: int | None = None,
) -> bytes:
    notes: list[str] = []
    original_value = _bounded(value, MAX_ORIGINAL_VALUE, "value", notes)
    original_key = _bounded(key, MAX_ORIGINAL_KEY, "key", notes)
    text = message if not notes else f"{message} ({'; '.join(notes)})"
    if len(text) > MAX_MESSAGE:
        text = text[: MAX_MESSAGE - 1] + "…"
    record: dict[str, Any] = {
        "dlq_id": dead_letter_id(
            service,
            topic=topic,
            partition=partition,
            offset=offset,
            run_id=run_id,
            step_id=step_id,
            attempt=attempt,
        ),
        "service": service,
        "error_kind": error_kind,
        "error_message": text,
        "original_topic": topic,
        "original_partition": partition,
        "original_offset": offset,
        "original_key": original_key,
        "original_value": original_value,
        "attempt": attempt,
        "tenant": tenant,
        "correlation_id": correlation_id,
        "run_id": run_id,
        "step_id": step_id,
        "failed_at": failed_at_ms,
    }
    return serde.encode("DeadLetter", record)
