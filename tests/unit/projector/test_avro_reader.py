"""The compiled Avro reader: the record fastavro reads, or an exception (never another answer)."""

from __future__ import annotations

import io
from typing import Any

import fastavro
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.contracts.catalog import catalog
from services.contracts.serde import encode
from services.projector.avro_reader import compile_reader
from services.projector.events import read_run_event

SCHEMA = catalog().current["RunEvent"].parsed
READER = compile_reader(SCHEMA)

texts = st.text(max_size=40) | st.text(alphabet="ab", max_size=300)
ints = st.integers(-(2**31), 2**31 - 1)
longs = st.integers(-(2**63), 2**63 - 1)


@st.composite
def run_events(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "event_id": draw(texts),
        "run_id": draw(texts),
        "tenant": draw(texts),
        "workflow": draw(texts),
        "version": draw(ints),
        "seq": draw(ints),
        "type": draw(texts),
        "step_id": draw(st.none() | texts),
        "attempt": draw(st.none() | ints),
        "state": draw(st.none() | texts),
        "at": draw(longs),
        "correlation_id": draw(texts),
        "detail_json": draw(st.none() | texts),
    }


def fastavro_body(record: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, SCHEMA, record)
    return buf.getvalue()


def fastavro_read(body: bytes) -> dict[str, Any] | None:
    """fastavro's record when it reads all of ``body`` without error, else None."""
    buf = io.BytesIO(body)
    try:
        record = fastavro.schemaless_reader(buf, SCHEMA, None)
    except Exception:
        return None
    return record if buf.tell() == len(body) and isinstance(record, dict) else None


def test_run_event_schema_compiles() -> None:
    assert READER is not None


@given(run_events())
@settings(max_examples=150, deadline=None)
def test_reads_what_fastavro_wrote_as_fastavro_reads_it(record: dict[str, Any]) -> None:
    assert READER is not None
    body = fastavro_body(record)
    assert READER(b"hdr" + body, 3) == fastavro_read(body) == record


@given(run_events(), st.data())
@settings(max_examples=150, deadline=None)
def test_damaged_bodies_raise_or_agree_with_fastavro(record: dict[str, Any], data: st.DataObject) -> None:
    assert READER is not None
    body = bytearray(fastavro_body(record))
    how = data.draw(st.sampled_from(["flip", "cut", "extend"]))
    if how == "flip" and body:
        at = data.draw(st.integers(0, len(body) - 1))
        body[at] = data.draw(st.integers(0, 255))
    elif how == "cut":
        del body[data.draw(st.integers(0, len(body))) :]
    else:
        body += data.draw(st.binary(min_size=1, max_size=5))
    expected = fastavro_read(bytes(body))
    try:
        got = READER(bytes(body), 0)
    except Exception:
        return  # the generic decoder decides
    assert got == expected


@given(st.binary(max_size=200))
@settings(max_examples=150, deadline=None)
def test_arbitrary_bytes_raise_or_agree_with_fastavro(body: bytes) -> None:
    assert READER is not None
    try:
        got = READER(body, 0)
    except Exception:
        return
    assert got == fastavro_read(body)


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "record", "name": "R", "fields": [{"name": "a", "type": "double"}]},
        {"type": "record", "name": "R", "fields": [{"name": "a", "type": ["null", "string", "int"]}]},
        {"type": "record", "name": "R", "fields": [{"name": "a", "type": ["string", "null"]}]},
        {"type": "record", "name": "R", "fields": [{"name": "a", "type": {"type": "array", "items": "int"}}]},
        {"type": "record", "name": "R", "fields": []},
        {"type": "enum", "name": "E", "symbols": ["A"]},
    ],
)
def test_schemas_beyond_flat_scalar_records_are_not_compiled(schema: dict[str, Any]) -> None:
    assert compile_reader(fastavro.parse_schema(schema)) is None


def test_read_run_event_falls_back_to_the_generic_decoder() -> None:
    record = {
        "event_id": "e",
        "run_id": "r",
        "tenant": "t",
        "workflow": "w",
        "version": 1,
        "seq": 1,
        "type": "run_started",
        "step_id": None,
        "attempt": None,
        "state": "running",
        "at": 5,
        "correlation_id": "c",
        "detail_json": None,
    }
    value = encode("RunEvent", record)
    assert read_run_event(value) == record
    # trailing bytes: the compiled reader refuses, the generic decoder says why
    with pytest.raises(ValueError, match="trailing bytes"):
        read_run_event(value + b"\x00")
