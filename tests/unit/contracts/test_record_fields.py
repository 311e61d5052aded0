"""The partial record types of tests/fixtures/records.py name every field of their record, typed alike."""

from __future__ import annotations

import typing
from typing import Any

import pytest

from services.contracts import records
from tests.fixtures import records as partial

PAIRS = [
    (partial.StepCommandFields, records.StepCommand),
    (partial.StepResultFields, records.StepResult),
    (partial.ControlCommandFields, records.ControlCommand),
]


@pytest.mark.parametrize(("fields", "record"), PAIRS, ids=lambda t: getattr(t, "__name__", ""))
def test_each_partial_type_has_its_records_fields_all_optional(fields: Any, record: Any) -> None:
    # Any: a TypedDict class has no static type of its own that names __required_keys__
    assert typing.get_type_hints(fields) == typing.get_type_hints(record)
    assert fields.__required_keys__ == frozenset()
