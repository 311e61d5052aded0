"""Parsing a tenant's trigger record: Confluent-framed Avro `TriggerEvent`, or a plain JSON object.

Plain JSON lets any tenant app (or kcat) produce triggers::

    {"event_type": "client.created", "data": {...}, "idempotency_key": "c-42", "correlation_id": "..."}

A ``tenant`` field, if present, is ignored: the tenant is always the topic the record came from.
Every refusal is a :class:`TriggerError` with a specific ``kind`` for the dead-letter record.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from services.contracts import serde

MAX_JSON_DEPTH = 64


class TriggerError(ValueError):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class Trigger:
    event_type: str
    data: Any
    idempotency_key: str | None
    correlation_id: str | None


def _depth(value: Any, limit: int) -> int:
    stack = [(value, 1)]
    deepest = 0
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if deepest > limit:
            return deepest
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return deepest


def _load_json(text: str | bytes, what: str) -> Any:
    try:
        value = json.loads(text)
    except UnicodeDecodeError as exc:
        raise TriggerError("invalid_utf8", f"{what} is not valid UTF-8: {exc}") from exc
    except (ValueError, RecursionError) as exc:
        raise TriggerError("invalid_json", f"{what} is not valid JSON: {exc}") from exc
    if _depth(value, MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
        raise TriggerError("too_deep", f"{what} nests deeper than {MAX_JSON_DEPTH} levels")
    return value


def _opt_str(record: dict[str, Any], name: str) -> str | None:
    value = record.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > 512:
        raise TriggerError("invalid_field", f"{name} must be a non-empty string of at most 512 characters")
    return value


def parse_trigger(value: bytes | None) -> Trigger:
    if not value:
        raise TriggerError("empty_record", "empty trigger (tombstone or zero bytes)")
    if value[0] == serde.MAGIC:
        try:
            _, record = serde.decode(value, expected="TriggerEvent")
        except serde.ContractError as exc:
            raise TriggerError(exc.kind, exc.message) from exc
        data = _load_json(record["data_json"], "data_json")
    else:
        loaded = _load_json(value, "trigger")
        if not isinstance(loaded, dict):
            raise TriggerError("invalid_trigger", "a JSON trigger must be an object with event_type and data")
        record = loaded
        # A "tenant" field is tolerated and ignored: the tenant is the topic, never the payload.
        unknown = set(record) - {
            "event_type",
            "data",
            "idempotency_key",
            "correlation_id",
            "occurred_at",
            "tenant",
        }
        if unknown:
            raise TriggerError("invalid_trigger", f"unknown trigger fields: {', '.join(sorted(unknown))}")
        data = record.get("data", {})
    event_type = record.get("event_type")
    if not isinstance(event_type, str) or not event_type or len(event_type) > 200:
        raise TriggerError(
            "invalid_trigger", "event_type must be a non-empty string of at most 200 characters"
        )
    return Trigger(event_type, data, _opt_str(record, "idempotency_key"), _opt_str(record, "correlation_id"))
