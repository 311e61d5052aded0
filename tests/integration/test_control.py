"""Replay and cancel through the control topic, on a real broker: authorisation, bounds, audit.

Commands are signed with the fixture's operator key (tests/fixtures/operators.py) as ``ops@acme``,
the operator key ``register_tenant`` gives tenant acme; tests/integration/test_signed_commands.py
covers what is refused (unsigned, forged, stale, replayed, another tenant's key)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import Consumer

from services.contracts import serde
from services.contracts.records import ControlCommand
from services.control.commands import ControlSender, command
from services.tenancy.admin import read_tenants
from tests.fixtures.engine import Engine, register_tenant
from tests.fixtures.kafka import consume_until
from tests.fixtures.operators import signed

pytestmark = pytest.mark.integration

FLAKY = """
name: flaky
version: 1
trigger: {event: go}
steps:
  - {id: prepare, action: noop}
  - id: call
    action: fail
    needs: [prepare]
    inputs: {error_kind: upstream_down, fail_attempts: "${{ trigger.data.failures }}"}
    retry: {max_attempts: 1}
  - {id: after, action: echo, needs: [call], inputs: {ok: true}}
"""


def start(engine_factory: Callable[..., Engine], **settings: Any) -> Engine:
    from services.executor.service import run_executor
    from services.router.service import run_router

    eng = engine_factory(tenant_limits={"operators": ["ops@acme"]}, **settings)
    assert eng.start("router", run_router, instance_id="r1").wait(60)
    assert eng.start("executor", run_executor, instance_id="e1").wait(60)
    eng.publish(FLAKY)
    return eng


def send(
    eng: Engine,
    kind: Any,
    run_id: str,
    requester: str = "ops@acme",
    tenant: str = "acme",
    step: str | None = None,
    reason: str = "upstream fixed",
) -> ControlCommand:
    cmd = signed(command(kind, tenant, run_id, requester, reason, step_id=step), requester)
    sender = ControlSender(eng.settings)
    sender.send(cmd)
    sender.flush()
    return cmd


def types(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events]


def count(events: list[dict[str, Any]], kind: str) -> int:
    return types(events).count(kind)


def test_replay_after_a_transient_failure_succeeds_with_a_new_attempt(
    engine_factory: Callable[..., Engine],
) -> None:
    eng = start(engine_factory)
    run_id = eng.run_id("flaky", eng.trigger("go", {"failures": 1}))
    assert types(eng.wait_terminal([run_id])[run_id])[-1] == "run_failed"
    cmd = send(eng, "replay_run", run_id)
    events = eng.wait_events(run_id, lambda evs: count(evs, "run_succeeded") == 1, timeout_s=60)
    accepted = next(e for e in events if e["type"] == "control_accepted")
    assert accepted["detail"]["command_id"] == cmd["command_id"]
    assert accepted["detail"]["requester"] == "ops@acme" and accepted["detail"]["reason"] == "upstream fixed"
    replayed = next(e for e in events if e["type"] == "run_replayed")
    assert replayed["detail"]["steps"] == ["call"] and replayed["detail"]["replay"] == 1
    scheduled = [e for e in events if e["type"] == "step_scheduled" and e["step_id"] == "call"]
    assert [e["attempt"] for e in scheduled] == [1, 2]
    keys = [e["detail"]["idempotency_key"] for e in scheduled]
    assert keys == [f"{run_id}:call:1", f"{run_id}:call:2"]
    assert count(events, "step_scheduled") == 4  # prepare once, call twice, after once: nothing re-ran
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))


def test_replay_beyond_the_bound_is_refused_with_a_clear_reason(
    engine_factory: Callable[..., Engine],
) -> None:
    eng = start(engine_factory, max_replays_per_run=1)
    run_id = eng.run_id("flaky", eng.trigger("go", {"failures": 10}))
    eng.wait_terminal([run_id])
    send(eng, "replay_run", run_id)
    eng.wait_events(run_id, lambda evs: count(evs, "run_failed") == 2, timeout_s=60)
    second = send(eng, "replay_run", run_id)
    events = eng.wait_events(run_id, lambda evs: "control_refused" in types(evs), timeout_s=30)
    refused = next(e for e in events if e["type"] == "control_refused")
    assert refused["detail"]["command_id"] == second["command_id"]
    assert refused["detail"]["refusal"] == "replay limit of 1 reached for this run"
    assert count(events, "run_replayed") == 1


def test_replay_from_a_step_reruns_it_and_everything_downstream(
    engine_factory: Callable[..., Engine],
) -> None:
    eng = start(engine_factory)
    run_id = eng.run_id("flaky", eng.trigger("go", {"failures": 1}))
    assert types(eng.wait_terminal([run_id])[run_id])[-1] == "run_failed"
    send(eng, "replay_run", run_id, step="prepare")
    events = eng.wait_events(run_id, lambda evs: count(evs, "run_succeeded") == 1, timeout_s=60)
    reset = [e["step_id"] for e in events if e["type"] == "step_reset"]
    assert reset == ["prepare", "call", "after"]
    assert [e["attempt"] for e in events if e["type"] == "step_scheduled" and e["step_id"] == "prepare"] == [
        1,
        2,
    ]


def test_a_succeeded_run_keeps_no_replay_state_so_its_replay_is_refused_with_the_reason(
    engine_factory: Callable[..., Engine],
) -> None:
    eng = start(engine_factory)
    run_id = eng.run_id("flaky", eng.trigger("go", {"failures": 0}))
    assert types(eng.wait_terminal([run_id])[run_id])[-1] == "run_succeeded"
    cmd = send(eng, "replay_run", run_id, step="call")
    events = eng.wait_events(run_id, lambda evs: "control_refused" in types(evs))
    refused = next(e for e in events if e["type"] == "control_refused")
    assert refused["detail"]["command_id"] == cmd["command_id"]
    assert refused["detail"]["refusal"].startswith("the run's replay state was compacted (succeeded)")
    assert "run_replayed" not in types(events)


def test_cancel_is_recorded_and_cancelling_a_finished_run_is_refused(
    engine_factory: Callable[..., Engine],
) -> None:
    eng = start(engine_factory)
    run_id = eng.run_id("flaky", eng.trigger("go", {"failures": 0}))
    eng.wait_terminal([run_id])
    send(eng, "cancel", run_id, reason="too late")
    events = eng.wait_events(run_id, lambda evs: "control_refused" in types(evs))
    assert (
        next(e for e in events if e["type"] == "control_refused")["detail"]["refusal"]
        == "run is already succeeded"
    )


def test_unauthorised_and_cross_tenant_commands_are_refused_and_dead_lettered(
    engine_factory: Callable[..., Engine],
) -> None:
    eng = start(engine_factory)
    public_key = read_tenants(eng.settings)["acme"].keyring_or_empty().keys[0].public_key
    register_tenant(eng.settings, "beta", public_key, operators=["ops@beta"])
    run_id = eng.run_id("flaky", eng.trigger("go", {"failures": 1}))
    eng.wait_terminal([run_id])
    stranger = send(eng, "replay_run", run_id, requester="mallory")
    other_operator = send(eng, "replay_run", run_id, requester="ops@beta")
    cross_tenant = send(eng, "replay_run", run_id, requester="ops@beta", tenant="beta")
    wanted = {stranger["command_id"], other_operator["command_id"], cross_tenant["command_id"]}

    dlq = Consumer(
        {
            "bootstrap.servers": eng.settings.kafka_bootstrap_servers,
            "group.id": f"dlq-{run_id}",
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
        }
    )
    dlq.subscribe([eng.topics.dlq])

    def refused_ids(msgs: list[Any]) -> set[str]:
        ids = set()
        for m in msgs:
            letter = serde.decode(m.value())[1]
            if letter["error_kind"] == "control_refused":
                ids.add(serde.decode(letter["original_value"], expected="ControlCommand")[1]["command_id"])
        return ids

    try:
        seen = consume_until(dlq, lambda ms: wanted <= refused_ids(ms), 30)
    finally:
        dlq.close()
    letters = {
        serde.decode(serde.decode(m.value())[1]["original_value"])[1]["command_id"]: serde.decode(m.value())[
            1
        ]
        for m in seen
        if serde.decode(m.value())[1]["error_kind"] == "control_refused"
    }
    assert letters[stranger["command_id"]]["error_message"].startswith("unknown_key: ")
    assert letters[other_operator["command_id"]]["error_message"].startswith("foreign_key: ")
    assert f"no run {run_id} of tenant beta" in letters[cross_tenant["command_id"]]["error_message"]
    eng.log.pump()
    assert "run_replayed" not in types(eng.log.by_run[run_id])
