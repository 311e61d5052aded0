"""The shared DeadLetter builder: bounded copies of the original, deterministic ids."""

from __future__ import annotations

from services.contracts import serde
from services.contracts.dead_letters import (
    MAX_MESSAGE,
    MAX_ORIGINAL_KEY,
    MAX_ORIGINAL_VALUE,
    dead_letter_record,
    encode_dead_letter,
)
from services.contracts.records import decode_dead_letter


def decode(record: bytes) -> dict[str, object]:
    name, body = serde.decode(record, expected="DeadLetter")
    assert name == "DeadLetter"
    return body


def test_small_originals_are_kept_whole_and_the_id_is_the_source_position() -> None:
    body = decode(
        encode_dead_letter(
            "router.intake",
            "bad_avro",
            "truncated",
            123,
            topic="wf.tenant.acme.triggers",
            partition=2,
            offset=41,
            key="k1",
            value=b"\x00abc",
            tenant="acme",
        )
    )
    assert body["dlq_id"] == "router.intake:wf.tenant.acme.triggers:2:41"
    assert body["original_key"] == b"k1"
    assert body["original_value"] == b"\x00abc"
    assert body["error_message"] == "truncated"
    assert body["failed_at"] == 123


def test_large_originals_are_truncated_and_the_message_says_so() -> None:
    value = b"v" * (MAX_ORIGINAL_VALUE + 10)
    key = b"k" * (MAX_ORIGINAL_KEY + 1)
    record = encode_dead_letter(
        "router.intake",
        "oversized",
        "trigger too large",
        1,
        topic="t",
        partition=0,
        offset=1,
        key=key,
        value=value,
    )
    body = decode(record)
    assert body["original_value"] == value[:MAX_ORIGINAL_VALUE]
    assert body["original_key"] == key[:MAX_ORIGINAL_KEY]
    message = str(body["error_message"])
    assert message.startswith("trigger too large (")
    assert f"value truncated from {len(value)}" in message
    assert f"key truncated from {len(key)}" in message
    # a record near the broker's 1 MB default always leaves a dead letter well under it
    assert len(record) < MAX_ORIGINAL_VALUE + MAX_ORIGINAL_KEY + 2 * MAX_MESSAGE + 1024


def test_run_level_dead_letters_are_identified_by_run_step_and_attempt() -> None:
    first = decode(
        encode_dead_letter("router.core", "retries_exhausted", "x", 1, run_id="r", step_id="s", attempt=3)
    )
    again = decode(
        encode_dead_letter("router.core", "retries_exhausted", "x", 2, run_id="r", step_id="s", attempt=3)
    )
    assert first["dlq_id"] == again["dlq_id"] == "router.core:r:s:3"


def test_without_identity_ids_are_unique_and_long_messages_are_cut() -> None:
    a = decode(encode_dead_letter("svc", "k", "m" * (MAX_MESSAGE * 2), 1))
    b = decode(encode_dead_letter("svc", "k", "m", 1))
    assert a["dlq_id"] != b["dlq_id"]
    assert str(a["dlq_id"]).startswith("svc:")
    assert len(str(a["error_message"])) == MAX_MESSAGE


def test_the_encoded_dead_letter_is_the_record_built_with_its_cuts_noted_in_order() -> None:
    record = dead_letter_record(
        "core",
        "bad_step",
        "boom",
        7,
        topic="wf.inbox",
        partition=0,
        offset=9,
        tenant="t" * 300,
        run_id="r" * 300,
        attempt=2,
    )
    encoded = encode_dead_letter(
        "core",
        "bad_step",
        "boom",
        7,
        topic="wf.inbox",
        partition=0,
        offset=9,
        tenant="t" * 300,
        run_id="r" * 300,
        attempt=2,
    )
    assert decode_dead_letter(encoded) == record
    assert record["error_message"] == "boom (tenant cut from 300 characters; run id cut from 300 characters)"
    assert record["dlq_id"] == "core:wf.inbox:0:9"
    assert record["step_id"] is None and record["correlation_id"] is None
