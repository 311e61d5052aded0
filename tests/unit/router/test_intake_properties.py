"""Property: whatever arrives on a tenant's trigger topic or the control topic, intake never raises,
everything it writes fits the record budget, and every record is accounted for — a run request,
a dead letter, a control command forwarded, or a trigger counted as unmatched."""

from __future__ import annotations

import json
import uuid
from typing import Any

from confluent_kafka import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.contracts import serde
from services.observability import metrics
from services.router.intake import RUN_REQUEST_ENVELOPE
from tests.unit.router.intake_fakes import (
    TOPICS,
    Harness,
    control_commands,
    dead_letters,
    harness,
    run_requests,
    tenant,
    workflow,
)

LIMIT = 256 * 1024
MAX_RECORD = 200_000  # smaller than the default, so dead letters of big records are bounded by it

no_surrogates = st.characters(exclude_categories=["Cs"])
# st.text() never yields lone surrogates: mix them in on purpose.
surrogates = st.integers(min_value=0xD800, max_value=0xDFFF).map(chr)
any_text = st.lists(st.characters() | surrogates, max_size=30).map("".join)
huge_numbers = st.sampled_from([1e15, 1e308, -1e-300, 2**64, 2**200, float("nan"), float("inf"), -0.0])
scalars = st.none() | st.booleans() | st.integers() | st.floats() | huge_numbers | any_text
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=6) | st.dictionaries(any_text, children, max_size=6),
    max_leaves=40,
)


@st.composite
def deep_json(draw: st.DrawFn) -> str:
    depth = draw(st.sampled_from([63, 64, 65, 1500]))
    return "[" * depth + "]" * depth


@st.composite
def expanding_json(draw: st.DrawFn) -> str:
    count = draw(st.integers(min_value=1, max_value=60_000))
    return "[" + ",".join(["1e15"] * count) + "]"


def trigger_json(data_text: str, key: Any, correlation: Any, event: str) -> bytes:
    fields = [f'"event_type": {json.dumps(event)}', f'"data": {data_text}']
    if key is not None:
        fields.append(f'"idempotency_key": {json.dumps(key)}')
    if correlation is not None:
        fields.append(f'"correlation_id": {json.dumps(correlation)}')
    return ("{" + ", ".join(fields) + "}").encode("utf-8", "surrogatepass")


events = st.sampled_from(["go", "go", "picky", "picky", "other"]) | st.text(max_size=5)
data_texts = json_values.map(json.dumps) | deep_json() | expanding_json()


@st.composite
def json_triggers(draw: st.DrawFn) -> bytes:
    return trigger_json(
        draw(data_texts),
        draw(st.none() | any_text | st.text(min_size=500, max_size=600)),
        draw(st.none() | any_text),
        draw(events),
    )


@st.composite
def avro_triggers(draw: st.DrawFn) -> bytes:
    return serde.encode(
        "TriggerEvent",
        {
            "event_type": draw(events),
            "data_json": draw(data_texts | st.text(alphabet=no_surrogates, max_size=30)),
            "idempotency_key": draw(st.none() | st.text(alphabet=no_surrogates, max_size=600)),
            "correlation_id": draw(st.none() | st.text(alphabet=no_surrogates, max_size=20)),
            "occurred_at": draw(st.none() | st.integers(min_value=-(2**63), max_value=2**63 - 1)),
        },
    )


trigger_values = st.none() | st.binary(max_size=300) | json_triggers() | avro_triggers()
keys = st.none() | st.binary(max_size=40) | st.binary(min_size=600, max_size=700) | st.just(b"k" * 200_000)
headers = st.none() | st.lists(
    st.tuples(st.text(alphabet=no_surrogates, min_size=1, max_size=10), st.binary(max_size=100)), max_size=3
)


@st.composite
def control_values(draw: st.DrawFn) -> bytes:
    text = st.text(alphabet=no_surrogates, max_size=30)
    huge = "t" * 300_000
    command = {
        "command_id": str(uuid.uuid4()),
        "kind": draw(st.sampled_from(["cancel", "replay_run", "replay_step", "replay_bulk"])),
        "requester": draw(st.sampled_from(["ops@acme", "ops@acme", "mallory", "", huge])),
        "tenant": draw(st.sampled_from(["acme", "acme", "ghost", "Bad Tenant", "", huge])),
        "run_id": draw(st.sampled_from([None, str(uuid.uuid4()), "", huge]) | text),
        "step_id": draw(st.none() | text),
        "reason": draw(text),
        "correlation_id": draw(text),
        "issued_at": draw(st.integers(min_value=-(2**63), max_value=2**63 - 1)),
        "filter_json": draw(st.none() | text),
        "dry_run": draw(st.booleans()),
    }
    return serde.encode("ControlCommand", command)


@st.composite
def records(draw: st.DrawFn) -> tuple[str, bytes | None, bytes | None, Any]:
    where = draw(st.sampled_from(["acme", "acme", "acme", "ghost", "control"]))
    if where == "control":
        value = draw(control_values() | st.binary(max_size=100) | st.none())
        return TOPICS.control, value, draw(st.none() | st.binary(max_size=20)), None
    return TOPICS.tenant_triggers(where), draw(trigger_values), draw(keys), draw(headers)


def unmatched() -> float:
    labels = {"tenant": "acme", "outcome": "unmatched"}
    return metrics.REGISTRY.get_sample_value("switchyard_triggers_total", labels) or 0.0


def new_harness() -> Harness:
    workflows = [
        workflow("chain"),
        workflow("picky", event="picky", filter_="trigger.data.amount > 100 && size(trigger.key) > 0"),
    ]
    return harness([tenant("acme")], {"acme": workflows}, max_record_bytes=MAX_RECORD)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
@given(st.lists(records(), min_size=1, max_size=6))
def test_intake_never_raises_and_accounts_for_every_record(
    batch: list[tuple[str, bytes | None, bytes | None, Any]],
) -> None:
    h = new_harness()
    messages = [
        Message(topic=topic, partition=0, offset=i, key=key, value=value, headers=hdrs)
        for i, (topic, value, key, hdrs) in enumerate(batch)
    ]
    before = unmatched()
    produced = h.feed(*messages)  # must not raise

    for record in produced:  # the real Outbox checked this too; every record decodes
        assert len(record.value or b"") <= MAX_RECORD
        if record.topic == TOPICS.dlq:
            serde.decode(record.value, expected="DeadLetter")
        else:
            assert record.topic == TOPICS.inbox
            serde.decode_inbox(record.value)
    letters = {int(d["original_offset"]) for d in dead_letters(produced)}
    assert len(letters) == len(dead_letters(produced)), "at most one dead letter per record"
    requested = {int(str(r["source"]).rsplit("/", 1)[1]) for r in run_requests(produced)}
    for request in run_requests(produced):
        assert len(serde.encode_inbox("RunRequested", request)) <= LIMIT + RUN_REQUEST_ENVELOPE
        json.loads(request["data_json"])  # the core can read it back
    forwarded = {c["command_id"] for c in control_commands(produced)}
    silent = 0
    for msg in messages:
        offset = msg.offset()
        if offset in letters or offset in requested:
            continue
        if msg.topic() == TOPICS.control:
            _, command = serde.decode(msg.value(), expected="ControlCommand")
            assert command["command_id"] in forwarded
            continue
        silent += 1
    assert unmatched() - before == silent, "every other trigger is counted as unmatched"
