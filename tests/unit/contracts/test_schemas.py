"""Avro contracts: every schema parses, is released, stays backward compatible, and frames correctly."""

from __future__ import annotations

import io
import json
from typing import Any

import fastavro
import pytest

from services.contracts import serde
from services.contracts.catalog import SCHEMA_DIR, catalog


def _sample(schema: Any) -> Any:
    """A minimal valid datum for an Avro schema (first branch of unions, defaults where present)."""
    if isinstance(schema, list):
        return _sample(schema[0])
    if isinstance(schema, str):
        return {
            "string": "x",
            "int": 1,
            "long": 1,
            "boolean": True,
            "bytes": b"x",
            "null": None,
            "double": 1.0,
            "float": 1.0,
        }[schema]
    kind = schema["type"]
    if kind == "record":
        return {f["name"]: f["default"] if "default" in f else _sample(f["type"]) for f in schema["fields"]}
    if kind == "enum":
        return schema["symbols"][0]
    if kind == "array":
        return [_sample(schema["items"])]
    if kind == "map":
        return {"k": _sample(schema["values"])}
    return _sample(kind)


def test_every_current_schema_is_its_newest_released_version() -> None:
    cat = catalog()
    for path in SCHEMA_DIR.glob("*.avsc"):
        assert json.loads(path.read_text()) == cat.current[path.stem].raw, (
            f"{path.name} changed without a release: copy it to released/{path.stem}.v<N+1>.avsc "
            "and give that version a new id in ids.json"
        )


def test_schema_ids_are_unique() -> None:
    ids = json.loads((SCHEMA_DIR / "ids.json").read_text())["ids"]
    assert len(set(ids.values())) == len(ids)


@pytest.mark.parametrize("name", sorted(catalog().released))
def test_every_released_version_is_readable_by_the_current_schema(name: str) -> None:
    cat = catalog()
    for version in cat.released[name]:
        datum = _sample(version.raw)
        buf = io.BytesIO()
        buf.write(b"\x00" + version.schema_id.to_bytes(4, "big"))
        fastavro.schemaless_writer(buf, version.parsed, datum)
        decoded_name, _ = serde.decode(buf.getvalue())
        assert decoded_name == name
        # fastavro's own check that the current (reader) schema can resolve the old (writer) one
        fastavro.schemaless_reader(io.BytesIO(buf.getvalue()[5:]), version.parsed, cat.current[name].parsed)


def test_round_trip_and_specific_decode_errors() -> None:
    record = {
        "event_type": "a.b",
        "data_json": "{}",
        "idempotency_key": None,
        "correlation_id": None,
        "occurred_at": None,
    }
    data = serde.encode("TriggerEvent", record)
    assert serde.decode(data) == ("TriggerEvent", record)
    cases = {
        b"": "bad_framing",
        b'{"event_type": "x"}': "bad_framing",
        b"\x00\x00\x00\x03\xe7": "unknown_schema",
        data[:-3]: "bad_avro",
        data + b"\x00": "bad_avro",
    }
    for raw, kind in cases.items():
        with pytest.raises(serde.ContractError) as info:
            serde.decode(raw)
        assert info.value.kind == kind, raw
    with pytest.raises(serde.ContractError) as wrong:
        serde.decode(data, expected="StepResult")
    assert wrong.value.kind == "wrong_schema"
