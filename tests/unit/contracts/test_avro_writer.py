"""The compiled Avro writers write exactly fastavro's bytes, and refuse what does not fit."""

from __future__ import annotations

import io
from typing import Any

import fastavro
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.contracts import serde
from services.contracts.avro_writer import Unsupported, compile_writer
from services.contracts.catalog import catalog

NAMES = sorted(catalog().current)


def _datum(schema: Any, top: bool = True) -> st.SearchStrategy[Any]:
    """Valid data for a parsed schema; a union of records in fastavro's (name, record) notation."""
    if isinstance(schema, list):
        if all(isinstance(b, dict) and b.get("type") == "record" for b in schema):
            return st.one_of(*(st.tuples(st.just(b["name"]), _datum(b)) for b in schema))
        return st.one_of(*(_datum(b, False) for b in schema))
    if isinstance(schema, str):
        return {
            "null": st.none(),
            "boolean": st.booleans(),
            "int": st.integers(-(2**31), 2**31 - 1),
            "long": st.integers(-(2**63), 2**63 - 1),
            "string": st.text(),
            "bytes": st.binary(),
        }[schema]
    kind = schema["type"]
    if kind == "record":
        return st.fixed_dictionaries({f["name"]: _datum(f["type"], False) for f in schema["fields"]})
    if kind == "enum":
        return st.sampled_from(schema["symbols"])
    if kind == "array":
        return st.lists(_datum(schema["items"], False), max_size=5)
    return _datum(kind, False)


def _fastavro(parsed: Any, datum: Any) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, parsed, datum)
    return buf.getvalue()


def test_every_engine_schema_compiles() -> None:
    assert [n for n in NAMES if compile_writer(catalog().current[n].parsed) is None] == []


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_same_bytes_as_fastavro_and_decodes_back(name: str, data: st.DataObject) -> None:
    version = catalog().current[name]
    datum = data.draw(_datum(version.parsed))
    writer = compile_writer(version.parsed)
    assert writer is not None
    body = writer(datum)
    assert body == _fastavro(version.parsed, datum)
    decoded_name, decoded = serde.decode(serde.encode(name, datum), expected=name)
    assert decoded_name == name
    assert serde.encode(name, decoded) == serde.encode(name, datum)


def test_large_values_and_lengths() -> None:
    parsed = fastavro.parse_schema(
        {
            "type": "record",
            "name": "t",
            "fields": [
                {"name": "s", "type": "string"},
                {"name": "n", "type": "long"},
                {"name": "o", "type": ["null", "string"]},
            ],
        }
    )
    writer = compile_writer(parsed)
    assert writer is not None
    for datum in (
        {"s": "é" * 5000, "n": -(2**63), "o": None},
        {"s": "", "n": 2**63 - 1, "o": "x" * 70_000},
        {"s": "a", "n": 4096, "o": ""},
    ):
        assert writer(datum) == _fastavro(parsed, datum)


@pytest.mark.parametrize(
    "datum",
    [
        {"s": None, "n": 1},  # null for a string
        {"s": "x", "n": 2**63},  # beyond a long
        {"s": "x", "n": "1"},  # text for a number
        {"s": "\ud800", "n": 1},  # a lone surrogate cannot be UTF-8
        {"s": b"x", "n": 1},  # bytes for a string
    ],
)
def test_what_does_not_fit_raises(datum: dict[str, Any]) -> None:
    parsed = fastavro.parse_schema(
        {
            "type": "record",
            "name": "t",
            "fields": [{"name": "s", "type": "string"}, {"name": "n", "type": "long"}],
        }
    )
    writer = compile_writer(parsed)
    assert writer is not None
    with pytest.raises((TypeError, ValueError)):
        writer(datum)
    with pytest.raises(Exception):  # noqa: B017 - fastavro refuses it too (its own exception types)
        _fastavro(parsed, datum)


def test_union_of_records_without_branch_name_goes_to_fastavro() -> None:
    body = {"command_id": "c"}  # not a tuple: the compiled writer cannot tell the branch
    writer = compile_writer(catalog().current["InboxRecord"].parsed)
    assert writer is not None
    with pytest.raises(Unsupported):
        writer({"body": body})


def test_unsupported_schema_is_left_to_fastavro() -> None:
    parsed = fastavro.parse_schema(
        {"type": "record", "name": "t", "fields": [{"name": "x", "type": "double"}]}
    )
    assert compile_writer(parsed) is None


def test_inbox_encoding_unchanged() -> None:
    result = {
        "run_id": "r",
        "tenant": "acme",
        "step_id": "s",
        "attempt": 1,
        "status": "succeeded",
        "output_json": "{}",
        "error_kind": None,
        "error_message": None,
        "retryable": True,
        "started_at": 1,
        "finished_at": 2,
        "correlation_id": "c",
        "executor_id": "e",
        "retry_after_ms": 1500,
    }
    version = catalog().current["InboxRecord"]
    expected = bytes([0]) + version.schema_id.to_bytes(4, "big")
    expected += _fastavro(version.parsed, {"body": ("switchyard.StepResult", result)})
    assert serde.encode_inbox("StepResult", result) == expected
    assert serde.decode_inbox(expected) == ("StepResult", result)
