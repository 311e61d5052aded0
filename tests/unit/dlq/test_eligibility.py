"""Which dead letters a re-drive sends, and the record it sends (services.dlq.eligibility)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from services.bus.topics import Topics
from services.contracts.vocabulary import ERROR_KINDS, REDRIVABLE_KINDS, ErrorKind
from services.dlq.eligibility import (
    REDRIVE_ID_HEADER,
    REDRIVEN_FROM_HEADER,
    PastRedrive,
    outgoing,
    refusal,
)
from services.projector.models import DeadLetterRow

TOPICS = Topics("wf")
AT = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
VALUE = b'{"event_type": "go", "data": {}, "idempotency_key": "k-1"}'


def letter(**overrides: Any) -> DeadLetterRow:
    fields: dict[str, Any] = {
        "dlq_id": "router.intake:wf.tenant.acme.triggers:0:7",
        "service": "router.intake",
        "error_kind": "unknown_tenant",
        "error_message": "tenant 'acme' is not registered",
        "original_topic": "wf.tenant.acme.triggers",
        "original_partition": 0,
        "original_offset": 7,
        "original_key": b"k-1",
        "original_value": VALUE,
        "original_value_size": len(VALUE),
        "tenant": "acme",
        "correlation_id": None,
        "run_id": None,
        "step_id": None,
        "attempt": None,
        "failed_at": AT,
        "kafka_topic": "wf.dlq",
        "kafka_partition": 1,
        "kafka_offset": 3,
    }
    fields.update(overrides)
    return DeadLetterRow(**fields)


def code(row: DeadLetterRow, **kwargs: Any) -> str | None:
    found = refusal(row, TOPICS, **kwargs)
    return None if found is None else found.code


@pytest.mark.parametrize("kind", sorted(REDRIVABLE_KINDS))
def test_a_trigger_dead_lettered_for_a_cause_outside_it_may_be_redriven(kind: str) -> None:
    assert code(letter(error_kind=kind)) is None


def test_the_redrivable_kinds_are_record_kinds_and_the_flag_says_so() -> None:
    for kind in ErrorKind:
        assert kind.redrivable == (kind in REDRIVABLE_KINDS)
    assert all(ERROR_KINDS[ErrorKind(k)].scope == "record" for k in REDRIVABLE_KINDS)
    # what describes the record itself is never re-driven
    for name in ("bad_framing", "invalid_json", "oversized", "invalid_trigger", "too_deep", "bad_topic"):
        assert not ErrorKind(name).redrivable


@pytest.mark.parametrize("kind", ["invalid_json", "oversized", "bad_framing", "invalid_trigger", "made_up"])
def test_kinds_that_can_never_succeed_are_refused_with_the_reason(kind: str) -> None:
    found = refusal(letter(error_kind=kind), TOPICS)
    assert found is not None and found.code == "never_succeeds"
    assert kind in found.reason and "unknown_tenant" in found.reason  # names the kinds that may pass


def test_a_step_failure_is_not_a_trigger_and_points_to_replay() -> None:
    step = letter(
        service="executor",
        error_kind="intake_error",
        original_topic="wf.commands",
        run_id="run-1",
        step_id="s1",
        attempt=2,
    )
    found = refusal(step, TOPICS)
    assert found is not None and found.code == "not_a_trigger"
    assert "switchyard replay run-1" in found.reason


def test_a_refused_control_command_is_not_a_trigger() -> None:
    for topic in (TOPICS.control, TOPICS.inbox):
        found = refusal(letter(original_topic=topic, error_kind="control_refused"), TOPICS)
        assert found is not None and found.code == "not_a_trigger" and "replay" in found.reason


def test_another_prefix_or_no_source_is_refused() -> None:
    assert code(letter(original_topic="other.tenant.acme.triggers")) == "not_a_trigger"
    assert code(letter(original_topic=None)) == "no_source"


def test_an_incomplete_copy_is_never_sent() -> None:
    assert code(letter(original_value=None, original_value_size=0)) == "no_copy"
    assert code(letter(original_value_size=len(VALUE) + 1)) == "truncated_copy"
    # cut by the store only (it keeps 64 KiB): the re-drive reads the whole one back from the topic
    assert code(letter(original_value_size=len(VALUE) + 1), read_back=True) is None
    cut = "boom (original value truncated from 600000 to 524288 bytes)"
    assert code(letter(error_message=cut)) == "truncated_copy"
    assert code(letter(original_key=b"k" * 16 * 1024)) == "truncated_copy"


def test_a_second_redrive_needs_again() -> None:
    past = [PastRedrive(AT, "alice@acme"), PastRedrive(AT.replace(hour=13), "bob@acme")]
    found = refusal(letter(), TOPICS, past)
    assert found is not None and found.code == "already_redriven"
    assert "2 times" in found.reason and "bob@acme" in found.reason and "13:00" in found.reason
    assert refusal(letter(), TOPICS, past, again=True) is None
    # --again does not lift any other refusal
    assert code(letter(error_kind="invalid_json"), again=True) == "never_succeeds"


def test_a_record_that_the_headers_push_over_the_trigger_limit_is_refused() -> None:
    size = len(VALUE) + len(b"k-1")
    assert code(letter(), max_trigger_bytes=size + 200) is None
    assert code(letter(), max_trigger_bytes=size + 10) == "too_large"
    # the original's own size counts, not the stored copy's
    grown = letter(original_value_size=len(VALUE) + 300)
    assert code(grown, max_trigger_bytes=size + 200, read_back=True) == "too_large"


def test_the_outgoing_record_is_the_original_with_the_redrive_headers() -> None:
    record = outgoing(letter(), TOPICS, "rd-1")
    assert (record.topic, record.tenant, record.key, record.value) == (
        "wf.tenant.acme.triggers",
        "acme",
        b"k-1",
        VALUE,
    )
    assert record.headers == [
        (REDRIVE_ID_HEADER, b"rd-1"),
        (REDRIVEN_FROM_HEADER, b"router.intake:wf.tenant.acme.triggers:0:7"),
    ]
    with pytest.raises(ValueError):
        outgoing(letter(original_topic="wf.commands"), TOPICS, "rd-2")
    cut = letter(original_value=VALUE[:10], original_value_size=len(VALUE))
    with pytest.raises(ValueError):
        outgoing(cut, TOPICS, "rd-3")  # never the cut copy
    assert outgoing(cut, TOPICS, "rd-3", full_value=VALUE).value == VALUE
