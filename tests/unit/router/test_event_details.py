"""The machine's event details have the shapes services.router.event_details declares.

The types are only checked by mypy where a detail is built; this holds the events the machine
actually produces, across every kind of transition, to the declared keys of their event type."""

from __future__ import annotations

from typing import Any

from services.contracts.records import ControlCommand, StepResult
from services.router import event_details as d
from services.router import machine
from services.router.state import RunState
from services.workflow.compiled import compile_workflow
from services.workflow.loader import load_definition_text

WF = compile_workflow(
    load_definition_text(
        """
name: wf
version: 1
trigger: {event: go}
steps:
  - {id: a, action: echo, inputs: {x: "${{ trigger.data.x }}"}, timeout: 1,
     retry: {max_attempts: 2, initial_backoff: 1, max_backoff: 1, jitter: 0}}
  - {id: b, action: noop, needs: [a]}
  - {id: c, action: noop, needs: [a], when: "trigger.data.x > 100"}
""",
        filename="wf.yaml",
    )
)

#: The detail type of each event type the machine writes (None: the event has no detail).
DETAIL_OF: dict[str, Any] = {
    "run_pending": d.RunPendingDetail,
    "run_started": None,
    "run_running": None,
    "run_retrying": None,
    "run_succeeded": None,
    "run_failed": d.RunFailedDetail,
    "run_cancelled": d.RunCancelledDetail,
    "run_replayed": d.RunReplayedDetail,
    "step_scheduled": d.StepScheduledDetail,
    "step_succeeded": d.StepSucceededDetail,
    "step_retrying": d.StepFailureDetail,
    "step_failed": d.StepFailureDetail,
    "step_timed_out": d.StepFailureDetail,
    "step_skipped": d.ReasonDetail,
    "step_cancelled": d.ReasonDetail,
    "step_reset": d.StepResetDetail,
    "result_ignored": d.ReasonDetail,
    "control_accepted": d.ControlDetail,
    "control_refused": d.ControlDetail,
}


def new_run() -> RunState:
    return RunState(
        run_id="r1",
        tenant="t",
        workflow="wf",
        version=1,
        partition=0,
        correlation_id="c",
        idempotency_key="k",
        trigger={"event": "go", "data": {"x": 7}},
        arrival=1,
        created_ms=0,
        steps=machine.new_run_steps(WF),
    )


def result(step: str, attempt: int, ok: bool = True) -> StepResult:
    return {
        "run_id": "r1",
        "tenant": "t",
        "step_id": step,
        "attempt": attempt,
        "status": "succeeded" if ok else "failed",
        "output_json": '{"y": 1}' if ok else None,
        "error_kind": None if ok else "boom",
        "error_message": None if ok else "it broke",
        "retryable": True,
        "started_at": 1,
        "finished_at": 2,
        "correlation_id": "c",
        "executor_id": "e1",
        "retry_after_ms": None,
    }


def command(kind: Any, step: str | None = None) -> ControlCommand:
    return {
        "command_id": "cmd-1",
        "kind": kind,
        "requester": "ops",
        "tenant": "t",
        "run_id": "r1",
        "step_id": step,
        "reason": "test",
        "correlation_id": "cc",
        "issued_at": 0,
        "filter_json": None,
        "dry_run": False,
        "key_id": None,
        "signature": None,
        "on_behalf_of": None,
    }


def every_kind_of_event() -> list[machine.Event]:
    events: list[machine.Event] = []
    run = new_run()
    events += machine.admitted(run, "topic/0/1").events
    events += machine.admitted(run, "topic/0/1", omitted="too large").events
    events += machine.start(run, WF, 0).events
    fx = machine.on_result(run, WF, result("a", 1, ok=False), 100, 0.5)  # retrying
    events += fx.events
    events += machine.on_timer(run, WF, fx.timers[0], 1100, 0.5).events  # attempt 2
    events += machine.on_result(run, WF, result("a", 1), 1150, 0.5).events  # stale: ignored
    deadline = machine.Timer(run.steps["a"].deadline_ms or 0, "r1", "a", 2, "deadline")
    events += machine.on_timer(run, WF, deadline, 5000, 0.5).events  # timed out, run failed
    events += machine.replay(run, ["a"], command("replay_run")).events
    events += machine.start(run, WF, 6000).events
    events += machine.on_result(run, WF, result("a", 3), 6100, 0.5).events  # b scheduled, c skipped
    events += machine.cancel(run, "ops", "enough").events
    events.append(machine.control_event(command("cancel"), "run is already cancelled"))
    big = new_run()
    machine.start(big, WF, 0)
    events += machine.on_result(big, WF, result("a", 1), 10, 0.5, max_run_output_bytes=1).events
    events += machine.fail_run(new_run(), "router_error", "boom").events
    return events


def test_every_event_detail_has_the_declared_keys_of_its_event_type() -> None:
    events = every_kind_of_event()
    seen = {e.type for e in events}
    # Every declared event type with a detail is exercised (else this test proves less than it says).
    assert {t for t, kind in DETAIL_OF.items() if kind is not None} <= seen, seen
    for event in events:
        declared = DETAIL_OF[event.type]
        if declared is None:
            assert event.detail is None, event
            continue
        if event.detail is None:  # step_cancelled by an operator's cancel carries no reason
            assert event.type == "step_cancelled", event
            continue
        keys = set(event.detail)
        assert keys <= declared.__required_keys__ | declared.__optional_keys__, (event.type, keys)
        assert declared.__required_keys__ <= keys, (event.type, keys)
