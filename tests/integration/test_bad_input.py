"""A bad-input corpus replayed through the real intake, core and control paths of a running engine.

Every item ends in the dead-letter topic with a specific ``error_kind`` (asserted exactly, item by
item, matched by the Kafka key each item is sent with), or — where the design says so — as a
reasoned entry in the run's history (``result_ignored``) or is provably ignored (definitions that
do not verify are never used; a payload's ``tenant`` claim never changes the tenant). Afterwards:
no engine thread died, a normal run completes on every internal partition (nothing stalled), and
another tenant's runs were unaffected.
"""

from __future__ import annotations

import hashlib
import json
import struct
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer

from services.bus.clients import plain_producer_config
from services.bus.fetch import consume_ready
from services.bus.placement import partition_for
from services.contracts import serde
from services.contracts.catalog import catalog
from services.contracts.dead_letters import MAX_ORIGINAL_VALUE
from services.contracts.records import RunRequested
from services.registry.definitions import DefinitionCatalog, definitions_table, publish
from services.registry.tenants import tenants_table
from services.router.records import run_id_for
from services.tenancy.admin import read_tenants
from services.workflow.loader import load_definition_text
from services.workflow.signing import private_key_from_b64, sign_definition
from tests.fixtures.engine import Engine, register_tenant
from tests.fixtures.kafka import create_topics

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

CHAIN = """
name: chain
version: {version}
trigger: {{event: go}}
steps:
  - {{id: a, action: echo, inputs: {{msg: "${{{{ trigger.data.msg }}}}"}}}}
  - {{id: b, action: {second}, needs: [a]}}
"""
PICKY = """
name: picky
version: 1
trigger: {event: picky, filter: "trigger.data.amount > 100"}
steps:
  - {id: a, action: noop}
"""
SLOW = """
name: slow
version: 1
trigger: {event: slow}
steps:
  - id: wait
    action: fail
    inputs: {error_kind: upstream_down}
    retry: {max_attempts: 2, initial_backoff: 600, max_backoff: 600}
  - {id: after, action: noop, needs: [wait]}
"""
YEAR_9999_MS = 253_402_300_799_999
PARTITIONS = 4


def zigzag(n: int) -> bytes:
    """Avro's variable-length zig-zag encoding of a long (for hand-made, absurd lengths)."""
    n = (n << 1) ^ (n >> 63)
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        if n:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def framed(name: str) -> bytes:
    """The Confluent header of schema ``name`` (magic byte + schema id), without a body."""
    return struct.pack(">bI", 0, catalog().current[name].schema_id)


def trigger_avro(event: str, data: Any, key: str | None, occurred_at: int | None = None) -> bytes:
    return serde.encode(
        "TriggerEvent",
        {
            "event_type": event,
            "data_json": json.dumps(data),
            "idempotency_key": key,
            "correlation_id": None,
            "occurred_at": occurred_at,
        },
    )


def trigger_avro_text(event: str, data_json: str) -> bytes:
    return serde.encode(
        "TriggerEvent",
        {
            "event_type": event,
            "data_json": data_json,
            "idempotency_key": None,
            "correlation_id": None,
            "occurred_at": None,
        },
    )


def control(kind: str, tenant: str, run_id: str | None, requester: str, issued_at: int) -> dict[str, Any]:
    return {
        "command_id": str(uuid.uuid4()),
        "kind": kind,
        "requester": requester,
        "tenant": tenant,
        "run_id": run_id,
        "step_id": None,
        "reason": "bad-input corpus",
        "correlation_id": str(uuid.uuid4()),
        "issued_at": issued_at,
        "filter_json": None,
        "dry_run": False,
    }


def step_result(run_id: str, tenant: str, step: str, attempt: int, at_ms: int) -> bytes:
    return serde.encode_inbox(
        "StepResult",
        {
            "run_id": run_id,
            "tenant": tenant,
            "step_id": step,
            "attempt": attempt,
            "status": "succeeded",
            "output_json": "{}",
            "error_kind": None,
            "error_message": None,
            "retryable": True,
            "started_at": at_ms,
            "finished_at": at_ms,
            "correlation_id": "forged",
            "executor_id": "mallory",
        },
    )


def types(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events]


class Corpus:
    """Sends records with unique Kafka keys and remembers the error kind each one must get."""

    def __init__(self, eng: Engine) -> None:
        self.eng = eng
        self.producer = Producer(plain_producer_config(eng.settings))
        self.expected: dict[bytes, str] = {}

    def send(
        self,
        topic: str,
        value: bytes | None,
        kind: str | None,
        key: str | None = None,
        partition: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> str:
        key = key or f"{kind or 'accepted'}-{len(self.expected)}-{uuid.uuid4().hex[:6]}"
        kwargs: dict[str, Any] = {"key": key, "value": value, "headers": headers}
        if partition is not None:
            kwargs["partition"] = partition
        self.producer.produce(topic, **kwargs)
        if kind is not None:
            self.expected[key.encode()] = kind
        return key

    def flush(self) -> None:
        assert self.producer.flush(30) == 0


def dead_letters(eng: Engine, wanted: set[bytes], timeout_s: float = 90) -> dict[bytes, list[dict[str, Any]]]:
    """DLQ records by original key, read (read_committed) until every wanted key was seen."""
    consumer = Consumer(
        {
            "bootstrap.servers": eng.settings.kafka_bootstrap_servers,
            "group.id": f"dlq-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
        }
    )
    consumer.subscribe([eng.topics.dlq])
    found: dict[bytes, list[dict[str, Any]]] = {}
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline and not wanted <= set(found):
            for msg in consume_ready(consumer, 500, 0.5):
                if msg.error():
                    continue
                letter = serde.decode(msg.value(), expected="DeadLetter")[1]
                if letter["original_key"] is not None:
                    found.setdefault(letter["original_key"], []).append(letter)
        # one more short pass, so that a duplicate dead letter would show up too
        for msg in consumer.consume(500, 1.0):  # waits the whole second: a window, not a read
            if not msg.error():
                letter = serde.decode(msg.value(), expected="DeadLetter")[1]
                if letter["original_key"] is not None:
                    found.setdefault(letter["original_key"], []).append(letter)
    finally:
        consumer.close()
    missing = sorted(k.decode(errors="replace") for k in wanted - set(found))
    assert not missing, f"never dead-lettered: {missing}"
    return found


def keys_covering_partitions(tenant: str, workflow: str, slices: int, base: str) -> list[str]:
    """Idempotency keys whose runs land on every one of the tenant's ``slices`` partitions."""
    keys: dict[int, str] = {}
    n = 0
    while len(keys) < slices:
        key = f"{base}-{n}"
        keys.setdefault(partition_for(tenant, run_id_for(tenant, workflow, key), PARTITIONS, slices), key)
        n += 1
    return list(keys.values())


def test_bad_input_corpus_is_dead_lettered_with_specific_reasons(
    engine_factory: Callable[..., Engine],
) -> None:
    from services.executor.service import run_executor
    from services.router.service import run_router

    eng = engine_factory(tenant_limits={"operators": ["ops@acme"], "slices": PARTITIONS})
    settings, topics, prefix = eng.settings, eng.topics, eng.settings.topic_prefix
    public_key = read_tenants(settings)["acme"].keyring_or_empty().keys[0].public_key
    register_tenant(settings, "beta", public_key, operators=["ops@beta"])
    register_tenant(settings, "sleepy", public_key, status="suspended")
    # Topics the router must see at start (its regex subscription): an unregistered tenant, and a
    # name that matches the subscription but is not a valid tenant id.
    create_topics(settings.kafka_bootstrap_servers or "", [topics.tenant_triggers("ghost")])
    create_topics(settings.kafka_bootstrap_servers or "", [f"{prefix}.tenant.BAD.triggers"])
    eng.publish(CHAIN.format(version=1, second="noop"))
    eng.publish(CHAIN.format(version=1, second="noop"), tenant="beta")
    eng.publish(SLOW)
    eng.publish(PICKY)
    assert eng.start("router", run_router, instance_id="r1").wait(60)
    assert eng.start("executor", run_executor, instance_id="e1").wait(60)

    # Runs the corpus refers to: a finished one (acme), one still running (acme), beta's load.
    done_key = eng.trigger("go", {"msg": "done"})
    done_run = eng.run_id("chain", done_key)
    slow_run = eng.run_id("slow", eng.trigger("slow", {}))
    beta_runs = [run_id_for("beta", "chain", eng.trigger("go", {"msg": i}, tenant="beta")) for i in range(10)]
    eng.wait_terminal([done_run])
    eng.wait_events(slow_run, lambda evs: "step_retrying" in types(evs))  # waits 10 min to retry

    corpus = Corpus(eng)
    acme = topics.tenant_triggers("acme")
    limit = settings.max_trigger_bytes
    good = trigger_avro("go", {"msg": "x"}, None)

    # --- the trigger path (router intake) ---------------------------------------------------------
    corpus.send(acme, b"\x00\x00\x01", "bad_framing")  # magic byte, header cut short
    corpus.send(acme, b"\x07\x01\x02 not framed", "invalid_json")  # no framing: read as JSON, fails
    corpus.send(acme, b"\x00\x00\x00\x00\x63garbage", "unknown_schema")
    corpus.send(acme, serde.encode("ControlCommand", control("cancel", "acme", "x", "a", 0)), "wrong_schema")
    corpus.send(acme, good[: len(good) // 2], "bad_avro")  # truncated Avro
    corpus.send(acme, good + b"\x00\x00", "bad_avro")  # trailing bytes
    corpus.send(acme, framed("TriggerEvent") + zigzag(2**40) + b"abc", "bad_avro")  # absurd length
    corpus.send(acme, framed("TriggerEvent") + zigzag(-5) + b"abc", "bad_avro")  # negative length
    bad_utf8_avro = framed("TriggerEvent") + zigzag(2) + b"\xff\xfe" + zigzag(2) + b"{}" + b"\x00\x00\x00"
    corpus.send(acme, bad_utf8_avro, "bad_avro")  # invalid UTF-8 inside an Avro string
    corpus.send(acme, json.dumps({"event_type": 42, "data": {}}).encode(), "invalid_trigger")  # wrong type
    corpus.send(acme, json.dumps({"event_type": "go", "idempotency_key": 7}).encode(), "invalid_field")
    corpus.send(acme, json.dumps({"event_type": "go", "correlation_id": ""}).encode(), "invalid_field")
    corpus.send(acme, b"[1, 2, 3]", "invalid_trigger")  # JSON, but not an object
    corpus.send(acme, json.dumps({"event_type": "go", "run_as": "root"}).encode(), "invalid_trigger")
    corpus.send(acme, trigger_avro("go", None, None).replace(b"null", b"\x00ull"), "invalid_json")
    avro_in_json = serde.encode(
        "TriggerEvent",
        {
            "event_type": "go",
            "data_json": good.decode("latin-1"),  # Avro where the JSON payload is expected
            "idempotency_key": None,
            "correlation_id": None,
            "occurred_at": None,
        },
    )
    corpus.send(acme, avro_in_json, "invalid_json")
    corpus.send(acme, b"", "empty_record")
    corpus.send(acme, None, "empty_record")  # tombstone
    corpus.send(acme, b'{"event_type": "go\xff\xfe"}', "invalid_utf8")
    corpus.send(acme, b"x" * (limit + 1), "oversized")
    # As large as a producer with default settings sends (value + key under 1,000,000 bytes): its
    # dead letter must still be producible, or the record would fail its transaction forever.
    huge_key = "huge-" + "k" * 945
    corpus.send(acme, b"x" * 999_000, "oversized", key=huge_key)
    corpus.send(acme, ("[" * 65 + "]" * 65).encode(), "too_deep")
    corpus.send(acme, b"[" * 100_000 + b"]" * 100_000, "invalid_json")  # recursion limit
    corpus.send(acme, good, "oversized", headers=[("padding", b"h" * limit)])  # oversized headers
    # Valid JSON for the standard library, but not writable again (UTF-8, Avro): strict at the edge.
    corpus.send(acme, b'{"event_type": "go", "data": {"note": "\\ud800"}}', "invalid_json")
    corpus.send(acme, b'{"event_type": "go", "data": {"x": NaN}}', "invalid_json")
    corpus.send(acme, trigger_avro_text("go", '{"note": "\\udfff"}'), "invalid_json")
    # Under the limit as sent, over it once re-encoded (1e15 -> 1000000000000000.0): refused before
    # any run exists, so a re-send gets the same answer.
    expanding = b'{"event_type": "go", "data": {"n": [' + b",".join([b"1e15"] * ((limit - 100) // 5)) + b"]}}"
    assert len(expanding) + 40 <= limit
    corpus.send(acme, expanding, "oversized")
    corpus.send(acme, expanding, "oversized")
    # A filter that cannot be evaluated (no such key) is a dead letter, not a silent miss.
    corpus.send(acme, json.dumps({"event_type": "picky", "data": {}}).encode(), "filter_error")
    corpus.send(topics.tenant_triggers("ghost"), good, "unknown_tenant")
    corpus.send(topics.tenant_triggers("sleepy"), good, "tenant_suspended")
    corpus.send(f"{prefix}.tenant.BAD.triggers", good, "bad_topic")

    # Accepted on purpose: exactly at the size limit; a payload claiming another tenant (the topic
    # is the tenant, the claim is ignored); occurred_at 0, negative and year 9999 (informational).
    # The limit counts value, key and headers: this record is exactly at it.
    at_limit = json.dumps({"event_type": "go", "data": {"msg": ""}, "idempotency_key": "at-limit"})
    room = limit - len(at_limit) - len("at-limit")
    at_limit = at_limit.replace('"msg": ""', '"msg": "' + "p" * room + '"')
    assert len(at_limit.encode()) + len("at-limit") == limit
    corpus.send(acme, at_limit.encode(), None, key="at-limit")
    claim = {"event_type": "go", "data": {"msg": "c"}, "idempotency_key": "claims-beta", "tenant": "beta"}
    corpus.send(acme, json.dumps(claim).encode(), None)
    # Kafka keys as idempotency keys: one of 260 KB (with no idempotency_key) and one that is not
    # UTF-8 (an encoded surrogate) both become sha256:<hex> of their bytes: bounded, stable.
    hashed_keys = [b"K" * 260_000, b"\xed\xa0\x80-surrogate-key"]
    for raw_key in hashed_keys:
        corpus.producer.produce(
            acme, key=raw_key, value=json.dumps({"event_type": "go", "data": {"msg": "k"}})
        )
    stamped = {ts: f"ts-{ts}" for ts in (0, -1, YEAR_9999_MS)}
    for ts, key in stamped.items():
        corpus.send(acme, trigger_avro("go", {"msg": "t"}, key, occurred_at=ts), None)

    # --- definitions published straight to the registry topic, bypassing the CLI's checks -------
    private = private_key_from_b64(eng.private_key)
    v2 = sign_definition(
        load_definition_text(CHAIN.format(version=2, second="echo")),
        tenant="acme",
        key_id="k1",
        private_key=private,
    )
    publish(settings, "acme", v2.model_copy(update={"signature": ""}), "mallory")  # unsigned
    v3 = sign_definition(
        load_definition_text(CHAIN.format(version=3, second="noop")),
        tenant="acme",
        key_id="k1",
        private_key=private,
    )
    evil = load_definition_text(CHAIN.format(version=3, second="echo"))
    publish(settings, "acme", v3.model_copy(update={"definition": evil}), "mallory")  # tampered
    corpus.send(topics.definitions, b"not a definition", None, key="acme/chain/9")

    # --- the inbox (router core): forged step results and run requests ---------------------------
    inbox = topics.inbox
    done_part = partition_for("acme", done_run, PARTITIONS, PARTITIONS)
    slow_part = partition_for("acme", slow_run, PARTITIONS, PARTITIONS)
    now = int(time.time() * 1000)
    corpus.send(inbox, step_result(done_run, "beta", "a", 1, now), "tenant_mismatch", partition=done_part)
    ghost_run = str(uuid.uuid4())
    corpus.send(inbox, step_result(ghost_run, "acme", "a", 1, now), "unknown_run", partition=done_part)
    wrong_part = (done_part + 1) % PARTITIONS  # the right run, on a partition that does not own it
    corpus.send(inbox, step_result(done_run, "acme", "a", 1, now), "unknown_run", partition=wrong_part)
    corpus.send(inbox, b'{"run_id": "x"}', "bad_framing", partition=0)  # JSON where Avro is expected
    corpus.send(inbox, good, "wrong_schema", partition=1)
    corpus.send(inbox, None, "bad_framing", partition=2)
    forged: RunRequested = {
        "run_id": run_id_for("acme", "chain", "forged"),
        "tenant": "acme",
        "workflow": "chain",
        "version": 3,  # the tampered version
        "event_type": "go",
        "data_json": "{}",
        "idempotency_key": "forged",
        "correlation_id": "forged",
        "requested_at": now,
        "source": "mallory",
        "parent": None,
    }
    forged_part = partition_for("acme", forged["run_id"], PARTITIONS, PARTITIONS)
    corpus.send(
        inbox, serde.encode_inbox("RunRequested", forged), "unknown_definition", partition=forged_part
    )
    # Results the core must ignore with a reason in the run's history (not dead letters).
    corpus.send(inbox, step_result(done_run, "acme", "a", 1, -1), None, partition=done_part)  # finished
    corpus.send(inbox, step_result(slow_run, "acme", "wait", 99, YEAR_9999_MS), None, partition=slow_part)
    corpus.send(inbox, step_result(slow_run, "acme", "nope", 1, 0), None, partition=slow_part)

    # --- the control path ----------------------------------------------------------------------------
    ctl = topics.control

    def send_control(cmd: dict[str, Any], kind: str, key: str | None = None) -> None:
        corpus.send(ctl, serde.encode("ControlCommand", cmd), kind, key=key)

    send_control(control("cancel", "acme", slow_run, "mallory", now), "control_refused")
    for ts in (0, -1, YEAR_9999_MS):
        send_control(control("replay_run", "acme", done_run, "mallory", ts), "control_refused")
    send_control(control("cancel", "ghost", slow_run, "ops@acme", now), "control_refused")
    send_control(control("replay_bulk", "acme", None, "ops@acme", now), "control_refused")
    send_control(control("cancel", "acme", None, "ops@acme", now), "control_refused")
    # beta's operator, naming beta, for acme's run: accepted by intake, refused by the core
    send_control(control("cancel", "beta", slow_run, "ops@beta", now), "control_refused", key=slow_run)
    corpus.send(ctl, json.dumps({"kind": "cancel", "run_id": slow_run}).encode(), "bad_framing")
    corpus.send(ctl, b"", "bad_framing")
    corpus.send(ctl, None, "bad_framing")
    cmd_bytes = serde.encode("ControlCommand", control("cancel", "acme", slow_run, "ops@acme", now))
    corpus.send(ctl, cmd_bytes[:-7], "bad_avro")
    corpus.send(ctl, good, "wrong_schema")
    huge_tenant = control("cancel", "t" * 300_000, slow_run, "ops@acme", now)
    send_control(huge_tenant, "invalid_field")  # its dead letter must stay small and producible
    send_control(control("cancel", "acme", slow_run, "r" * 100_000, now), "invalid_field")
    corpus.flush()

    # --- every item dead-lettered once, with exactly the expected reason -------------------------
    letters = dead_letters(eng, set(corpus.expected))
    got = {key: [letter["error_kind"] for letter in letters[key]] for key in corpus.expected}
    want = {key: [kind] for key, kind in corpus.expected.items()}
    assert got == want
    (huge,) = letters[huge_key.encode()]
    assert len(huge["original_value"]) == MAX_ORIGINAL_VALUE
    assert "original value truncated from 999000" in huge["error_message"]
    expanded = [
        letter for key, kind in corpus.expected.items() if kind == "oversized" for letter in letters[key]
    ]
    assert sum("re-encodes to" in letter["error_message"] for letter in expanded) == 2

    # --- what is not a dead letter ----------------------------------------------------------------
    slow_events = eng.wait_events(slow_run, lambda evs: types(evs).count("result_ignored") >= 2, timeout_s=30)
    reasons = sorted(e["detail"]["reason"] for e in slow_events if e["type"] == "result_ignored")
    assert reasons[:2] == ["stale_attempt", "unknown_step"]
    done_events = eng.wait_events(done_run, lambda evs: "result_ignored" in types(evs), timeout_s=30)
    assert [e["detail"]["reason"] for e in done_events if e["type"] == "result_ignored"] == ["run_succeeded"]
    assert types(done_events).count("run_succeeded") == 1

    accepted = [eng.run_id("chain", "at-limit"), eng.run_id("chain", "claims-beta")]
    accepted += [eng.run_id("chain", "sha256:" + hashlib.sha256(k).hexdigest()) for k in hashed_keys]
    accepted += [eng.run_id("chain", key) for key in stamped.values()]
    for run_id in accepted:  # one by one, so that a failure names the item
        eng.wait_terminal([run_id], timeout_s=60)
    runs = eng.wait_terminal(accepted, timeout_s=60)
    assert all(types(evs)[-1] == "run_succeeded" for evs in runs.values())
    assert {e["tenant"] for e in runs[eng.run_id("chain", "claims-beta")]} == {"acme"}
    assert run_id_for("beta", "chain", "claims-beta") not in eng.log.by_run

    # Definitions that do not verify are never used: runs stay on version 1, and the registry
    # (read like the router reads it) says why each was refused.
    assert all({e["version"] for e in evs} == {1} for evs in runs.values())
    definitions, tenants = definitions_table(settings).start(), tenants_table(settings).start()
    try:
        definitions.wait_caught_up(30)
        tenants.wait_caught_up(30)
        verified = DefinitionCatalog(definitions, tenants)
        assert [w.version for w in verified.latest_for("acme") if w.name == "chain"] == [1]
        assert verified.refused["acme/chain/2"].startswith("unsigned")
        assert verified.refused["acme/chain/3"].startswith("tampered")
        assert "acme/chain/9" in definitions.rejected
    finally:
        definitions.stop()
        tenants.stop()

    # --- nothing crashed, nothing stalled, the other tenant unaffected ----------------------------
    assert not eng.errors and all(t.is_alive() for t in eng.threads)
    sentinels = [
        eng.trigger("go", {"msg": "after"}, key=k)
        for k in keys_covering_partitions("acme", "chain", PARTITIONS, "sentinel")
    ]
    sentinel_runs = [eng.run_id("chain", k) for k in sentinels]
    beta_runs += [
        run_id_for("beta", "chain", eng.trigger("go", {"msg": i}, tenant="beta")) for i in range(10)
    ]
    finished = eng.wait_terminal(sentinel_runs + beta_runs, timeout_s=60)
    assert {partition_for("acme", r, PARTITIONS, PARTITIONS) for r in sentinel_runs} == set(range(PARTITIONS))
    assert all(types(evs)[-1] == "run_succeeded" for evs in finished.values())
    assert all(e["tenant"] == "beta" for r in beta_runs for e in finished[r])
    assert not eng.errors and all(t.is_alive() for t in eng.threads)
