"""Honest timeouts on a real broker: the step timeout limit is one setting that publishing and the
executor agree on, and cancelling a run stops its in-flight action."""

from __future__ import annotations

import importlib
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import Consumer

from services.bus.fetch import consume_ready
from services.contracts import serde
from services.contracts.records import ControlCommand
from services.control.commands import ControlSender, command
from services.executor.cancellation import InFlight, InFlightAttempts
from services.registry.publishing import PublishRefused
from tests.fixtures.engine import Engine


def signed(command: ControlCommand, key_id: str) -> ControlCommand:
    """``command`` signed with the test operator key, where operator commands are signed
    (tests/fixtures/operators.py); as it is where they are not."""
    try:
        operators = importlib.import_module("tests.fixtures.operators")
    except ImportError:
        return command
    result: ControlCommand = operators.signed(command, key_id)
    return result


pytestmark = pytest.mark.integration


def definition(name: str, timeout: float, seconds: float) -> str:
    return f"""
name: {name}
version: 1
trigger: {{event: {name}}}
steps:
  - id: wait
    action: sleep
    timeout: {timeout}
    inputs: {{seconds: {seconds}}}
    retry: {{max_attempts: 3, initial_backoff: 0.05, max_backoff: 0.05}}
"""


def start(eng: Engine) -> None:
    from services.executor.service import run_executor
    from services.router.service import run_router

    assert eng.start("router", run_router, instance_id="r1").wait(60)
    assert eng.start("executor", run_executor, instance_id="e1").wait(60)


def types(events: list[dict[str, Any]], step: str | None = None) -> list[str]:
    return [e["type"] for e in events if step is None or e["step_id"] == step]


def test_the_step_timeout_limit_is_refused_at_publish_and_honoured_up_to_it(
    engine_factory: Callable[..., Engine],
) -> None:
    eng = engine_factory(max_step_timeout_s=4)
    with pytest.raises(PublishRefused) as refused:
        eng.publish(definition("toolong", timeout=5, seconds=0))
    assert "steps[0].timeout" in str(refused.value)
    assert "limit of 4 s" in str(refused.value) and "SWITCHYARD_MAX_STEP_TIMEOUT_S" in str(refused.value)

    start(eng)
    eng.publish(definition("nearcap", timeout=4, seconds=3.5))  # at the limit: accepted
    run_id = eng.run_id("nearcap", eng.trigger("nearcap", {}))
    events = eng.wait_terminal([run_id], timeout_s=60)[run_id]
    assert types(events)[-1] == "run_succeeded", events
    assert types(events, "wait").count("step_scheduled") == 1  # one attempt, not cut short


def test_cancelling_a_run_stops_its_long_sleep_within_seconds(
    engine_factory: Callable[..., Engine],
    monkeypatch: pytest.MonkeyPatch,
    make_consumer: Callable[..., Consumer],
) -> None:
    started: dict[str, threading.Event] = {}
    add = InFlightAttempts.add

    def watched_add(self: InFlightAttempts, cmd: Any, task: Any, *, cancellable: bool) -> InFlight:
        entry = add(self, cmd, task, cancellable=cancellable)
        started.setdefault(cmd["run_id"], threading.Event()).set()
        return entry

    monkeypatch.setattr(InFlightAttempts, "add", watched_add)
    eng = engine_factory(tenant_limits={"operators": ["ops@acme"]})
    start(eng)
    eng.publish(definition("long", timeout=600, seconds=300))
    run_id = eng.run_id("long", eng.trigger("long", {}))
    deadline = time.monotonic() + 60
    while not started.get(run_id, threading.Event()).wait(0.05):
        assert time.monotonic() < deadline, "the executor never started the sleep"

    sender = ControlSender(eng.settings)
    sender.send(signed(command("cancel", "acme", run_id, "ops@acme", "customer withdrew"), "ops@acme"))
    sender.flush()
    cancelled_at = time.time()

    inbox = make_consumer([eng.topics.inbox])
    result: dict[str, Any] | None = None
    wait_until = time.monotonic() + 30
    while result is None and time.monotonic() < wait_until:
        for msg in consume_ready(inbox, 100, 0.2):
            if msg.error() or msg.value() is None:
                continue
            kind, body = serde.decode_inbox(msg.value())
            if kind == "StepResult" and body["run_id"] == run_id:
                result = body
    assert result is not None, "no result of the cancelled attempt within 30 s"
    assert (result["status"], result["error_kind"], result["retryable"]) == ("failed", "cancelled", False)
    assert result["error_message"] == "the run was cancelled"
    assert result["finished_at"] / 1000 - cancelled_at < 3.0  # not 300 s

    events = eng.wait_events(run_id, lambda evs: "result_ignored" in types(evs), timeout_s=30)
    assert "run_cancelled" in types(events)
    assert types(events, "wait").count("step_scheduled") == 1  # nothing retried
