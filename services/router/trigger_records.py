"""Parsing a tenant's trigger record: Confluent-framed Avro `TriggerEvent`, or a plain JSON object.

Plain JSON lets any tenant app (or kcat) produce triggers::

    {"event_type": "client.created", "data": {...}, "idempotency_key": "c-42", "correlation_id": "..."}

A ``tenant`` field, if present, is ignored: the tenant is always the topic the record came from.
Every refusal is a :class:`TriggerError` with a specific ``kind`` for the dead-letter record.

Decoding is strict (:mod:`services.contracts.strict_json`): lone surrogates, ``NaN`` and numbers
that overflow are refused here (``invalid_json``), at the edge, because every record the engine
writes later must encode them and cannot. The data is forwarded as ``data_json``: an Avro
trigger's own text, a JSON trigger's ``data`` re-written compactly; ``data_size`` is what the
data takes once re-encoded (``1e15`` becomes ``1000000000000000.0``), which is what run state and
step inputs will hold.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from services.contracts import serde, strict_json
from services.contracts.records import decode_trigger_event

MAX_JSON_DEPTH = strict_json.MAX_DEPTH
MAX_ID_LENGTH = 512


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
    #: The data as JSON text, as forwarded to the router core.
    data_json: str
    #: Bytes of the data re-encoded as JSON (at least ``len(data_json)`` for a JSON trigger).
    data_size: int


def _load_json(text: str | bytes, what: str) -> Any:
    try:
        return strict_json.loads(text, what, MAX_JSON_DEPTH)
    except strict_json.StrictJSONError as exc:
        raise TriggerError(exc.kind, str(exc)) from exc


def _dump_json(value: Any, what: str) -> bytes:
    try:
        return strict_json.dumps(value)
    except strict_json.StrictJSONError as exc:  # not reachable for strictly decoded data
        raise TriggerError("invalid_json", f"{what}: {exc}") from exc


def _opt_str(record: Mapping[str, object], name: str) -> str | None:
    value = record.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > MAX_ID_LENGTH:
        raise TriggerError(
            "invalid_field", f"{name} must be a non-empty string of at most {MAX_ID_LENGTH} characters"
        )
    return value


def parse_trigger(value: bytes | None) -> Trigger:
    if not value:
        raise TriggerError("empty_record", "empty trigger (tombstone or zero bytes)")
    record: Mapping[str, object]  # a TriggerEvent, or a JSON trigger's fields (checked below)
    if value[0] == serde.MAGIC:
        try:
            event = decode_trigger_event(value)
        except serde.ContractError as exc:
            raise TriggerError(exc.kind, exc.message) from exc
        record, data_json = event, event["data_json"]
        data = _load_json(data_json, "data_json")
        data_size = max(len(data_json.encode("utf-8")), len(_dump_json(data, "data_json")))
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
            raise TriggerError(
                "invalid_trigger", f"unknown trigger fields: {', '.join(sorted(unknown))[:500]}"
            )
        data = record.get("data", {})
        encoded = _dump_json(data, "data")
        data_json, data_size = encoded.decode("utf-8"), len(encoded)
    event_type = record.get("event_type")
    if not isinstance(event_type, str) or not event_type or len(event_type) > 200:
        raise TriggerError(
            "invalid_trigger", "event_type must be a non-empty string of at most 200 characters"
        )
    return Trigger(
        event_type,
        data,
        _opt_str(record, "idempotency_key"),
        _opt_str(record, "correlation_id"),
        data_json,
        data_size,
    )
