"""What the projection can store: every value the projector copies from a record, made writable.

Pure: no I/O. PostgreSQL refuses some of what a record can carry, and a refusal fails the whole
batch: text holding NUL (``\\x00``, in ``text`` and in ``jsonb``, where the escape ``\\u0000`` is
refused too), strings with lone UTF-16 surrogates (Python's JSON decoder makes them from escapes;
they cannot even be encoded to UTF-8), ``NaN`` / ``Infinity`` in ``jsonb``, and a B-tree index
entry over 2,704 bytes (``index row size … exceeds btree version 4 maximum 2704``: a refused control
command naming a 300,000-character tenant stalled the projector that way). So each value goes
through one of these on its way in, with the same rules as the engine's own dead letters
(:mod:`services.contracts.dead_letters`):

- :func:`storable_text` — names, kinds and messages: lone surrogates and NUL become visible
  escapes (``\\ud800``, ``\\u0000``), and a longer text is cut with an ellipsis;
- :func:`storable_id` — identifiers (run, step, event, command, dead-letter ids, correlation ids,
  idempotency keys): kept as they are when they fit, else ``sha256:<hex>`` of their bytes, as intake
  does for long Kafka keys. A cut could merge two ids; a digest keeps them apart and stays the same
  when the record is read again;
- :func:`storable_json` — JSON values (details, trigger data, inputs, outputs): the same escapes in
  strings and keys, numbers beyond a double written as their text.

The limits (:data:`COLUMN_LIMITS`) are characters; a character is at most 4 bytes in UTF-8, and no
index of the projection holds more than two bounded texts of 256 characters, or one of 512, so no
index entry can exceed PostgreSQL's limit whatever a record says (``tests/unit/projector`` checks
that sum against the models' indexes). Legitimate values are far below them: tenant ids are at most
63 characters, run ids 128, correlation ids and idempotency keys 512.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

from services.contracts.text import bounded_text, utf8_safe

#: tenants, workflows, requesters, executor ids; run, step, event and command ids
MAX_NAME = 256
#: correlation ids and idempotency keys (intake accepts up to 512), dead-letter ids
MAX_LONG_ID = 512
#: event types, states, error kinds, services, command kinds, reject reasons
MAX_KIND = 100
#: error messages, reasons, refusals (unindexed ``text``), as dead letters bound theirs
MAX_MESSAGE = 4000
#: topic names (Kafka allows 249)
MAX_TOPIC = 300
#: Kafka keys kept with a dead letter or a reject (bytes), as dead letters bound theirs
MAX_KEY_BYTES = 16 * 1024
#: deepest JSON kept as JSON (deeper: kept as its text); outputs are refused past 128 levels
MAX_JSON_DEPTH = 512

NUL_ESCAPE = "\\u0000"
HASHED_PREFIX = "sha256:"

#: Bound (characters) of every text column written from a record, per table.
COLUMN_LIMITS: dict[str, dict[str, int]] = {
    "runs": {
        "run_id": MAX_NAME,
        "tenant": MAX_NAME,
        "workflow": MAX_NAME,
        "state": MAX_KIND,
        "correlation_id": MAX_LONG_ID,
        "idempotency_key": MAX_LONG_ID,
        "event_type": MAX_NAME,
        "error_kind": MAX_KIND,
        "error_message": MAX_MESSAGE,
        "parent_run_id": MAX_NAME,
    },
    "steps": {
        "run_id": MAX_NAME,
        "step_id": MAX_NAME,
        "state": MAX_KIND,
        "error_kind": MAX_KIND,
        "error_message": MAX_MESSAGE,
    },
    "attempts": {
        "run_id": MAX_NAME,
        "step_id": MAX_NAME,
        "state": MAX_KIND,
        "idempotency_key": MAX_LONG_ID,
        "error_kind": MAX_KIND,
        "error_message": MAX_MESSAGE,
        "executor_id": MAX_NAME,
    },
    "run_events": {
        "event_id": MAX_NAME,
        "run_id": MAX_NAME,
        "tenant": MAX_NAME,
        "workflow": MAX_NAME,
        "type": MAX_KIND,
        "step_id": MAX_NAME,
        "state": MAX_KIND,
        "correlation_id": MAX_LONG_ID,
        "kafka_topic": MAX_TOPIC,
    },
    "control_commands": {
        "command_id": MAX_NAME,
        "kind": MAX_KIND,
        "requester": MAX_NAME,
        "tenant": MAX_NAME,
        "run_id": MAX_NAME,
        "step_id": MAX_NAME,
        "reason": MAX_MESSAGE,
        "command_correlation_id": MAX_LONG_ID,
        "outcome": MAX_KIND,
        "refusal": MAX_MESSAGE,
        "source": MAX_KIND,
        "source_id": MAX_LONG_ID,
        "kafka_topic": MAX_TOPIC,
    },
    "dead_letters": {
        "dlq_id": MAX_LONG_ID,
        "service": MAX_KIND,
        "error_kind": MAX_KIND,
        "error_message": MAX_MESSAGE,
        "original_topic": MAX_TOPIC,
        "tenant": MAX_NAME,
        "correlation_id": MAX_LONG_ID,
        "run_id": MAX_NAME,
        "step_id": MAX_NAME,
        "kafka_topic": MAX_TOPIC,
    },
    "projector_rejects": {"topic": MAX_TOPIC, "reason": MAX_KIND, "message": MAX_MESSAGE},
    # written by `switchyard dlq redrive` (services.dlq.audit), from a dead letter and the operator
    "dead_letter_redrives": {
        "redrive_id": MAX_NAME,
        "dlq_id": MAX_LONG_ID,
        "tenant": MAX_NAME,
        "requester": MAX_NAME,
        "reason": MAX_MESSAGE,
        "bulk_id": MAX_NAME,
        "target_topic": MAX_TOPIC,
    },
}


def _plain(text: str) -> bool:
    """Whether ``text`` can be stored as it is (no NUL, no lone surrogate). Fast for ASCII."""
    if "\x00" in text:
        return False
    return text.isascii() or utf8_safe(text) is text


def storable_text(text: str, limit: int) -> str:
    """``text`` as a column can hold it: escapes for NUL and lone surrogates, at most ``limit``
    characters (an ellipsis marks a cut). Only the head of a long text is looked at."""
    if len(text) <= limit and ((text.isascii() and "\x00" not in text) or _plain(text)):
        return text  # the usual case, decided without a call
    head = text[: limit + 1]  # one more than fits: a longer text is cut whatever its head holds
    if "\x00" in head:
        head = head.replace("\x00", NUL_ESCAPE)
    return bounded_text(head, limit)


def storable_optional(value: Any, limit: int) -> str | None:
    """:func:`storable_text` of ``value`` as text (``str()`` of a non-string); None stays None."""
    if value is None:
        return None
    return storable_text(value if isinstance(value, str) else str(value), limit)


def storable_id(text: str, limit: int = MAX_NAME) -> str:
    """An identifier as a column can hold it: itself when it fits and is plain, else
    ``sha256:<hex>`` of its UTF-8 bytes (deterministic, and distinct ids stay distinct)."""
    if len(text) <= limit and ((text.isascii() and "\x00" not in text) or _plain(text)):
        return text
    return HASHED_PREFIX + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def storable_optional_id(value: Any, limit: int = MAX_NAME) -> str | None:
    if value is None:
        return None
    return storable_id(value if isinstance(value, str) else str(value), limit)


def storable_bytes(value: bytes | None, limit: int = MAX_KEY_BYTES) -> bytes | None:
    return None if value is None else value[:limit]


def _json_string(text: str) -> str:
    return text if _plain(text) else utf8_safe(text).replace("\x00", NUL_ESCAPE)


def storable_json(value: Any) -> Any:
    """``value`` (decoded JSON, at most :data:`MAX_JSON_DEPTH` deep) as ``jsonb`` can hold it:
    strings and keys through the NUL and surrogate escapes, non-finite floats as their text."""
    if isinstance(value, str):
        return _json_string(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, dict):
        return {_json_string(str(k)): storable_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [storable_json(v) for v in value]
    return value
