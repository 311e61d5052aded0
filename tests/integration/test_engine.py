"""The engine end to end on a real broker: router (intake + core) and executor, run history read back."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer

from services.bus.clients import plain_producer_config
from services.contracts import serde
from services.contracts.records import ControlCommand, ControlKind
from tests.fixtures.engine import Engine
from tests.fixtures.kafka import consume_until
from tests.fixtures.operators import signed

pytestmark = pytest.mark.integration

LINEAR = """
name: chain
version: 1
trigger: {event: go}
steps:
  - {id: a, action: echo, inputs: {msg: "${{ trigger.data.msg }}"}}
  - {id: b, action: echo, needs: [a], inputs: {prev: "${{ steps.a.output.msg }}", n: 2}}
  - {id: c, action: noop, needs: [b]}
"""


def types(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events]


def step_events(events: list[dict[str, Any]], step: str) -> list[str]:
    return [e["type"] for e in events if e["step_id"] == step]


def test_linear_chain_runs_in_order_with_rendered_inputs(engine: Engine) -> None:
    engine.publish(LINEAR)
    key = engine.trigger("go", {"msg": "hi"})
    run_id = engine.run_id("chain", key)
    events = engine.wait_terminal([run_id])[run_id]
    assert types(events)[:2] == ["run_pending", "run_started"]
    assert types(events)[-1] == "run_succeeded"
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    succeeded = [e["step_id"] for e in events if e["type"] == "step_succeeded"]
    assert succeeded == ["a", "b", "c"]
    b_out = next(e for e in events if e["type"] == "step_succeeded" and e["step_id"] == "b")["detail"][
        "output"
    ]
    assert b_out == {"prev": "hi", "n": 2}
    assert {e["correlation_id"] for e in events} == {events[0]["correlation_id"]}


def test_fan_out_fan_in_and_condition_skip(engine: Engine) -> None:
    engine.publish("""
name: fan
version: 1
trigger: {event: fan}
steps:
  - {id: split, action: echo, inputs: {big: "${{ trigger.data.amount > 100 }}"}}
  - {id: left, action: noop, needs: [split]}
  - {id: right, action: noop, needs: [split]}
  - {id: review, action: noop, needs: [split], when: "steps.split.output.big"}
  - {id: after_review, action: noop, needs: [review]}
  - {id: join, action: echo, needs: [left, right, after_review], inputs: {done: true}}
""")
    run_id = engine.run_id("fan", engine.trigger("fan", {"amount": 5}))
    events = engine.wait_terminal([run_id])[run_id]
    assert types(events)[-1] == "run_succeeded"
    assert step_events(events, "review") == ["step_skipped"]
    assert step_events(events, "after_review") == ["step_skipped"]  # no live path left
    join_scheduled = next(
        i for i, e in enumerate(events) if e["type"] == "step_scheduled" and e["step_id"] == "join"
    )
    for branch in ("left", "right"):
        done = next(
            i for i, e in enumerate(events) if e["type"] == "step_succeeded" and e["step_id"] == branch
        )
        assert done < join_scheduled


def test_retry_then_success_and_exhausted_retries_fail_with_dead_letter(engine: Engine) -> None:
    engine.publish("""
name: flaky
version: 1
trigger: {event: flaky}
steps:
  - id: s
    action: fail
    inputs: {error_kind: upstream_down, fail_attempts: "${{ trigger.data.failures }}"}
    retry: {max_attempts: 3, initial_backoff: 0.05, max_backoff: 0.1}
""")
    ok = engine.run_id("flaky", engine.trigger("flaky", {"failures": 2}))
    bad = engine.run_id("flaky", engine.trigger("flaky", {"failures": 5}))
    runs = engine.wait_terminal([ok, bad])
    assert step_events(runs[ok], "s") == [
        "step_scheduled",
        "step_retrying",
        "step_scheduled",
        "step_retrying",
        "step_scheduled",
        "step_succeeded",
    ]
    assert "run_retrying" in types(runs[ok]) and types(runs[ok])[-1] == "run_succeeded"
    assert types(runs[bad])[-1] == "run_failed"
    assert runs[bad][-1]["detail"]["error_kind"] == "upstream_down"
    attempts = [e["attempt"] for e in runs[bad] if e["type"] == "step_scheduled"]
    assert attempts == [1, 2, 3]

    dlq = Consumer(
        {
            "bootstrap.servers": engine.settings.kafka_bootstrap_servers,
            "group.id": f"dlq-{bad}",
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
        }
    )
    dlq.subscribe([engine.topics.dlq])
    try:
        seen = consume_until(dlq, lambda ms: any(serde.decode(m.value())[1]["run_id"] == bad for m in ms), 30)
    finally:
        dlq.close()
    letter = next(r for r in (serde.decode(m.value())[1] for m in seen) if r["run_id"] == bad)
    assert letter["error_kind"] == "upstream_down" and letter["step_id"] == "s" and letter["attempt"] == 3


def test_deadline_gives_a_new_attempt(engine: Engine) -> None:
    engine.publish("""
name: slow
version: 1
trigger: {event: slow}
steps:
  - id: s
    action: sleep
    timeout: 0.3
    inputs: {seconds: "${{ trigger.data.seconds }}"}
    retry: {max_attempts: 2, initial_backoff: 0.05, max_backoff: 0.05}
""")
    run_id = engine.run_id("slow", engine.trigger("slow", {"seconds": 5}))
    events = engine.wait_terminal([run_id], timeout_s=60)[run_id]
    assert [e["attempt"] for e in events if e["type"] == "step_scheduled"] == [1, 2]
    failures = [e for e in events if e["type"] in ("step_retrying", "step_timed_out", "step_failed")]
    assert all(e["detail"]["error_kind"] == "timeout" for e in failures)
    assert types(events)[-1] == "run_failed"


def test_duplicate_trigger_yields_one_run(engine: Engine) -> None:
    engine.publish(LINEAR)
    for _ in range(3):
        engine.trigger("go", {"msg": "once"}, key="same-key")
    run_id = engine.run_id("chain", "same-key")
    events = engine.wait_terminal([run_id])[run_id]
    # give a late duplicate the chance to show up, bounded by a second run of the pump
    engine.wait_events(run_id, lambda evs: types(evs).count("run_succeeded") == 1)
    assert types(events).count("run_pending") == 1
    assert types(events).count("step_scheduled") == 3


def _control(engine: Engine, kind: ControlKind, run_id: str, reason: str = "test") -> None:
    command: ControlCommand = {
        "command_id": f"c-{run_id}-{kind}",
        "kind": kind,
        "requester": "ops@acme",
        "tenant": engine.tenant,
        "run_id": run_id,
        "step_id": None,
        "reason": reason,
        "correlation_id": "cid",
        "issued_at": int(time.time() * 1000),
        "filter_json": None,
        "dry_run": False,
        "key_id": None,
        "signature": None,
        "on_behalf_of": None,
    }
    command = signed(command, "ops@acme")  # the fixture's operator key (tests/fixtures/operators.py)
    producer = Producer(plain_producer_config(engine.settings))
    producer.produce(engine.topics.control, key=run_id, value=serde.encode("ControlCommand", command))
    assert producer.flush(30) == 0


def test_cancel_stops_a_run_and_its_late_result_is_ignored(engine: Engine) -> None:
    engine.publish("""
name: long
version: 1
trigger: {event: long}
steps:
  - {id: wait, action: sleep, timeout: 30, inputs: {seconds: 6}}
  - {id: after, action: noop, needs: [wait]}
""")
    run_id = engine.run_id("long", engine.trigger("long", {}))
    engine.wait_events(run_id, lambda evs: "step_scheduled" in types(evs))
    _control(engine, "cancel", run_id, "customer withdrew")
    events = engine.wait_terminal([run_id])[run_id]
    assert types(events)[-1] == "run_cancelled" or "run_cancelled" in types(events)
    cancelled = next(e for e in events if e["type"] == "run_cancelled")
    assert cancelled["detail"] == {"requester": "ops@acme", "reason": "customer withdrew"}
    late = engine.wait_events(run_id, lambda evs: "result_ignored" in types(evs), timeout_s=30)
    assert next(e for e in late if e["type"] == "result_ignored")["detail"]["reason"] == "run_cancelled"
    assert "step_scheduled" not in step_events(late, "after")


def test_bad_triggers_go_to_the_dead_letter_topic(engine: Engine) -> None:
    engine.publish(LINEAR)
    engine.send_raw(b"\x00\x00\x00\x00\x63garbage", key="k1")
    engine.send_raw(b"{not json", key="k2")
    engine.send_raw(b"x" * (engine.settings.max_trigger_bytes + 1), key="k3")
    ok = engine.run_id("chain", engine.trigger("go", {"msg": "still fine"}))
    assert types(engine.wait_terminal([ok])[ok])[-1] == "run_succeeded"
    dlq = Consumer(
        {
            "bootstrap.servers": engine.settings.kafka_bootstrap_servers,
            "group.id": f"dlq-{ok}",
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
        }
    )
    dlq.subscribe([engine.topics.dlq])
    try:
        seen = consume_until(dlq, lambda ms: len(ms) >= 3, 30)
    finally:
        dlq.close()
    kinds = {
        serde.decode(m.value())[1]["original_key"]: serde.decode(m.value())[1]["error_kind"] for m in seen
    }
    assert kinds == {b"k1": "unknown_schema", b"k2": "invalid_json", b"k3": "oversized"}


BIG_OUTPUTS = """
name: big
version: 1
trigger: {event: big}
steps:
  - {id: a, action: echo, inputs: {blob: "${{ trigger.data.blob }}"}}
  - {id: b, action: echo, needs: [a], inputs: {blob: "${{ trigger.data.blob }}"}}
  - {id: c, action: echo, needs: [b], inputs: {blob: "${{ trigger.data.blob }}"}}
  - {id: d, action: echo, needs: [c], inputs: {blob: "${{ trigger.data.blob }}"}}
"""


def test_outputs_beyond_the_run_budget_fail_the_run_and_stall_nothing(engine: Engine) -> None:
    """Four 200 KB outputs would make the run's state record larger than Kafka accepts; the third
    output passes SWITCHYARD_MAX_RUN_OUTPUT_BYTES and fails its step instead, and the partition
    goes on (before the budget, the router failed that transaction forever)."""
    engine.publish(LINEAR)
    engine.publish(BIG_OUTPUTS)
    big = engine.run_id("big", engine.trigger("big", {"blob": "x" * 200_000}))
    events = engine.wait_terminal([big])[big]
    assert [e["step_id"] for e in events if e["type"] == "step_succeeded"] == ["a", "b"]
    (failed,) = [e for e in events if e["type"] == "step_failed"]
    assert failed["step_id"] == "c" and failed["detail"]["error_kind"] == "run_output_too_large"
    assert types(events)[-1] == "run_failed"
    after = [engine.run_id("chain", engine.trigger("go", {"msg": f"after {i}"})) for i in range(8)]
    assert all(types(evs)[-1] == "run_succeeded" for evs in engine.wait_terminal(after).values())


def test_two_routers_and_two_executors_survive_a_rebalance(
    engine_factory: Callable[..., Engine],
) -> None:
    from services.executor.service import run_executor
    from services.router.service import run_router

    eng = engine_factory(tenant_limits={"max_concurrent_runs": 1000, "slices": 4})
    assert eng.start("router-1", run_router, instance_id="r1").wait(60)
    assert eng.start("executor-1", run_executor, instance_id="e1").wait(60)
    eng.publish(LINEAR)
    keys = [eng.trigger("go", {"msg": str(i)}) for i in range(60)]
    # scale out mid-load: partitions move between instances while runs are in flight
    assert eng.start("router-2", run_router, instance_id="r2").wait(60)
    assert eng.start("executor-2", run_executor, instance_id="e2").wait(60)
    keys += [eng.trigger("go", {"msg": str(i)}) for i in range(60, 120)]
    run_ids = [eng.run_id("chain", k) for k in keys]
    runs = eng.wait_terminal(run_ids, timeout_s=120)
    for run_id, events in runs.items():
        assert types(events).count("run_succeeded") == 1, run_id
        assert types(events).count("run_pending") == 1, run_id
        assert [e["seq"] for e in events] == list(range(1, len(events) + 1)), run_id
        assert [e["step_id"] for e in events if e["type"] == "step_succeeded"] == ["a", "b", "c"], run_id


@pytest.mark.serial  # wall-clock bound: run alone (tests/conftest.py)
def test_a_slow_step_does_not_hold_up_other_steps_on_its_partition(engine: Engine) -> None:
    engine.publish("""
name: slowpoke
version: 1
trigger: {event: slowpoke}
steps:
  - {id: wait, action: sleep, timeout: 60, inputs: {seconds: 30}}
""")
    engine.publish(LINEAR)
    slow = engine.run_id("slowpoke", engine.trigger("slowpoke", {}))
    engine.wait_events(slow, lambda evs: "step_scheduled" in types(evs))
    started = time.monotonic()
    quick = engine.run_id("chain", engine.trigger("go", {"msg": "overtake"}))
    assert types(engine.wait_terminal([quick], timeout_s=20)[quick])[-1] == "run_succeeded"
    assert time.monotonic() - started < 20
    engine.log.pump()
    assert not any(e["type"] in ("run_succeeded", "run_failed") for e in engine.log.by_run[slow])
