"""The record types of services.contracts.records match the Avro schemas they stand for."""

from __future__ import annotations

import json
import typing
from pathlib import Path
from typing import Any

import pytest

from services.contracts import records, serde

SCHEMAS = Path(__file__).resolve().parents[3] / "schemas" / "avro"
#: Every record schema the engine writes has a type (InboxRecord is a union of some of them).
TYPED = [p.stem for p in sorted(SCHEMAS.glob("*.avsc")) if p.stem != "InboxRecord"]
AVRO_TO_PY: dict[str, Any] = {"string": str, "int": int, "long": int, "boolean": bool, "bytes": bytes}


def python_type(avro: Any) -> Any:
    """The Python type a field of Avro type ``avro`` is read as."""
    if isinstance(avro, list):
        members = [python_type(m) for m in avro if m != "null"]
        assert len(members) == 1, f"unions other than [null, T] are not expected: {avro}"
        return members[0] | None if "null" in avro else members[0]
    if isinstance(avro, dict):
        if avro["type"] == "enum":
            return typing.Literal[tuple(avro["symbols"])]
        if avro["type"] == "record":
            return getattr(records, avro["name"])
        if avro["type"] == "array":
            return list[python_type(avro["items"])]  # type: ignore[misc]
        return python_type(avro["type"])
    return AVRO_TO_PY[avro]


@pytest.mark.parametrize("name", TYPED)
def test_each_record_type_has_the_schema_fields_with_their_types(name: str) -> None:
    schema = json.loads((SCHEMAS / f"{name}.avsc").read_text())
    hints = typing.get_type_hints(getattr(records, name))
    assert list(hints) == [f["name"] for f in schema["fields"]], name  # same fields, same order
    for field in schema["fields"]:
        assert hints[field["name"]] == python_type(field["type"]), f"{name}.{field['name']}"


def test_every_schema_has_a_type() -> None:
    assert {"StepCommand", "StepResult", "RunEvent", "ControlCommand", "DeadLetter"} <= set(TYPED)
    assert all(hasattr(records, name) for name in TYPED)


def test_typed_decoding_checks_the_schema_first() -> None:
    result: records.StepResult = {
        "run_id": "r",
        "tenant": "acme",
        "step_id": "s",
        "attempt": 1,
        "status": "succeeded",
        "output_json": "{}",
        "error_kind": None,
        "error_message": None,
        "retryable": False,
        "started_at": 1,
        "finished_at": 2,
        "correlation_id": "c",
        "executor_id": "e",
        "retry_after_ms": 30_000,
    }
    assert records.decode_inbox(serde.encode_inbox("StepResult", result)) == ("StepResult", result)
    with pytest.raises(serde.ContractError) as refused:
        records.decode_step_command(serde.encode_inbox("StepResult", result))
    assert refused.value.kind == "wrong_schema"
