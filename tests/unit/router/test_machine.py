"""The pure run state machine: transitions, retries on timers, deadlines, stale results, cancellation."""

from __future__ import annotations

from typing import cast

import pytest

from services.contracts.records import StepResult
from services.router import machine
from services.router.event_details import StepFailureDetail
from services.router.state import RunState, RunStatus
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
""",
        filename="wf.yaml",
    )
)


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


def result(
    step: str,
    attempt: int,
    ok: bool = True,
    *,
    output_json: str | None = None,
    error_kind: str | None = None,
    retry_after_ms: int | None = None,
) -> StepResult:
    return {
        "run_id": "r1",
        "tenant": "t",
        "step_id": step,
        "attempt": attempt,
        "status": "succeeded" if ok else "failed",
        "output_json": output_json if output_json is not None else ('{"y": 1}' if ok else None),
        "error_kind": error_kind if error_kind is not None else (None if ok else "boom"),
        "error_message": None if ok else "it broke",
        "retryable": True,
        "started_at": 0,
        "finished_at": 0,
        "correlation_id": "c",
        "executor_id": "e",
        "retry_after_ms": retry_after_ms,
    }


def status(run: RunState) -> RunStatus:
    """``run.status`` read through a call: mypy would keep the attribute narrowed by an earlier
    assert across the machine calls that change it."""
    return run.status


def failure(detail: object) -> StepFailureDetail:
    """The detail of a ``step_failed`` / ``step_retrying`` / ``step_timed_out`` event."""
    assert isinstance(detail, dict) and "error_kind" in detail
    return cast(StepFailureDetail, detail)


def test_start_schedules_roots_with_rendered_inputs_and_a_deadline_timer() -> None:
    run = new_run()
    fx = machine.start(run, WF, now_ms=1000)
    assert run.status == RunStatus.RUNNING
    assert [(c.step_id, c.attempt, c.inputs, c.deadline_ms) for c in fx.commands] == [
        ("a", 1, {"x": 7}, 2000)
    ]
    assert fx.timers[0].kind == "deadline" and fx.timers[0].due_ms == 2000 + machine.DEADLINE_GRACE_MS
    assert [e.type for e in fx.events] == ["run_started", "step_scheduled"]


def test_failure_retries_on_a_timer_then_the_run_succeeds() -> None:
    run = new_run()
    machine.start(run, WF, 0)
    fx = machine.on_result(run, WF, result("a", 1, ok=False), now_ms=100, rand=0.5)
    assert [e.type for e in fx.events] == ["step_retrying", "run_retrying"]
    assert fx.timers == [machine.Timer(1100, "r1", "a", 1, "retry")] and not fx.commands
    fx = machine.on_timer(run, WF, fx.timers[0], now_ms=1100, rand=0.5)
    assert [(c.step_id, c.attempt) for c in fx.commands] == [("a", 2)]
    assert run.status == RunStatus.RUNNING
    machine.on_result(run, WF, result("a", 2), 1200, 0.5)
    fx = machine.on_result(run, WF, result("b", 1), 1300, 0.5)
    assert fx.finished and status(run) == RunStatus.SUCCEEDED


def test_exhausted_retries_fail_the_run_with_a_dead_letter() -> None:
    run = new_run()
    machine.start(run, WF, 0)
    machine.on_result(run, WF, result("a", 1, ok=False), 100, 0.0)
    machine.on_timer(run, WF, machine.Timer(1100, "r1", "a", 1, "retry"), 1100, 0.0)
    fx = machine.on_result(run, WF, result("a", 2, ok=False), 1200, 0.0)
    assert run.status == RunStatus.FAILED and fx.finished
    assert fx.dead_letters[0]["error_kind"] == "boom" and fx.dead_letters[0]["attempt"] == 2


@pytest.mark.parametrize(
    ("retry_after_ms", "retry_at"),
    [
        (None, 1100),  # the policy's backoff (1 s)
        (500, 1100),  # sooner than the backoff: the backoff stands
        (29_500, 29_600),  # an open breaker's cooldown: the retry waits for its trial call
        (10**15, 100 + machine.MAX_RETRY_AFTER_MS),  # forged or corrupt: bounded
    ],
)
def test_a_retry_waits_at_least_what_the_executor_asks(retry_after_ms: int | None, retry_at: int) -> None:
    """A ``circuit_open`` attempt retried before its breaker lets a trial through would be refused
    again and spend the step's attempts in milliseconds: the executor says how long to wait."""
    run = new_run()
    machine.start(run, WF, 0)
    failed = result("a", 1, ok=False, error_kind="circuit_open", retry_after_ms=retry_after_ms)
    fx = machine.on_result(run, WF, failed, now_ms=100, rand=0.5)
    assert fx.timers == [machine.Timer(retry_at, "r1", "a", 1, "retry")]
    assert failure(fx.events[0].detail)["retry_at"] == retry_at


def test_deadline_timer_counts_as_a_timeout_and_late_results_are_ignored() -> None:
    run = new_run()
    fx = machine.start(run, WF, 0)
    deadline = fx.timers[0]
    fx = machine.on_timer(run, WF, deadline, deadline.due_ms, 0.0)
    assert fx.events[0].type == "step_timed_out" and failure(fx.events[0].detail)["error_kind"] == "timeout"
    late = machine.on_result(run, WF, result("a", 1), deadline.due_ms + 1, 0.0)
    assert [(e.type, e.detail) for e in late.events] == [("result_ignored", {"reason": "step_retrying"})]
    assert not late.commands


def test_stale_attempt_unknown_step_and_superseded_timers_change_nothing() -> None:
    run = new_run()
    machine.start(run, WF, 0)
    assert machine.on_result(run, WF, result("a", 9), 1, 0.0).events[0].detail == {"reason": "stale_attempt"}
    assert machine.on_result(run, WF, result("zz", 1), 1, 0.0).events[0].detail == {"reason": "unknown_step"}
    assert machine.on_timer(run, WF, machine.Timer(5, "r1", "a", 7, "deadline"), 5, 0.0).events == []


def test_cancel_marks_open_steps_and_is_idempotent() -> None:
    run = new_run()
    machine.start(run, WF, 0)
    fx = machine.cancel(run, "ops", "why")
    assert [e.type for e in fx.events] == ["step_cancelled", "step_cancelled", "run_cancelled"]
    assert machine.cancel(run, "ops", "again").events == []
    assert machine.on_result(run, WF, result("a", 1), 5, 0.0).events[0].detail == {"reason": "run_cancelled"}


def test_snapshot_round_trip() -> None:
    run = new_run()
    machine.start(run, WF, 0)
    machine.on_result(run, WF, result("a", 1), 10, 0.0)
    assert RunState.from_json(run.to_json()) == run


def test_an_output_over_the_run_budget_fails_its_step_without_retry() -> None:
    run = new_run()
    machine.start(run, WF, 0)
    big = '{"blob": "' + "x" * 100 + '"}'
    fx = machine.on_result(run, WF, result("a", 1, output_json=big), 10, 0.0, max_run_output_bytes=100)
    assert [e.type for e in fx.events] == ["step_failed", "run_failed"]
    failed = failure(fx.events[0].detail)
    assert failed["error_kind"] == "run_output_too_large"
    assert failed["retries_exhausted"] is False  # the same action would return the same output
    assert f"output of {len(big)} bytes" in failed["error_message"]
    assert run.steps["a"].output is None and run.steps["a"].output_bytes == 0
    assert [d["error_kind"] for d in fx.dead_letters] == ["run_output_too_large"]
    assert run.status == RunStatus.FAILED


def test_the_budget_counts_every_kept_output_of_the_run() -> None:
    run = new_run()
    machine.start(run, WF, 0)
    first = '{"y": "' + "x" * 50 + '"}'
    machine.on_result(run, WF, result("a", 1, output_json=first), 10, 0.0, max_run_output_bytes=100)
    assert run.steps["a"].output_bytes == len(first)
    second = '{"z": "' + "x" * 50 + '"}'  # fits alone, not on top of a's output
    fx = machine.on_result(run, WF, result("b", 1, output_json=second), 20, 0.0, max_run_output_bytes=100)
    assert failure(fx.events[0].detail)["error_kind"] == "run_output_too_large"
    assert machine.on_result(new_started_run(), WF, result("a", 1, output_json=first), 10, 0.0).events[
        0
    ].type == (
        "step_succeeded"  # no budget given: no limit
    )


def new_started_run() -> RunState:
    run = new_run()
    machine.start(run, WF, 0)
    return run


def test_state_snapshots_keep_non_ascii_text_unescaped_and_round_trip() -> None:
    run = new_started_run()
    machine.on_result(run, WF, result("a", 1, output_json='{"name": "Zoë 東京 🚀"}'), 10, 0.0)
    text = run.to_json()
    assert "Zoë 東京 🚀" in text  # \uXXXX escapes would multiply the record's size
    assert RunState.from_json(text) == run
