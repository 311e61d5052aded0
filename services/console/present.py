"""Rows as the console shows them: JSON-ready, with credentials redacted (pure over model rows)."""

from __future__ import annotations

from typing import Any, TypedDict

import orjson

from services.contracts.records import JsonObject
from services.contracts.redaction import redact, redact_text
from services.projector.models import DeadLetterRow, Run
from services.projector.queries import RunTimeline, as_dict

PREVIEW_BYTES = 16 * 1024


class JsonPayload(TypedDict):
    json: Any  # the dead record's own JSON, redacted
    truncated: bool


class TextPayload(TypedDict):
    text: str | None
    truncated: bool


def run_summary(run: Run) -> JsonObject:
    row = as_dict(run)
    row.pop("trigger_data", None)  # the list stays small; the detail has it
    return dict(redact(row))


def run_detail(found: RunTimeline) -> JsonObject:
    return dict(redact(found.as_dict()))


def dead_letter_summary(row: DeadLetterRow) -> JsonObject:
    out = as_dict(row)
    out.pop("original_value", None)
    out["original_key"] = _text(row.original_key)
    return dict(redact(out))


def dead_letter_detail(row: DeadLetterRow) -> JsonObject:
    out = dead_letter_summary(row)
    out["original_value"] = _payload(row.original_value)
    return out


def _text(raw: bytes | None) -> str | None:
    return None if raw is None else redact_text(raw.decode("utf-8", errors="replace"))


def _payload(raw: bytes | None) -> JsonPayload | TextPayload | None:
    """The dead record's value: parsed JSON (redacted) when it is JSON, else redacted text."""
    if raw is None:
        return None
    shown = raw[:PREVIEW_BYTES]
    try:
        return {"json": redact(orjson.loads(raw)), "truncated": False}
    except orjson.JSONDecodeError:
        return {"text": _text(shown), "truncated": len(raw) > PREVIEW_BYTES}
