"""``wait_for`` on a real broker: a run waits for one of its tenant's events, sent to the tenant's
trigger topic like any trigger.

One engine for the module (router + executor), phases in order: an event sent before its run
reaches the step is not matched (counted unmatched) and the step keeps waiting; an event of
another engagement does not complete a wait, the right one does and the run ends with its data;
across a router restart a waiting run resumes and an event sent after the restart completes it
(as does the early event, re-sent); a wait with ``on_timeout: continue`` ends after 2 s."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from services.observability import metrics
from tests.fixtures.engine import Engine, router_until

pytestmark = pytest.mark.integration

WAITER = """
name: engagement
version: 1
trigger: {event: engagement.opened}
steps:
  - {id: open, action: echo, inputs: {engagement: "${{ trigger.data.engagement }}"}}
  - id: signed
    needs: [open]
    wait_for:
      event: document.signed
      match: "event.data.engagement == trigger.data.engagement"
      timeout: 300
  - {id: close, action: echo, needs: [signed], inputs: {signer: "${{ steps.signed.output.data.signer }}"}}
"""
SHORT = """
name: short-wait
version: 1
trigger: {event: reminder.armed}
steps:
  - {id: reply, wait_for: {event: client.replied, timeout: 2, on_timeout: continue}}
  - {id: after, action: echo, needs: [reply], inputs: {timed_out: "${{ steps.reply.output.timed_out }}"}}
"""


def types(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events]


def deliveries(outcome: str) -> float:
    return (
        metrics.REGISTRY.get_sample_value(
            "switchyard_event_deliveries_total", {"tenant": "acme", "outcome": outcome}
        )
        or 0.0
    )


def wait_metric(outcome: str, at_least: float, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if deliveries(outcome) >= at_least:
            return
        time.sleep(0.05)
    raise AssertionError(f"{outcome} deliveries stayed at {deliveries(outcome)}, expected {at_least}")


def waiting(eng: Engine, run_id: str) -> None:
    eng.wait_events(run_id, lambda evs: "step_waiting_for_event" in types(evs), timeout_s=60)


def signed(eng: Engine, engagement: str, signer: str) -> None:
    eng.trigger("document.signed", {"engagement": engagement, "signer": signer})


def test_runs_wait_for_their_events_across_a_router_restart(engine_factory: Callable[..., Engine]) -> None:
    from services.executor.service import run_executor
    from services.router.service import run_router

    stop_r1 = threading.Event()
    eng = engine_factory()
    assert eng.start("router", router_until(stop_r1), instance_id="r1").wait(60)
    assert eng.start("executor", run_executor, instance_id="e1").wait(60)
    eng.publish(WAITER)
    eng.publish(SHORT)

    # An event before its run reaches the step: not matched, counted; the step then keeps waiting.
    unmatched = deliveries("unmatched")
    signed(eng, "early", "too-soon")
    wait_metric("unmatched", unmatched + 1)
    early = eng.run_id("engagement", eng.trigger("engagement.opened", {"engagement": "early"}))
    waiting(eng, early)

    # Another engagement's event does not complete the wait; its own does, with the event's data.
    run = eng.run_id("engagement", eng.trigger("engagement.opened", {"engagement": "e1"}))
    waiting(eng, run)
    unmatched = deliveries("unmatched")
    signed(eng, "e2", "someone-else")
    wait_metric("unmatched", unmatched + 1)
    assert "step_succeeded" not in [e["type"] for e in eng.log.by_run[run] if e["step_id"] == "signed"]
    signed(eng, "e1", "ada")
    events = eng.wait_terminal([run])[run]
    assert types(events)[-1] == "run_succeeded"
    [done] = [e for e in events if e["type"] == "step_succeeded" and e["step_id"] == "signed"]
    output = done["detail"]["output"]
    assert output["event"] == "document.signed"
    assert output["data"] == {"engagement": "e1", "signer": "ada"}
    assert output["source"].startswith(eng.topics.tenant_triggers("acme") + "/")
    [close] = [e for e in events if e["type"] == "step_scheduled" and e["step_id"] == "close"]
    assert close["detail"]["inputs"] == {"signer": "ada"}

    # A router restart while runs wait: the index is rebuilt from the restored state.
    after_restart = eng.run_id("engagement", eng.trigger("engagement.opened", {"engagement": "e3"}))
    waiting(eng, after_restart)
    stop_r1.set()
    for thread in eng.threads:
        if thread.name == "router":
            thread.join(60)
            assert not thread.is_alive()
    assert eng.start("router-2", run_router, instance_id="r2").wait(60)
    signed(eng, "e3", "grace")
    signed(eng, "early", "on-time")  # the early event, re-sent: now its run waits for it
    finished = eng.wait_terminal([after_restart, early], timeout_s=90)
    for run_id, signer in ((after_restart, "grace"), (early, "on-time")):
        assert types(finished[run_id])[-1] == "run_succeeded"
        [done] = [e for e in finished[run_id] if e["type"] == "step_succeeded" and e["step_id"] == "signed"]
        assert done["detail"]["output"]["data"]["signer"] == signer
    # Each wait was completed exactly once.
    for run_id in (run, after_restart, early):
        completions = [
            e for e in eng.log.by_run[run_id] if e["type"] == "step_succeeded" and e["step_id"] == "signed"
        ]
        assert len(completions) == 1

    # No event by the timeout, on_timeout continue: the step succeeds {"timed_out": true}.
    short = eng.run_id("short-wait", eng.trigger("reminder.armed", {}))
    events = eng.wait_terminal([short], timeout_s=60)[short]
    assert types(events)[-1] == "run_succeeded"
    [reply] = [e for e in events if e["type"] == "step_succeeded" and e["step_id"] == "reply"]
    assert reply["detail"]["output"] == {"timed_out": True}
    [after] = [e for e in events if e["type"] == "step_scheduled" and e["step_id"] == "after"]
    assert after["detail"]["inputs"] == {"timed_out": True}
