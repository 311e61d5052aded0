"""``wait_for``: the pure transitions (wait, match, no match, timeout fail/continue, cancel), the
matcher and the per-partition index of waiting runs."""

from __future__ import annotations

from typing import Any

from services.contracts.vocabulary import ErrorKind, EventType, RunStatus, StepStatus
from services.router import event_waits, machine
from services.router.event_waits import WaitEvent, WaitIndex
from services.router.state import RunState
from services.workflow.compiled import CompiledWorkflow, compile_workflow
from services.workflow.loader import load_definition_text

NOW = 1_000_000


def compiled(
    on_timeout: str = "fail", match: str = "event.data.engagement == trigger.data.engagement"
) -> CompiledWorkflow:
    return compile_workflow(
        load_definition_text(
            f"""
name: wf
version: 1
trigger: {{event: go}}
steps:
  - {{id: signed, wait_for: {{event: doc.signed, match: "{match}", timeout: 60, on_timeout: {on_timeout}}}}}
  - {{id: after, action: noop, needs: [signed]}}
""",
            filename="wf.yaml",
        )
    )


WF = compiled()


def new_run(
    run_id: str = "r1", engagement: str = "e1", wf: CompiledWorkflow = WF, arrival: int = 1
) -> RunState:
    return RunState(
        run_id=run_id,
        tenant="t",
        workflow="wf",
        version=1,
        partition=0,
        correlation_id="c",
        idempotency_key="k",
        trigger={"event": "go", "data": {"engagement": engagement}},
        arrival=arrival,
        created_ms=0,
        steps=machine.new_run_steps(wf),
    )


def event(engagement: str = "e1", source: str = "wf.tenant.t.triggers/0/7", data: Any = None) -> WaitEvent:
    return WaitEvent("doc.signed", data if data is not None else {"engagement": engagement}, "key-1", source)


def started(wf: CompiledWorkflow = WF, **kwargs: Any) -> tuple[RunState, machine.Effects]:
    run = new_run(wf=wf, **kwargs)
    return run, machine.start(run, wf, NOW)


def test_a_wait_for_step_waits_without_a_command_until_its_deadline() -> None:
    run, effects = started()
    rec = run.steps["signed"]
    assert (rec.status, rec.attempt, rec.deadline_ms) == (StepStatus.RUNNING, 1, NOW + 60_000)
    assert effects.commands == []
    [timer] = effects.timers
    assert (timer.kind, timer.due_ms, timer.step_id) == ("deadline", NOW + 60_000, "signed")
    waiting = [e for e in effects.events if e.type == EventType.STEP_WAITING_FOR_EVENT]
    assert waiting[0].detail == {
        "event": "doc.signed",
        "match": "event.data.engagement == trigger.data.engagement",
        "deadline": NOW + 60_000,
    }


def test_a_matching_event_completes_the_step_with_its_data_and_the_run_moves_on() -> None:
    run, _ = started()
    found = event_waits.matching_steps(run, WF, event())
    assert (found.steps, found.errors, found.exhausted) == (["signed"], [], False) and found.cost > 0
    steps = found.steps
    effects = machine.on_event(run, WF, steps, event(), NOW + 5, 0.5, max_run_output_bytes=10_000)
    rec = run.steps["signed"]
    assert rec.status == StepStatus.SUCCEEDED
    assert rec.output == {
        "event": "doc.signed",
        "data": {"engagement": "e1"},
        "key": "key-1",
        "source": "wf.tenant.t.triggers/0/7",
    }
    assert [c.step_id for c in effects.commands] == ["after"]
    assert machine.context(run).step_outputs["signed"]["data"] == {"engagement": "e1"}


def test_an_event_that_does_not_match_leaves_the_step_waiting() -> None:
    run, _ = started()
    assert event_waits.matching_steps(run, WF, event("e2")).steps == []
    other_type = WaitEvent("doc.rejected", {"engagement": "e1"}, "k", "s/0/1")
    assert event_waits.matching_steps(run, WF, other_type) == event_waits.Matches()
    assert run.steps["signed"].status == StepStatus.RUNNING


def test_a_match_that_fails_to_evaluate_keeps_the_step_waiting_and_says_why() -> None:
    run, _ = started()
    found = event_waits.matching_steps(run, WF, event(data={"other": 1}))
    errors = found.errors
    assert found.steps == []
    assert len(errors) == 1 and "step signed: match failed" in errors[0] and "engagement" in errors[0]


def test_timeout_fails_the_step_wait_timed_out_without_retry() -> None:
    run, effects = started()
    [timer] = effects.timers
    out = machine.on_timer(run, WF, timer, timer.due_ms, 0.5)
    rec = run.steps["signed"]
    assert (rec.status, rec.error_kind) == (StepStatus.FAILED, ErrorKind.WAIT_TIMED_OUT)
    assert run.status == RunStatus.FAILED
    assert out.dead_letters[0]["error_kind"] == "wait_timed_out"
    assert not ErrorKind.WAIT_TIMED_OUT.retryable


def test_timeout_with_on_timeout_continue_succeeds_timed_out() -> None:
    wf = compiled("continue")
    run, effects = started(wf)
    [timer] = effects.timers
    out = machine.on_timer(run, wf, timer, timer.due_ms, 0.5)
    assert run.steps["signed"].status == StepStatus.SUCCEEDED
    assert run.steps["signed"].output == {"timed_out": True}
    assert [c.step_id for c in out.commands] == ["after"]


def test_cancel_while_waiting_cancels_the_step_and_its_timer_is_dead() -> None:
    run, effects = started()
    machine.cancel(run, "ops", "no longer needed")
    assert run.steps["signed"].status == StepStatus.CANCELLED
    assert not machine.timer_is_live(run, effects.timers[0])
    assert event_waits.matching_steps(run, WF, event()) == event_waits.Matches()
    assert event_waits.waiting_keys(run, WF) == ()


def test_a_late_event_after_the_step_ended_changes_nothing() -> None:
    run, _ = started()
    machine.on_event(run, WF, ["signed"], event(), NOW, 0.5)
    again = machine.on_event(run, WF, ["signed"], event(source="x/0/9"), NOW, 0.5)
    assert again.events == []


def test_an_output_over_the_run_budget_fails_the_step_not_retried() -> None:
    run, _ = started()
    machine.on_event(run, WF, ["signed"], event(data={"engagement": "e1", "pad": "x" * 500}), NOW, 0.5,
                     max_run_output_bytes=100)  # fmt: skip
    rec = run.steps["signed"]
    assert (rec.status, rec.error_kind) == (StepStatus.FAILED, ErrorKind.RUN_OUTPUT_TOO_LARGE)


def test_one_event_record_is_taken_once_per_run_even_by_a_second_wait() -> None:
    wf = compile_workflow(
        load_definition_text(
            """
name: wf
version: 1
trigger: {event: go}
steps:
  - {id: first, wait_for: {event: doc.signed}}
  - {id: second, needs: [first], wait_for: {event: doc.signed}}
""",
            filename="wf.yaml",
        )
    )
    run, _ = started(wf)
    once = event()
    machine.on_event(run, wf, event_waits.matching_steps(run, wf, once).steps, once, NOW, 0.5)
    assert run.steps["second"].status == StepStatus.RUNNING
    # The same record again (same topic/partition/offset): not a second signature.
    assert event_waits.matching_steps(run, wf, once) == event_waits.Matches()
    other = event(source="wf.tenant.t.triggers/0/8")
    assert event_waits.matching_steps(run, wf, other).steps == ["second"]


def test_matching_stops_when_the_cost_budget_would_be_passed() -> None:
    run, _ = started()
    cost = event_waits.matching_steps(run, WF, event()).cost
    starved = event_waits.matching_steps(run, WF, event(), budget=cost / 2)
    assert starved == event_waits.Matches(exhausted=True)
    assert event_waits.matching_steps(run, WF, event(), budget=cost).steps == ["signed"]


def test_the_index_follows_runs_and_keeps_the_order_they_started_waiting() -> None:
    index = WaitIndex()
    runs = [started(run_id=f"r{i}", arrival=i)[0] for i in range(3)]
    for run in runs:
        index.sync(run, WF)
    assert index.candidates("t", "doc.signed", 10) == (["r0", "r1", "r2"], 0)
    assert index.candidates("t", "doc.signed", 2) == (["r0", "r1"], 1)
    assert index.candidates("other", "doc.signed", 10) == ([], 0)
    machine.on_event(runs[1], WF, ["signed"], event(), NOW, 0.5)
    index.sync(runs[1], WF)
    assert index.candidates("t", "doc.signed", 10) == (["r0", "r2"], 0)
    index.drop("r0")
    assert list(index.of_run) == ["r2"] and len(index) == 1
    index.drop("r2")
    assert index.by_event == {} and index.of_run == {}


def test_the_index_is_rebuilt_from_runs_in_arrival_order() -> None:
    runs = [started(run_id=f"r{i}", arrival=10 - i)[0] for i in range(3)]
    done = started(run_id="done", arrival=0)[0]
    machine.cancel(done, "ops", "x")
    index = WaitIndex()
    index.rebuild([*runs, done], lambda run: WF)
    assert index.candidates("t", "doc.signed", 10) == (["r2", "r1", "r0"], 0)
    assert "done" not in index.of_run


def test_the_event_types_waited_for_by_definitions() -> None:
    plain = compile_workflow(
        load_definition_text(
            "{name: p, version: 1, trigger: {event: go}, steps: [{id: a, action: noop}]}", filename="p.yaml"
        )
    )
    assert event_waits.waited_event_types([plain, WF]) == frozenset({"doc.signed"})
    assert event_waits.waited_event_types([plain]) == frozenset()


def test_an_executor_result_for_a_wait_for_step_is_ignored() -> None:
    run, _ = started()
    result: Any = {
        "run_id": "r1", "tenant": "t", "step_id": "signed", "attempt": 1, "status": "succeeded",
        "output_json": '{"forged": true}', "error_kind": None, "error_message": None, "retryable": False,
        "started_at": 0, "finished_at": 0, "correlation_id": "c", "executor_id": "e", "retry_after_ms": None,
    }  # fmt: skip
    effects = machine.on_result(run, WF, result, NOW, 0.5)
    assert [(e.type, e.detail) for e in effects.events] == [("result_ignored", {"reason": "not_an_action"})]
    assert run.steps["signed"].status == StepStatus.RUNNING


def test_a_replayed_wait_waits_again_with_a_new_deadline() -> None:
    run, effects = started()
    machine.on_timer(run, WF, effects.timers[0], NOW + 60_000, 0.5)
    assert run.status == RunStatus.FAILED
    command: Any = {"command_id": "c1", "kind": "replay_run", "requester": "ops", "reason": "again"}
    machine.replay(run, machine.steps_to_replay(run, WF, "replay_run", None), command)
    again = machine.start(run, WF, NOW + 100_000)
    rec = run.steps["signed"]
    assert (rec.status, rec.attempt, rec.deadline_ms) == (StepStatus.RUNNING, 2, NOW + 160_000)
    assert [t.due_ms for t in again.timers] == [NOW + 160_000]
