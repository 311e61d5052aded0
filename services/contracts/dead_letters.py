"""The ``DeadLetter`` record, built the same way by every service that writes to the DLQ.

Two rules live here so that no caller can forget them:

* a dead letter is always producible, whatever the record that caused it: the copy of the
  original is bounded (value 512 KiB, or less under a smaller ``max_bytes``; key 16 KiB), every
  string field is bounded (message 4,000 characters; tenant, correlation id, run id and step id
  256) and made encodable (a lone surrogate becomes a visible escape), and each cut is stated in
  the message (credentials in well-known places of the message are masked:
  :func:`~services.contracts.redaction.redact_text`). Otherwise the bad record would fail its
  transaction again and again and stall its partition (a trigger near the broker's 1 MB limit
  plus the envelope would exceed the producer's own; a control command naming a
  300,000-character tenant made a 1.2 MB dead letter);
* the ``dlq_id`` is deterministic where the cause has an identity (the source record's position,
  or the run, step and attempt), so a dead letter written again after a rewind is the same one.
"""

from __future__ import annotations

import hashlib
import uuid

from services.contracts import serde
from services.contracts.records import DeadLetter
from services.contracts.redaction import redact_text
from services.contracts.text import bounded_optional, bounded_text, utf8_safe

MAX_ORIGINAL_VALUE = 512 * 1024
MAX_ORIGINAL_KEY = 16 * 1024
MAX_MESSAGE = 4000
#: Longest tenant, correlation id, run id and step id a dead letter carries (characters).
MAX_FIELD = 256
MAX_TOPIC = 300
MAX_KIND = 100
MAX_ID = 512
#: Bytes a dead letter needs besides its copy of the original value: the bounded key, message and
#: fields (at most 4 bytes a character), with room for the Kafka key and identity headers.
RESERVED_BYTES = MAX_ORIGINAL_KEY + 48 * 1024


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
        ident = f"{service}:{topic}:{partition}:{offset}"
    elif run_id is not None:
        ident = f"{service}:{run_id}:{step_id or '-'}:{attempt if attempt is not None else '-'}"
    else:
        return f"{service}:{uuid.uuid4()}"
    if len(ident) <= MAX_ID and bounded_text(ident, MAX_ID) == ident:
        return ident
    # Still deterministic (a rewound dead letter gets the same id), but bounded and encodable.
    digest = hashlib.sha256(ident.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{bounded_text(service, MAX_KIND)}:sha256:{digest}"


def bounded_identity(
    tenant: str | None, run_id: str | None = None, correlation_id: str | None = None
) -> tuple[str | None, str | None, str | None]:
    """Tenant, run id and correlation id as a dead letter carries them (also as its Kafka key and
    identity headers): whatever a hostile record claims, they stay small and encodable."""
    return (
        bounded_optional(tenant, MAX_FIELD),
        bounded_optional(run_id, MAX_FIELD),
        bounded_optional(correlation_id, MAX_FIELD),
    )


def _bounded(data: bytes | str | None, limit: int, what: str, notes: list[str]) -> bytes | None:
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    if raw is not None and len(raw) > limit:
        notes.append(f"original {what} truncated from {len(raw)} to {limit} bytes")
        return raw[:limit]
    return raw


def _field(value: str | None, what: str, notes: list[str]) -> str | None:
    if value is not None and (len(value) > MAX_FIELD or len(utf8_safe(value)) > MAX_FIELD):
        notes.append(f"{what} cut from {len(value)} characters")
    return bounded_optional(value, MAX_FIELD)


def dead_letter_record(
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
    max_bytes: int | None = None,
) -> DeadLetter:
    """The ``DeadLetter`` record, bounded as :func:`encode_dead_letter` describes."""
    notes: list[str] = []
    value_limit = MAX_ORIGINAL_VALUE
    if max_bytes is not None:
        value_limit = max(0, min(value_limit, max_bytes - RESERVED_BYTES))
    original_value = _bounded(value, value_limit, "value", notes)
    original_key = _bounded(key, MAX_ORIGINAL_KEY, "key", notes)
    # In this order: each cut adds its note.
    bounded_tenant = _field(tenant, "tenant", notes)
    bounded_correlation_id = _field(correlation_id, "correlation id", notes)
    bounded_run_id = _field(run_id, "run id", notes)
    bounded_step_id = _field(step_id, "step id", notes)
    # The notes go last and are never cut: they say what the copy is missing.
    suffix = f" ({'; '.join(notes)})" if notes else ""
    text = bounded_text(redact_text(message), MAX_MESSAGE - len(suffix)) + suffix
    return {
        "dlq_id": dead_letter_id(
            service,
            topic=topic,
            partition=partition,
            offset=offset,
            run_id=run_id,
            step_id=step_id,
            attempt=attempt,
        ),
        "service": bounded_text(service, MAX_KIND),
        "error_kind": bounded_text(error_kind, MAX_KIND),
        "error_message": text,
        "original_topic": bounded_optional(topic, MAX_TOPIC),
        "original_partition": partition,
        "original_offset": offset,
        "original_key": original_key,
        "original_value": original_value,
        "attempt": attempt,
        "tenant": bounded_tenant,
        "correlation_id": bounded_correlation_id,
        "run_id": bounded_run_id,
        "step_id": bounded_step_id,
        "failed_at": failed_at_ms,
    }


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
    max_bytes: int | None = None,
) -> bytes:
    """The encoded ``DeadLetter``. Never larger than ``max_bytes`` (when given) minus room for its
    Kafka key and headers, and never unencodable, whatever the strings it is handed."""
    record = dead_letter_record(
        service,
        error_kind,
        message,
        failed_at_ms,
        topic=topic,
        partition=partition,
        offset=offset,
        key=key,
        value=value,
        tenant=tenant,
        correlation_id=correlation_id,
        run_id=run_id,
        step_id=step_id,
        attempt=attempt,
        max_bytes=max_bytes,
    )
    return serde.encode("DeadLetter", record)
