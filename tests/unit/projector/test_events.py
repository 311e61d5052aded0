"""Decoding records of the events topic: events, or rejects with a reason; never an exception."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from services.contracts.serde import encode
from services.projector.events import (
    Coordinates,
    ProjectedEvent,
    Rejected,
    decode_event,
    parse_detail,
    parse_time,
)

WHERE = Coordinates("wf.events", 2, 41)


def record(**overrides: object) -> dict[str, object]:
    base: dict[str, object] = {
        "event_id": "e-1",
        "run_id": "r-1",
        "tenant": "acme",
        "workflow": "orders",
        "version": 2,
        "seq": 1,
        "type": "run_pending",
        "step_id": None,
        "attempt": None,
        "state": "pending",
        "at": 1_700_000_000_123,
        "correlation_id": "c-1",
        "detail_json": json.dumps({"trigger": {"event_type": "x"}}),
    }
    base.update(overrides)
    return base


def test_a_run_event_decodes_with_its_coordinates() -> None:
    value = encode("RunEvent", record())
    ev = decode_event(value, b"r-1", WHERE)
    assert isinstance(ev, ProjectedEvent)
    assert (ev.run_id, ev.seq, ev.type, ev.state, ev.where) == ("r-1", 1, "run_pending", "pending", WHERE)
    assert ev.at == datetime(2023, 11, 14, 22, 13, 20, 123000, tzinfo=UTC)
    assert ev.detail == {"trigger": {"event_type": "x"}} and ev.raw_detail == ev.detail
    assert ev.payload == value and ev.key == b"r-1" and ev.is_run_event
    assert ev.log_ids()["correlation_id"] == "c-1"


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"not avro", "bad_framing"),
        (b"", "bad_framing"),
        (None, "bad_framing"),
        (b'{"a": 1}', "bad_framing"),
        (b"\x00\x00\x00\xff\xff", "unknown_schema"),
    ],
)
def test_garbage_is_rejected_with_a_reason(value: bytes | None, reason: str) -> None:
    rejected = decode_event(value, b"k", WHERE)
    assert isinstance(rejected, Rejected)
    assert rejected.reason == reason and rejected.where == WHERE
    assert rejected.payload == value and rejected.key == b"k" and rejected.message


def test_truncated_avro_is_rejected() -> None:
    framed = encode("RunEvent", record())
    truncated = framed[:-3]
    rejected = decode_event(truncated, None, WHERE)
    assert isinstance(rejected, Rejected) and rejected.reason == "bad_avro"


@pytest.mark.parametrize(
    ("detail_json", "detail", "stored"),
    [
        (None, {}, None),
        ('{"a": 1}', {"a": 1}, {"a": 1}),
        ("[1, 2]", {}, {"_raw": [1, 2]}),
        ("not json", {}, {"_raw": "not json"}),
    ],
)
def test_detail_is_kept_even_when_it_is_not_an_object(
    detail_json: str | None, detail: dict[str, object], stored: object
) -> None:
    assert parse_detail(detail_json) == (detail, stored)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1_700_000_000_000, datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)),
        (1_700_000_000.5, datetime(2023, 11, 14, 22, 13, 20, 500000, tzinfo=UTC)),
        ("1700000000000", datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)),
        ("2023-11-14T22:13:20Z", datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)),
        ("2023-11-14T22:13:20", datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)),
        ("yesterday", None),
        (None, None),
        (True, None),
        ({"a": 1}, None),
    ],
)
def test_parse_time(value: object, expected: datetime | None) -> None:
    assert parse_time(value) == expected
