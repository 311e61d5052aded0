"""Confluent wire framing of Avro records: ``0x00 | schema id (4 bytes, big endian) | Avro body``.

Decoding never raises anything but :class:`ContractError`, whose ``kind`` names what was wrong
(``bad_framing``, ``unknown_schema``, ``wrong_schema``, ``bad_avro``) so that callers can route
the record to the dead-letter queue with a specific reason.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Mapping
from typing import Any

import fastavro

from services.contracts.avro_writer import Unsupported, Writer, compile_writer
from services.contracts.catalog import SchemaVersion, catalog

MAGIC = 0
_HEADER = struct.Struct(">bI")


class ContractError(ValueError):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message


#: Per schema id: its framing header and compiled writer (None: fastavro writes it).
_WRITERS: dict[int, tuple[bytes, Writer | None]] = {}


def _writer(version: SchemaVersion) -> tuple[bytes, Writer | None]:
    known = _WRITERS.get(version.schema_id)
    if known is None:
        known = _WRITERS[version.schema_id] = (
            _HEADER.pack(MAGIC, version.schema_id),
            compile_writer(version.parsed),
        )
    return known


def encode(name: str, record: Mapping[str, Any]) -> bytes:
    """Serialise ``record`` with the current schema ``name``, framed with its schema id.

    The compiled writer (:mod:`.avro_writer`) writes what it can; a record it refuses or cannot
    place is written (or refused, with fastavro's own words) by fastavro."""
    version = catalog().current[name]
    header, fast = _writer(version)
    if fast is not None:
        try:
            return header + fast(record)
        except (Unsupported, TypeError, ValueError, AttributeError):
            pass
    buf = io.BytesIO()
    buf.write(_HEADER.pack(MAGIC, version.schema_id))
    fastavro.schemaless_writer(buf, version.parsed, record)
    return buf.getvalue()


def decode(data: bytes | None, expected: str | None = None) -> tuple[str, dict[str, Any]]:
    """Return (schema name, record), resolving an older writer schema to the current reader schema."""
    if not data:
        raise ContractError(
            "bad_framing", "empty record (tombstone or zero bytes) where a record was expected"
        )
    if len(data) < _HEADER.size or data[0] != MAGIC:
        hint = " (looks like JSON)" if data[:1] in (b"{", b"[") else ""
        raise ContractError("bad_framing", f"not Confluent-framed Avro: magic byte is {data[0]:#04x}{hint}")
    _, schema_id = _HEADER.unpack_from(data)
    cat = catalog()
    writer = cat.by_id.get(schema_id)
    if writer is None:
        raise ContractError("unknown_schema", f"schema id {schema_id} is not known to this build")
    if expected is not None and writer.name != expected:
        raise ContractError("wrong_schema", f"expected {expected}, got {writer.name} (schema id {schema_id})")
    reader = cat.current[writer.name]
    body = io.BytesIO(data[_HEADER.size :])
    try:
        record = fastavro.schemaless_reader(
            body,
            writer.parsed,
            reader.parsed if reader is not writer else None,
            return_record_name=True,
            # Only a union of several records (the inbox body) names its branch: an optional
            # record (``RunRequested.parent``) reads as the record itself.
            return_record_name_override=True,
        )
    except Exception as exc:  # fastavro raises many types on corrupt input
        raise ContractError("bad_avro", f"cannot decode {writer.name}: {type(exc).__name__}: {exc}") from exc
    if body.tell() != len(data) - _HEADER.size:
        raise ContractError(
            "bad_avro", f"{writer.name}: {len(data) - _HEADER.size - body.tell()} trailing bytes"
        )
    if not isinstance(record, dict):
        raise ContractError("bad_avro", f"{writer.name}: decoded to {type(record).__name__}, not a record")
    return writer.name, record


def encode_inbox(kind: str, body: Mapping[str, Any]) -> bytes:
    """Wrap a RunRequested / StepResult / ControlCommand / EventDelivered for the router's inbox."""
    return encode("InboxRecord", {"body": (f"switchyard.{kind}", body)})


def decode_inbox(data: bytes | None) -> tuple[str, dict[str, Any]]:
    """(kind, body) of an inbox record, kind being RunRequested, StepResult, ControlCommand or
    EventDelivered."""
    _, record = decode(data, expected="InboxRecord")
    name, body = record["body"]
    return str(name).rsplit(".", 1)[-1], body
