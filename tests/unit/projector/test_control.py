"""Control decisions, dead letters, replays and --since: pure projection logic, no I/O."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import pytest

from services.contracts.serde import encode
from services.projector.changes import run_update, step_change
from services.projector.control import (
    ControlRow,
    control_from_dead_letter,
    control_from_event,
    first_decisions,
)
from services.projector.dead_letter_store import MAX_ORIGINAL_VALUE, DeadLetter, decode_dead_letter
from services.projector.events import Coordinates, ProjectedEvent, Rejected, decode_event
from services.projector.queries import parse_since
from tests.unit.projector.row_values import step_values

WHERE = Coordinates("wf.events", 1, 7)
DLQ = Coordinates("wf.dlq", 0, 3)


def event(type_: str, **fields: Any) -> ProjectedEvent:
    detail = fields.pop("detail", None)
    record: dict[str, Any] = {
        "event_id": "e-9",
        "run_id": "r-1",
        "tenant": "acme",
        "workflow": "orders",
        "version": 1,
        "seq": 9,
        "type": type_,
        "step_id": None,
        "attempt": None,
        "state": None,
        "at": 1_700_000_000_000,
        "correlation_id": "c-1",
        "detail_json": json.dumps(detail) if detail is not None else None,
        **fields,
    }
    ev = decode_event(encode("RunEvent", record), b"r-1", WHERE)
    assert isinstance(ev, ProjectedEvent)
    return ev


def command(**fields: Any) -> dict[str, Any]:
    return {
        "command_id": "cmd-1",
        "kind": "replay_run",
        "requester": "mallory",
        "tenant": "acme",
        "run_id": "r-1",
        "step_id": None,
        "reason": "retry please",
        "correlation_id": "cc-1",
        "issued_at": 1_700_000_000_000,
        "filter_json": None,
        "dry_run": False,
        **fields,
    }


def dead_letter(**fields: Any) -> dict[str, Any]:
    return {
        "dlq_id": "d-1",
        "service": "router.intake",
        "error_kind": "control_refused",
        "error_message": "not an operator of tenant 'acme'",
        "original_topic": "wf.control",
        "original_partition": 2,
        "original_offset": 5,
        "original_key": b"r-1",
        "original_value": encode("ControlCommand", command()),
        "attempt": None,
        "tenant": "acme",
        "correlation_id": "cc-1",
        "run_id": None,
        "step_id": None,
        "failed_at": 1_700_000_001_000,
        **fields,
    }


def decoded(record: dict[str, Any], control_topic: str | None = "wf.control") -> DeadLetter:
    dl = decode_dead_letter(encode("DeadLetter", record), b"k", DLQ, control_topic)
    assert isinstance(dl, DeadLetter)
    return dl


def test_run_replayed_puts_the_run_back_to_pending_and_clears_its_end() -> None:
    ev = event("run_replayed", state="pending", detail={"command_id": "cmd-1", "replay": 1, "steps": ["a"]})
    values = run_update(ev)
    assert values["state"] == "pending"
    assert values["finished_at"] is None and values["error_kind"] is None and values["error_message"] is None


def test_step_reset_makes_the_step_pending_and_keeps_its_attempt_count() -> None:
    change = step_change(event("step_reset", step_id="charge", state="pending", detail={"command_id": "c"}))
    assert change is not None
    assert change.key == {"run_id": "r-1", "step_id": "charge"}
    assert change.values["state"] == "pending"
    assert step_values(change)["attempts"] == 0 and change.merge["attempts"] == "greatest"
    for column in ("finished_at", "output", "error_kind", "error_message"):
        assert change.values[column] is None and change.merge[column] == "set"
    assert "started_at" not in change.merge  # the first start is kept


def test_control_events_become_control_rows() -> None:
    detail = {
        "command_id": "cmd-1",
        "kind": "replay_step",
        "requester": "ops",
        "reason": "fixed upstream",
        "step_id": "charge",
        "command_correlation_id": "cc-1",
    }
    accepted = control_from_event(event("control_accepted", detail=detail))
    assert accepted is not None
    assert (accepted["outcome"], accepted["refusal"], accepted["kind"], accepted["step_id"]) == (
        "accepted",
        None,
        "replay_step",
        "charge",
    )
    assert (accepted["source"], accepted["source_id"], accepted["kafka_offset"]) == ("run_history", "e-9", 7)
    assert accepted["decided_at"] == datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)
    refused = control_from_event(event("control_refused", detail={**detail, "refusal": "limit of 3 reached"}))
    assert refused is not None and (refused["outcome"], refused["refusal"]) == (
        "refused",
        "limit of 3 reached",
    )
    assert control_from_event(event("control_refused", detail={"kind": "cancel"})) is None  # no id
    assert control_from_event(event("run_cancelled", state="cancelled", detail=detail)) is None


def test_a_dead_lettered_control_command_is_decoded_and_becomes_a_refusal() -> None:
    dl = decoded(dead_letter())
    assert dl.command is not None and dl.command["requester"] == "mallory"
    row = control_from_dead_letter(dl)
    assert row is not None
    assert (row["command_id"], row["outcome"], row["source"], row["refusal"]) == (
        "cmd-1",
        "refused",
        "dlq",
        "not an operator of tenant 'acme'",
    )
    assert (row["run_id"], row["command_correlation_id"], row["kafka_topic"]) == ("r-1", "cc-1", "wf.dlq")


def test_garbage_control_records_and_other_dead_letters_have_no_control_row() -> None:
    garbage = decoded(dead_letter(error_kind="bad_framing", original_value=b"{nope"))
    assert garbage.command is None and control_from_dead_letter(garbage) is None
    other_topic = decoded(dead_letter(original_topic="wf.tenant.acme.triggers"))
    assert other_topic.command is None
    assert decoded(dead_letter(), control_topic=None).command is None


def test_dead_letter_rows_cap_the_original_value() -> None:
    big = decoded(dead_letter(original_value=b"x" * (MAX_ORIGINAL_VALUE + 10), original_topic=None))
    row = big.row()
    assert row["original_value"] is not None and len(row["original_value"]) == MAX_ORIGINAL_VALUE
    assert row["original_value_size"] == MAX_ORIGINAL_VALUE + 10
    assert (row["kafka_topic"], row["kafka_partition"], row["kafka_offset"]) == ("wf.dlq", 0, 3)
    none = decoded(dead_letter(original_value=None)).row()
    assert none["original_value"] is None and none["original_value_size"] == 0


def test_undecodable_dead_letters_are_rejected() -> None:
    rejected = decode_dead_letter(b"junk", None, DLQ)
    assert isinstance(rejected, Rejected) and rejected.reason == "bad_framing"
    wrong = decode_dead_letter(encode("ControlCommand", command()), None, DLQ)
    assert isinstance(wrong, Rejected) and wrong.reason == "wrong_schema"


def test_first_decisions_prefer_the_run_history_then_the_first_read() -> None:
    def row(source: Literal["run_history", "dlq"], n: int, command_id: str = "c") -> ControlRow:
        """The ``n``-th row read (its offset)."""
        return {
            "command_id": command_id,
            "kind": "cancel",
            "requester": "ops@acme",
            "tenant": "acme",
            "run_id": "r-1",
            "step_id": None,
            "reason": None,
            "command_correlation_id": None,
            "outcome": "accepted",
            "refusal": None,
            "decided_at": datetime(2026, 1, 2, tzinfo=UTC),
            "source": source,
            "source_id": f"{source}-{n}",
            "kafka_topic": "wf.events" if source == "run_history" else "wf.dlq",
            "kafka_partition": 0,
            "kafka_offset": n,
        }

    chosen = first_decisions(
        [row("dlq", 1), row("dlq", 2), row("run_history", 3), row("run_history", 4), row("dlq", 5, "d")]
    )
    assert [(r["command_id"], r["kafka_offset"]) for r in chosen] == [("c", 3), ("d", 5)]


def test_parse_since() -> None:
    now = datetime(2026, 1, 2, 12, 0, tzinfo=UTC)
    assert parse_since("90m", now) == now - timedelta(minutes=90)
    assert parse_since("2d", now) == now - timedelta(days=2)
    assert parse_since("1.5h", now) == now - timedelta(hours=1.5)
    assert parse_since("2026-01-01T00:00:00") == datetime(2026, 1, 1, tzinfo=UTC)
    assert parse_since("2026-01-01T01:00:00+01:00") == datetime(2026, 1, 1, tzinfo=UTC)
    assert parse_since("2026-01-01") == datetime(2026, 1, 1, tzinfo=UTC)
    with pytest.raises(ValueError, match="duration"):
        parse_since("yesterday")
