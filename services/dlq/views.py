"""Dead letters as ``switchyard dlq`` shows them: JSON-ready, credentials redacted (pure).

Redaction is the console's (:mod:`services.contracts.redaction`) and applies to what is *shown*;
a re-drive sends the stored bytes unchanged.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

from services.bus.topics import Topics
from services.contracts import serde, strict_json
from services.contracts.redaction import redact, redact_text
from services.dlq.eligibility import PastRedrive, refusal, stored_copy_cut
from services.projector.models import DeadLetterRedrive, DeadLetterRow

#: Bytes of a value shown as text when it is neither a trigger record nor JSON.
PREVIEW_BYTES = 16 * 1024


def key_text(raw: bytes | None) -> str | None:
    return None if raw is None else redact_text(raw.decode("utf-8", errors="replace"))


def _avro(raw: bytes) -> tuple[str, dict[str, Any]] | None:
    try:
        return serde.decode(raw)
    except Exception:  # not Avro (JSON triggers are the usual case) or broken Avro: shown as text
        return None


def value_view(raw: bytes | None) -> dict[str, Any] | None:
    """The original value: an Avro ``TriggerEvent`` decoded, JSON parsed, else text (all redacted)."""
    if raw is None:
        return None
    decoded = _avro(raw)
    if decoded is not None:
        name, record = decoded
        shown = dict(record)
        data = shown.get("data_json")
        if name == "TriggerEvent" and isinstance(data, str):
            with contextlib.suppress(ValueError):
                shown["data"] = json.loads(data)
                del shown["data_json"]
        return {"format": f"avro:{name}", "value": redact(shown), "truncated": False}
    try:
        return {"format": "json", "value": redact(strict_json.loads(raw)), "truncated": False}
    except Exception:
        text = raw[:PREVIEW_BYTES].decode("utf-8", errors="replace")
        return {"format": "text", "value": redact_text(text), "truncated": len(raw) > PREVIEW_BYTES}


def redrive_dict(row: DeadLetterRedrive) -> dict[str, Any]:
    return {
        "redrive_id": row.redrive_id,
        "redriven_at": row.redriven_at.isoformat(),
        "requester": row.requester,
        "reason": None if row.reason is None else redact_text(row.reason),
        "bulk_id": row.bulk_id,
        "target_topic": row.target_topic,
        "target_partition": row.target_partition,
        "target_offset": row.target_offset,
    }


def detail(
    letter: DeadLetterRow, redrives: list[DeadLetterRedrive], topics: Topics, max_trigger_bytes: int
) -> dict[str, Any]:
    """Everything about one dead letter, with its re-drives and whether it may be re-driven now."""
    past = [PastRedrive(r.redriven_at, r.requester) for r in redrives]
    refused = refusal(letter, topics, past, max_trigger_bytes=max_trigger_bytes, read_back=True)
    again = refusal(letter, topics, past, again=True, max_trigger_bytes=max_trigger_bytes, read_back=True)
    return {
        "dlq_id": letter.dlq_id,
        "failed_at": letter.failed_at.isoformat(),
        "service": letter.service,
        "error_kind": letter.error_kind,
        "error_message": redact_text(letter.error_message),
        "tenant": letter.tenant,
        "correlation_id": letter.correlation_id,
        "run_id": letter.run_id,
        "step_id": letter.step_id,
        "attempt": letter.attempt,
        "source": {
            "topic": letter.original_topic,
            "partition": letter.original_partition,
            "offset": letter.original_offset,
        },
        "dead_letter_record": {
            "topic": letter.kafka_topic,
            "partition": letter.kafka_partition,
            "offset": letter.kafka_offset,
        },
        "original_key": key_text(letter.original_key),
        "original_value": value_view(letter.original_value),
        "original_value_size": letter.original_value_size,
        # the projector keeps 64 KiB; a re-drive reads the whole original from the dead-letter record
        "original_value_stored_cut": stored_copy_cut(letter),
        "original_headers": None,  # the DeadLetter record carries no copy of them
        "redrivable": refused is None,
        "redrivable_with_again": again is None,
        "refusal": None if refused is None else {"code": refused.code, "reason": refused.reason},
        "redrives": [redrive_dict(r) for r in redrives],
    }
