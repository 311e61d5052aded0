"""Intake is total: every record ends in a run request, a bounded dead letter with a specific
kind, or a counted unmatched trigger — and what intake writes is checked before it is written."""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from types import SimpleNamespace
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.contracts import serde
from services.contracts.dead_letters import MAX_FIELD
from services.contracts.records import decode_control_command
from services.control.signing import sign
from services.observability import metrics
from services.router.intake import RUN_REQUEST_ENVELOPE
from services.router.records import run_id_for
from services.workflow.compiled import CompiledWorkflow
from services.workflow.signing import public_key_b64
from tests.unit.router.intake_fakes import (
    TOPICS,
    dead_letters,
    harness,
    kinds,
    run_requests,
    tenant,
    workflow,
)

LIMIT = 256 * 1024


def avro_trigger(data_json: str, key: str | None = None, event: str = "go") -> bytes:
    return serde.encode(
        "TriggerEvent",
        {
            "event_type": event,
            "data_json": data_json,
            "idempotency_key": key,
            "correlation_id": None,
            "occurred_at": None,
        },
    )


def sample(name: str, labels: dict[str, str]) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def acme(*extra: CompiledWorkflow, **settings: Any) -> Any:
    return harness([tenant("acme")], {"acme": [workflow("chain"), *extra]}, **settings)


# --- strict decoding at the edge -------------------------------------------------------------------
@pytest.mark.parametrize(
    "value",
    [
        b'{"event_type": "go", "data": {"note": "\\ud800"}}',  # valid JSON for the stdlib
        b'{"event_type": "go", "data": {"x": NaN}}',
        b'{"event_type": "go", "data": {"x": 1e400}}',  # overflows to infinity
        b'{"event_type": "go", "data": {}, "idempotency_key": "k\\udfff"}',
        b'{"event_type": "go", "data": {}, "correlation_id": "\\ud83d"}',
    ],
)
def test_json_triggers_the_engine_could_not_write_again_are_refused_at_the_edge(value: bytes) -> None:
    h = acme()
    produced = h.trigger("acme", value)
    assert kinds(produced) == ["invalid_json"]
    assert run_requests(produced) == []


def test_avro_data_json_is_decoded_strictly_too() -> None:
    h = acme()
    assert kinds(h.trigger("acme", avro_trigger('{"note": "\\ud800"}'))) == ["invalid_json"]
    assert kinds(h.trigger("acme", avro_trigger('{"x": Infinity}'))) == ["invalid_json"]
    assert kinds(h.trigger("acme", avro_trigger("[" * 65 + "]" * 65))) == ["too_deep"]


def test_invalid_utf8_is_named_as_such() -> None:
    h = acme()
    assert kinds(h.trigger("acme", b'{"event_type": "go\xff\xfe"}')) == ["invalid_utf8"]


def test_an_avro_trigger_keeps_its_own_data_text_and_a_json_trigger_is_rewritten_compactly() -> None:
    h = acme()
    text = '{"b": [1,  2.50, 1e2],   "a": "é"}'
    [avro] = run_requests(h.trigger("acme", avro_trigger(text, key="k1")))
    assert avro["data_json"] == text
    plain = {"event_type": "go", "data": {"b": [1, 2.5], "a": "é"}, "idempotency_key": "k2"}
    [request] = run_requests(h.trigger("acme", json.dumps(plain, indent=4).encode()))
    assert request["data_json"] == '{"b":[1,2.5],"a":"é"}'


# --- budgets on what intake writes -------------------------------------------------------------------
def expanding_numbers(budget: int) -> bytes:
    """A JSON trigger under ``budget`` bytes whose numbers re-encode 4.5 times larger."""
    head, tail = b'{"event_type": "go", "data": {"n": [', b"]}}"
    count = (budget - len(head) - len(tail)) // 5
    return head + b",".join([b"1e15"] * count) + tail


def test_a_trigger_whose_data_re_encodes_past_the_budget_is_refused_before_any_run() -> None:
    h = acme()
    value = expanding_numbers(LIMIT - 100)
    assert len(value) <= LIMIT
    first = h.trigger("acme", value, key=b"same-key")
    [letter] = dead_letters(first)
    assert letter["error_kind"] == "oversized"
    reencoded = len(json.dumps(json.loads(value)["data"], separators=(",", ":")))
    assert f"re-encodes to {reencoded} bytes" in str(letter["error_message"])
    assert "no run was started" in str(letter["error_message"])
    assert run_requests(first) == []
    # A re-send gets the same clear answer (no run exists that it could duplicate).
    assert kinds(h.trigger("acme", value, key=b"same-key")) == ["oversized"]


def test_an_avro_trigger_is_measured_by_its_re_encoded_data_too() -> None:
    h = acme()
    data_json = "[" + ",".join(["1e15"] * ((LIMIT - 1000) // 5)) + "]"
    assert kinds(h.trigger("acme", avro_trigger(data_json))) == ["oversized"]


def test_a_trigger_exactly_at_the_limit_still_starts_its_run() -> None:
    h = acme()
    body = {"event_type": "go", "data": {"msg": ""}, "idempotency_key": "at-limit"}
    text = json.dumps(body)
    room = LIMIT - len(text) - len("at-limit")
    value = text.replace('"msg": ""', '"msg": "' + "p" * room + '"').encode()
    assert len(value) + len("at-limit") == LIMIT
    [request] = run_requests(h.trigger("acme", value, key=b"at-limit"))
    assert request["idempotency_key"] == "at-limit"
    assert len(serde.encode_inbox("RunRequested", request)) <= LIMIT + RUN_REQUEST_ENVELOPE


def test_a_run_request_over_the_producers_limit_becomes_a_bounded_dead_letter() -> None:
    h = acme(max_record_bytes=100_000)
    value = json.dumps({"event_type": "go", "data": {"p": "x" * 120_000}}).encode()
    produced = h.trigger("acme", value)
    assert kinds(produced) == ["oversized"]
    assert run_requests(produced) == []
    assert all(len(r.value or b"") <= 100_000 for r in produced)


def test_a_dead_letter_of_a_huge_record_fits_a_small_record_budget() -> None:
    h = acme(max_record_bytes=150_000)
    produced = h.trigger("acme", b"x" * 999_000, key="k" * 900)
    [letter] = dead_letters(produced)
    assert letter["error_kind"] == "oversized"
    assert len(produced[0].value or b"") < 150_000
    assert "original value truncated from 999000" in str(letter["error_message"])


# --- key-derived ids ---------------------------------------------------------------------------------
def test_a_long_kafka_key_becomes_a_stable_hashed_idempotency_key() -> None:
    h = acme()
    key = b"k" * 260_000  # within the trigger limit together with a small value
    value = json.dumps({"event_type": "go", "data": {}}).encode()
    [first] = run_requests(h.trigger("acme", value, key=key))
    [again] = run_requests(h.trigger("acme", value, key=key))
    hashed = "sha256:" + hashlib.sha256(key).hexdigest()
    assert first["idempotency_key"] == again["idempotency_key"] == hashed
    assert first["run_id"] == again["run_id"] == run_id_for("acme", "chain", hashed)
    assert len(serde.encode_inbox("RunRequested", first)) < 2000


@pytest.mark.parametrize("key", [b"\xed\xa0\x80surrogate", b"\xff\xfe not utf-8"])
def test_a_kafka_key_that_is_not_utf8_is_hashed(key: bytes) -> None:
    h = acme()
    [request] = run_requests(h.trigger("acme", b'{"event_type": "go"}', key=key))
    assert request["idempotency_key"] == "sha256:" + hashlib.sha256(key).hexdigest()


def test_a_short_utf8_kafka_key_is_used_as_it_is() -> None:
    h = acme()
    [request] = run_requests(h.trigger("acme", b'{"event_type": "go"}', key=b"order-42"))
    assert request["idempotency_key"] == "order-42"


# --- filters -------------------------------------------------------------------------------------------
class Exploding:
    """A workflow whose filter evaluation raises something that is not an ExpressionError."""

    name, version = "exploding", 1
    definition = SimpleNamespace(steps=())
    event_waits: dict[str, str] = {}  # waits for no event

    def matches(self, trigger: Any) -> bool:
        raise MemoryError("the CEL runtime gave up")


def test_a_filter_that_cannot_be_evaluated_dead_letters_the_trigger_once_and_others_still_run() -> None:
    failing = workflow("picky", filter_="trigger.data.amount > 100")
    h = harness([tenant("acme")], {"acme": [workflow("chain"), failing, Exploding()]})  # type: ignore[list-item]
    produced = h.trigger("acme", b'{"event_type": "go", "data": {}}')
    [request] = run_requests(produced)
    assert request["workflow"] == "chain"
    [letter] = dead_letters(produced)
    assert letter["error_kind"] == "filter_error"
    message = str(letter["error_message"])
    assert "picky v1" in message and "exploding v1" in message and "MemoryError" in message


def test_a_failing_filter_alone_is_a_dead_letter_not_a_silent_miss() -> None:
    h = harness([tenant("acme")], {"acme": [workflow("picky", filter_="trigger.data.amount > 100")]})
    before = sample("switchyard_triggers_total", {"tenant": "acme", "outcome": "rejected"})
    produced = h.trigger("acme", b'{"event_type": "go", "data": {"amount": "many"}}')
    assert kinds(produced) == ["filter_error"] and run_requests(produced) == []
    assert sample("switchyard_triggers_total", {"tenant": "acme", "outcome": "rejected"}) == before + 1


def test_a_filter_that_is_false_is_counted_unmatched() -> None:
    h = harness([tenant("acme")], {"acme": [workflow("picky", filter_="trigger.data.amount > 100")]})
    before = sample("switchyard_triggers_total", {"tenant": "acme", "outcome": "unmatched"})
    assert h.trigger("acme", b'{"event_type": "go", "data": {"amount": 1}}') == []
    assert sample("switchyard_triggers_total", {"tenant": "acme", "outcome": "unmatched"}) == before + 1


# --- anything unexpected -----------------------------------------------------------------------------
class BrokenCatalog:
    def __init__(self) -> None:
        self.calls = 0

    def latest_for(self, tenant: str) -> list[CompiledWorkflow]:
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("registry exploded")
        return [workflow("chain")]


def test_an_unexpected_exception_dead_letters_that_record_and_the_batch_goes_on() -> None:
    h = acme()
    h.intake.catalog = BrokenCatalog()
    topic = TOPICS.tenant_triggers("acme")
    first = h.message(topic, b'{"event_type": "go", "data": {}}', key=b"one")
    second = h.message(topic, b'{"event_type": "go", "data": {}}', key=b"two")
    produced = h.feed(first, second)
    [letter] = dead_letters(produced)
    assert (letter["error_kind"], letter["original_offset"]) == ("intake_error", first.offset())
    assert "RuntimeError: registry exploded" in str(letter["error_message"])
    assert [r["idempotency_key"] for r in run_requests(produced)] == ["two"]


# --- control records -----------------------------------------------------------------------------------
def control(**fields: Any) -> bytes:
    command: dict[str, Any] = {
        "command_id": str(uuid.uuid4()),
        "kind": "cancel",
        "requester": "ops@acme",
        "tenant": "acme",
        "run_id": str(uuid.uuid4()),
        "step_id": None,
        "reason": "test",
        "correlation_id": str(uuid.uuid4()),
        "issued_at": 0,
        "filter_json": None,
        "dry_run": False,
    }
    command.update(fields)
    return serde.encode("ControlCommand", command)


def test_a_control_command_naming_a_huge_tenant_is_refused_with_a_small_dead_letter() -> None:
    h = acme()
    produced = h.feed(h.message(TOPICS.control, control(tenant="t" * 300_000)))
    [letter] = dead_letters(produced)
    assert letter["error_kind"] == "invalid_field"
    assert letter["tenant"] is None
    assert "300000 characters" in str(letter["error_message"])
    assert len(str(letter["error_message"])) < 500
    [record] = produced
    assert len(record.value or b"") < 310_000 and (record.key is None or len(record.key) <= MAX_FIELD * 4)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("tenant", "Not A Tenant"),
        ("requester", "r" * 300_000),
        ("reason", "x" * 100_000),
        ("run_id", "r" * 1000),
        ("correlation_id", "c" * 10_000),
        ("command_id", "c" * 1000),
    ],
)
def test_implausible_control_fields_are_refused_before_anything_is_looked_up(field: str, value: str) -> None:
    h = acme()
    produced = h.feed(h.message(TOPICS.control, control(**{field: value})))
    assert kinds(produced) == ["invalid_field"]
    assert field in str(dead_letters(produced)[0]["error_message"])


def test_a_plausible_authorised_control_command_goes_to_the_inbox() -> None:
    private = Ed25519PrivateKey.generate()
    h = acme(operator_keys={"root@ops": public_key_b64(private)})
    unsigned = decode_control_command(control(issued_at=int(time.time() * 1000)))
    signed = serde.encode("ControlCommand", sign(unsigned, "root@ops", private))
    produced = h.feed(h.message(TOPICS.control, signed))
    assert [r.topic for r in produced] == [TOPICS.inbox]


def test_an_unknown_tenants_control_command_is_refused() -> None:
    h = acme()
    produced = h.feed(h.message(TOPICS.control, control(tenant="ghost")))
    [letter] = dead_letters(produced)
    assert (letter["error_kind"], letter["tenant"]) == ("control_refused", "ghost")


# --- bounded labels ------------------------------------------------------------------------------------
def tenant_label_values() -> set[str]:
    values: set[str] = set()
    for family in metrics.REGISTRY.collect():
        if family.name in ("switchyard_dlq_records", "switchyard_triggers", "switchyard_handler_seconds"):
            values.update(s.labels.get("tenant", "") for s in family.samples)
    return values


def test_made_up_tenants_share_one_label_value() -> None:
    h = acme()
    before = tenant_label_values()
    made_up = [f"ghost-{uuid.uuid4().hex[:12]}" for _ in range(2000)]
    h.feed(*[h.message(TOPICS.tenant_triggers(name), b'{"event_type": "go"}') for name in made_up])
    h.feed(*[h.message(TOPICS.control, control(tenant=name)) for name in made_up[:500]])
    added = tenant_label_values() - before
    assert added <= {metrics.UNREGISTERED_TENANT}
    assert sample(
        "switchyard_dlq_records_total",
        {"service": "router.intake", "reason": "unknown_tenant", "tenant": metrics.UNREGISTERED_TENANT},
    ) >= len(made_up)
