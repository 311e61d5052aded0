"""A run's firm context in the state machine: read first, kept, bounded, never re-read by a replay."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, cast

import pytest

from services.contracts.records import ControlCommand, StepResult
from services.router import machine
from services.router.event_details import StepFailureDetail
from services.router.history import StoredRun, StoredStep
from services.router.rehydrate import rehydrate
from services.router.state import RunState, RunStatus
from services.workflow.compiled import compile_workflow
from services.workflow.loader import load_definition_text

WF = compile_workflow(
    load_definition_text(
        """
name: wf
version: 1
trigger: {event: go}
scopes: [firm_data:read]
context:
  client: {action: firm.get_record, inputs: {record_type: client, id: "${{ trigger.data.id }}"}}
steps:
  - {id: a, action: echo, inputs: {name: "${{ context.client.name }}"}}
  - {id: b, action: fail, needs: [a], inputs: {retryable: false}}
""",
        filename="wf.yaml",
    )
)


def failure(detail: object) -> StepFailureDetail:
    assert isinstance(detail, dict) and "error_kind" in detail
    return cast(StepFailureDetail, detail)


def new_run() -> RunState:
    return RunState(
        run_id="r1",
        tenant="t",
        workflow="wf",
        version=1,
        partition=0,
        correlation_id="c",
        idempotency_key="k",
        trigger={"event": "go", "data": {"id": "c-1"}},
        arrival=1,
        created_ms=0,
        steps=machine.new_run_steps(WF),
    )


def result(step: str, attempt: int, output: Any = None, *, error_kind: str | None = None) -> StepResult:
    ok = error_kind is None
    return {
        "run_id": "r1",
        "tenant": "t",
        "step_id": step,
        "attempt": attempt,
        "status": "succeeded" if ok else "failed",
        "output_json": json.dumps(output) if ok else None,
        "error_kind": error_kind,
        "error_message": None if ok else "no client c-1",
        "retryable": False,
        "started_at": 0,
        "finished_at": 0,
        "correlation_id": "c",
        "executor_id": "e",
        "retry_after_ms": None,
    }


def replay_command(step: str | None) -> ControlCommand:
    return {
        "command_id": "cmd-1",
        "kind": "replay_run",
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


def test_the_context_is_read_first_and_steps_see_it_as_context() -> None:
    run = new_run()
    fx = machine.start(run, WF, 0)
    assert [(c.step_id, c.action, c.inputs) for c in fx.commands] == [
        ("context.client", "firm.get_record", {"record_type": "client", "id": "c-1"})
    ]
    assert fx.events[1].detail is not None and fx.events[1].step_id == "context.client"  # in history
    fx = machine.on_result(run, WF, result("context.client", 1, {"name": "Ada"}), 10, 0.0)
    assert [(c.step_id, c.inputs) for c in fx.commands] == [("a", {"name": "Ada"})]
    assert machine.context(run).context == {"client": {"name": "Ada"}}
    assert "context.client" not in machine.context(run).step_outputs


def test_a_failing_context_read_fails_the_run_naming_it() -> None:
    run = new_run()
    machine.start(run, WF, 0)
    fx = machine.on_result(run, WF, result("context.client", 1, error_kind="not_found"), 10, 0.0)
    assert run.status == RunStatus.FAILED and not fx.commands
    end = fx.events[-1]
    assert end.type == "run_failed"
    assert cast(object, end.detail) == {
        "step_id": "context.client",
        "error_kind": "not_found",
        "error_message": "no client c-1",
    }


def test_the_context_has_its_own_bound_and_counts_toward_the_run_budget() -> None:
    run = new_run()
    machine.start(run, WF, 0)
    big = {"name": "x" * 2000}
    fx = machine.on_result(run, WF, result("context.client", 1, big), 10, 0.0, max_context_bytes=1024)
    failed = failure(fx.events[0].detail)
    assert failed["error_kind"] == "context_too_large"
    assert "SWITCHYARD_MAX_CONTEXT_BYTES (1024)" in failed["error_message"]
    assert run.status == RunStatus.FAILED
    run = new_run()
    machine.start(run, WF, 0)
    machine.on_result(run, WF, result("context.client", 1, big), 10, 0.0, max_context_bytes=4096)
    assert run.steps["context.client"].output_bytes > 2000  # kept, counted like any output
    fx = machine.on_result(run, WF, result("a", 1, big), 20, 0.0, max_run_output_bytes=4000)
    assert failure(fx.events[0].detail)["error_kind"] == "run_output_too_large"


def finished_with_b_failed() -> RunState:
    run = new_run()
    machine.start(run, WF, 0)
    machine.on_result(run, WF, result("context.client", 1, {"name": "Ada"}), 10, 0.0)
    machine.on_result(run, WF, result("a", 1, {"name": "Ada"}), 20, 0.0)
    machine.on_result(run, WF, result("b", 1, error_kind="boom"), 30, 0.0)
    assert run.status == RunStatus.FAILED
    return run


@pytest.mark.parametrize("from_step", [None, "a"])
def test_a_replay_keeps_the_context_it_read(from_step: str | None) -> None:
    run = finished_with_b_failed()
    steps = machine.steps_to_replay(run, WF, "replay_run", from_step)
    assert "context.client" not in steps
    machine.replay(run, steps, replay_command(from_step))
    fx = machine.start(run, WF, 100)
    assert [c.step_id for c in fx.commands] == [from_step or "b"]  # no new read
    assert machine.context(run).context == {"client": {"name": "Ada"}}
    # A snapshot (the changelog, a restart) keeps it too.
    assert RunState.from_json(run.to_json()).steps["context.client"].output == {"name": "Ada"}


def test_a_replay_from_a_context_read_that_succeeded_is_refused() -> None:
    run = finished_with_b_failed()
    with pytest.raises(ValueError, match=r"context\.client is the run.s context, read once"):
        machine.steps_to_replay(run, WF, "replay_step", "context.client")
    with pytest.raises(ValueError, match="a replay keeps what it read"):
        machine.steps_to_replay(run, WF, "replay_run", "context.client")


def test_a_context_read_that_failed_is_read_again_by_a_replay() -> None:
    run = new_run()
    machine.start(run, WF, 0)
    machine.on_result(run, WF, result("context.client", 1, error_kind="not_found"), 10, 0.0)
    steps = machine.steps_to_replay(run, WF, "replay_run", None)
    assert steps == ["context.client"]
    machine.replay(run, steps, replay_command(None))
    assert [(c.step_id, c.attempt) for c in machine.start(run, WF, 100).commands] == [("context.client", 2)]


def test_a_run_read_back_from_its_history_keeps_its_context_for_the_replay() -> None:
    """A run that left router memory (or succeeded: no replay state) is rebuilt from PostgreSQL,
    where the projector keeps the hidden context step like any step, output included."""
    stored = StoredRun(
        run_id="r1",
        tenant="t",
        workflow="wf",
        version=1,
        state="succeeded",
        correlation_id="c",
        idempotency_key="k",
        event_type="go",
        trigger_data={"id": "c-1"},
        trigger_omitted=False,
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
        last_seq=9,
        replays=0,
        steps=(
            StoredStep("context.client", "succeeded", 1, {"name": "Ada"}, None, None),
            StoredStep("a", "succeeded", 1, {"name": "Ada"}, None, None),
            StoredStep("b", "succeeded", 1, {}, None, None),
        ),
    )
    run = rehydrate(stored, WF, partition=0, arrival=1, now_ms=5)
    steps = machine.steps_to_replay(run, WF, "replay_run", "a")
    assert steps == ["a", "b"]
    machine.replay(run, steps, replay_command("a"))
    fx = machine.start(run, WF, 100)
    assert [(c.step_id, c.inputs) for c in fx.commands] == [("a", {"name": "Ada"})]
