"""Sub-workflows: the machine's start / outcome / cancel of a `workflow:` step, and the cores'
exchange of child requests, outcomes and cancels through the inbox (one partition, fed back)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from services.contracts import serde
from services.contracts.records import StepResult
from services.router import machine, subworkflows
from services.router.state import RunState
from services.router.subworkflows import ChildCancel, ChildStart
from tests.unit.router.fakes import TENANT, TOPICS, Harness, workflow

CHILD = workflow(
    """
name: child
version: 1
trigger: {event: child.go}
steps:
  - {id: a, action: echo, inputs: {n: "${{ trigger.data.n }}"}}
"""
)
CHILD_V2 = workflow("name: child\nversion: 2\ntrigger: {event: child.go}\nsteps: [{id: b, action: echo}]\n")
PARENT = workflow(
    """
name: parent
version: 1
trigger: {event: go}
steps:
  - {id: call, workflow: {name: child, version: 1, inputs: {n: "${{ trigger.data.n }}"}, timeout: 60}}
  - {id: after, action: echo, needs: [call], inputs: {got: "${{ steps.call.output.outputs.a }}"}}
"""
)
RETRYING_PARENT = workflow(
    """
name: retrying-parent
version: 1
trigger: {event: go}
steps:
  - {id: call, workflow: {name: child, inputs: {n: 1}, timeout: 10, retry_failed: true},
     retry: {max_attempts: 2, initial_backoff: 1, max_backoff: 1, jitter: 0}}
"""
)
# parent -> middle -> child: the middle one's child is at depth 2.
GRANDPARENT = workflow(
    """
name: grandparent
version: 1
trigger: {event: go}
steps:
  - {id: call, workflow: {name: middle}}
"""
)
MIDDLE = workflow(
    """
name: middle
version: 1
trigger: {event: middle.go}
steps:
  - {id: call, workflow: {name: child, inputs: {n: 2}}}
"""
)
NOW = 1_000_000


def parent_run(wf: Any = PARENT, data: Any = None) -> RunState:
    return RunState(
        run_id="p1",
        tenant=TENANT,
        workflow=wf.name,
        version=wf.version,
        partition=0,
        correlation_id="c",
        idempotency_key="k",
        trigger={"event": "go", "data": data if data is not None else {"n": 7}},
        arrival=1,
        created_ms=0,
        steps=machine.new_run_steps(wf),
    )


def outcome(kind: str | None, attempt: int = 1, output: Any = None) -> StepResult:
    return {
        "run_id": "p1",
        "tenant": TENANT,
        "step_id": "call",
        "attempt": attempt,
        "status": "succeeded" if kind is None else "failed",
        "output_json": json.dumps(output) if kind is None else None,
        "error_kind": kind,
        "error_message": None if kind is None else "child run x failed",
        "retryable": False,
        "started_at": 0,
        "finished_at": 1,
        "correlation_id": "c",
        "executor_id": subworkflows.EXECUTOR_ID,
        "retry_after_ms": None,
    }


# --- the machine -----------------------------------------------------------------------------------


def test_start_emits_the_child_request_and_no_command() -> None:
    run = parent_run()
    effects = machine.start(run, PARENT, NOW)
    assert effects.commands == []
    (start,) = effects.children
    assert isinstance(start, ChildStart)
    assert start == ChildStart("call", 1, subworkflows.child_run_id("p1", "call", 1), "child", 1, {"n": 7}, 1)
    rec = run.steps["call"]
    assert (rec.status, rec.deadline_ms, rec.child) == ("running", NOW + 60_000, start.run_id)
    (timer,) = effects.timers
    assert (timer.kind, timer.due_ms) == ("deadline", NOW + 60_000)
    scheduled = next(e for e in effects.events if e.type == "step_scheduled")
    assert scheduled.detail is not None and scheduled.detail["child_run_id"] == start.run_id  # type: ignore[typeddict-item]


def test_child_run_ids_are_per_attempt_and_deterministic() -> None:
    first = subworkflows.child_run_id("p1", "call", 1)
    assert first == subworkflows.child_run_id("p1", "call", 1)
    assert (
        len({first, subworkflows.child_run_id("p1", "call", 2), subworkflows.child_run_id("p2", "call", 1)})
        == 3
    )


def test_child_success_is_the_step_output_and_the_run_goes_on() -> None:
    run = parent_run()
    machine.start(run, PARENT, NOW)
    output = {"run_id": "x", "status": "succeeded", "outputs": {"a": {"n": 7}}}
    effects = machine.on_result(run, PARENT, outcome(None, output=output), NOW + 5, 0.5)
    assert run.steps["call"].status == "succeeded"
    (command,) = effects.commands
    assert (command.step_id, command.inputs) == ("after", {"got": {"n": 7}})


@pytest.mark.parametrize(
    "kind", ["child_failed", "child_cancelled", "child_unavailable", "subworkflow_too_deep"]
)
def test_child_failure_fails_the_step_without_retry_by_default(kind: str) -> None:
    run = parent_run()
    machine.start(run, PARENT, NOW)
    effects = machine.on_result(run, PARENT, outcome(kind), NOW + 5, 0.5)
    assert run.steps["call"].status == "failed" and run.steps["call"].error_kind == kind
    assert run.status == "failed"
    assert [d["error_kind"] for d in effects.dead_letters] == [kind]


def test_retry_failed_starts_a_new_child_for_a_failed_one_but_not_for_a_cancelled_one() -> None:
    run = parent_run(RETRYING_PARENT)
    machine.start(run, RETRYING_PARENT, NOW)
    machine.on_result(run, RETRYING_PARENT, outcome("child_failed"), NOW + 5, 0.5)
    assert run.steps["call"].status == "retrying"
    retry = machine.Timer(NOW + 1005, "p1", "call", 1, "retry")
    effects = machine.on_timer(run, RETRYING_PARENT, retry, NOW + 1005, 0.5)
    (start,) = effects.children
    assert isinstance(start, ChildStart) and start.attempt == 2 and start.version is None
    assert start.run_id == subworkflows.child_run_id("p1", "call", 2) == run.steps["call"].child
    machine.on_result(run, RETRYING_PARENT, outcome("child_cancelled", attempt=2), NOW + 2000, 0.5)
    assert run.steps["call"].status == "failed"


def test_the_steps_timeout_cancels_the_child() -> None:
    run = parent_run()
    machine.start(run, PARENT, NOW)
    child = run.steps["call"].child
    deadline = machine.Timer(NOW + 60_000, "p1", "call", 1, "deadline")
    effects = machine.on_timer(run, PARENT, deadline, NOW + 60_000, 0.5)
    assert effects.children == [ChildCancel("call", 1, str(child), "the parent's step call timed out")]
    assert [e.type for e in effects.events][:1] == ["step_timed_out"]
    assert run.steps["call"].error_kind == "timeout" and run.status == "failed"


def test_cancelling_the_parent_cancels_a_running_child_only() -> None:
    run = parent_run()
    machine.start(run, PARENT, NOW)
    effects = machine.cancel(run, "ops@acme", "stop")
    (cancel,) = effects.children
    assert isinstance(cancel, ChildCancel) and cancel.run_id == run.steps["call"].child
    assert "ops@acme" in cancel.reason
    assert machine.cancel(run, "ops@acme", "again").children == []  # finished: nothing more


def test_a_child_outcome_carries_its_steps_outputs_or_why_it_failed() -> None:
    child = parent_run(CHILD)
    child.parent = {"run_id": "p1", "step_id": "call", "attempt": 3, "partition": 0, "depth": 1}
    assert subworkflows.outcome(child, NOW) is None  # not over yet
    machine.start(child, CHILD, NOW)
    child_step = machine.on_result(
        child, CHILD, {**outcome(None, output={"n": 1}), "run_id": child.run_id, "step_id": "a"}, NOW, 0.5
    )
    assert child_step.finished
    result = subworkflows.outcome(child, NOW + 9)
    assert result is not None
    assert (result["run_id"], result["step_id"], result["attempt"], result["status"]) == (
        "p1",
        "call",
        3,
        "succeeded",
    )
    assert json.loads(str(result["output_json"]))["outputs"] == {"a": {"n": 1}}
    failed = parent_run(CHILD)
    failed.parent = child.parent
    machine.start(failed, CHILD, NOW)
    machine.on_result(failed, CHILD, {**outcome("boom"), "run_id": failed.run_id, "step_id": "a"}, NOW, 0.5)
    result = subworkflows.outcome(failed, NOW)
    assert result is not None and result["error_kind"] == "child_failed"
    assert "step a: boom" in str(result["error_message"])


# --- two cores through the inbox ------------------------------------------------------------------------


class Engine:
    """A harness whose inbox records (child requests, outcomes, cancels) are fed back to it."""

    def __init__(self, *workflows: Any, **settings: Any) -> None:
        self.h = Harness(*workflows, **settings)
        self.seen = 0

    def pump(self) -> int:
        """Feed the inbox records the core wrote since the last pump; how many."""
        fresh = self.h.out.on(TOPICS.inbox)[self.seen :]
        self.seen += len(fresh)
        if fresh:
            self.h.feed(*[s.value for s in fresh])
        return len(fresh)

    def settle(self) -> None:
        while self.pump():
            pass

    def runs(self) -> dict[str, RunState]:
        return dict(self.h.state.runs)

    def run_of(self, name: str) -> RunState:
        return next(r for r in self.runs().values() if r.workflow == name)

    def complete(self, run: RunState, step: str, output: Any) -> None:
        self.h.feed(self.h.result(run.run_id, step, run.steps[step].attempt, output_json=json.dumps(output)))
        self.settle()


def test_a_parent_runs_a_child_and_goes_on_with_its_outputs() -> None:
    e = Engine(PARENT, CHILD)
    parent_id = e.h.start("k1", {"n": 5}, wf=PARENT)
    request = serde.decode_inbox(e.h.out.on(TOPICS.inbox)[-1].value)[1]
    assert request["parent"] == {
        "run_id": parent_id,
        "step_id": "call",
        "attempt": 1,
        "partition": 0,
        "depth": 1,
    }
    e.settle()
    child = e.run_of("child")
    assert child.run_id == subworkflows.child_run_id(parent_id, "call", 1)
    assert child.trigger == {"event": "child.go", "data": {"n": 5}}
    pending = e.h.out.events(child.run_id)[0]
    assert pending["detail"]["parent"]["run_id"] == parent_id
    assert [c["inputs_json"] for c in e.h.out.commands(child.run_id)] == ['{"n":5}']
    e.complete(child, "a", {"n": 5, "echo": True})
    assert e.h.state.runs[child.run_id].status == "succeeded"
    parent = e.h.state.runs[parent_id]
    assert parent.steps["call"].status == "succeeded"
    assert parent.steps["call"].output["outputs"] == {"a": {"n": 5, "echo": True}}
    assert parent.steps["call"].output["version"] == 1
    (after,) = e.h.out.commands(parent_id)
    assert json.loads(after["inputs_json"]) == {"got": {"n": 5, "echo": True}}
    succeeded = [ev for ev in e.h.out.events(parent_id) if ev["type"] == "step_succeeded"]
    assert succeeded[0]["detail"]["executor_id"] == "router:child"


def test_a_failing_child_fails_the_parent_step() -> None:
    e = Engine(PARENT, CHILD)
    parent_id = e.h.start("k1", {"n": 5}, wf=PARENT)
    e.settle()
    child = e.run_of("child")
    e.h.feed(e.h.result(child.run_id, "a", ok=False))
    e.settle()
    parent = e.h.state.runs[parent_id]
    assert parent.status == "failed"
    assert parent.steps["call"].error_kind == "child_failed"
    assert f"child run {child.run_id} (child v1) failed: step a: boom" in str(
        parent.steps["call"].error_message
    )


def test_an_unpinned_child_runs_the_latest_version_and_an_unknown_one_fails_the_step() -> None:
    e = Engine(GRANDPARENT, MIDDLE, CHILD, CHILD_V2)
    e.h.start("k1", wf=GRANDPARENT)
    e.settle()
    assert e.run_of("child").version == 2
    lonely = Engine(GRANDPARENT, CHILD)  # no `middle` published
    run_id = lonely.h.start("k1", wf=GRANDPARENT)
    lonely.settle()
    run = lonely.h.state.runs[run_id]
    assert run.status == "failed" and run.steps["call"].error_kind == "child_unavailable"
    assert "no published, trusted workflow 'middle'" in str(run.steps["call"].error_message)
    assert set(lonely.runs()) == {run_id}


def test_a_child_past_the_depth_bound_fails_its_parents_step() -> None:
    e = Engine(GRANDPARENT, MIDDLE, CHILD, max_subworkflow_depth=1)
    top = e.h.start("k1", wf=GRANDPARENT)
    e.settle()
    middle = e.run_of("middle")
    assert middle.status == "failed" and middle.steps["call"].error_kind == "subworkflow_too_deep"
    assert "nested 2 deep; the limit is 1" in str(middle.steps["call"].error_message)
    assert not [r for r in e.runs().values() if r.workflow == "child"]
    assert e.h.state.runs[top].steps["call"].error_kind == "child_failed"  # the failure goes up


def test_cancelling_the_parent_cancels_the_child() -> None:
    e = Engine(PARENT, CHILD)
    parent_id = e.h.start("k1", {"n": 5}, wf=PARENT)
    e.settle()
    child_id = e.run_of("child").run_id
    e.h.feed(e.h.control("cancel", parent_id))
    e.settle()
    assert e.h.state.runs[parent_id].status == "cancelled"
    assert e.h.state.runs[child_id].status == "cancelled"
    cancelled = next(ev for ev in e.h.out.events(child_id) if ev["type"] == "run_cancelled")
    assert cancelled["detail"]["requester"] == f"parent:{parent_id}"
    ignored = [ev for ev in e.h.out.events(parent_id) if ev["type"] == "result_ignored"]
    assert [ev["detail"]["reason"] for ev in ignored] == ["run_cancelled"]  # the child's late outcome


def test_a_retried_transaction_starts_the_same_child_once() -> None:
    e = Engine(PARENT, CHILD)
    parent_id = e.h.start("k1", {"n": 5}, wf=PARENT)
    request = e.h.out.on(TOPICS.inbox)[-1].value
    e.settle()
    e.h.feed(request)  # the same request again (as a transaction retried after an abort would write it)
    assert [r.workflow for r in e.runs().values()].count("child") == 1
    assert e.h.state.runs[parent_id].steps["call"].status == "running"


def test_child_inputs_larger_than_a_trigger_fail_the_step() -> None:
    e = Engine(PARENT, CHILD, max_trigger_bytes=1024)
    parent_id = e.h.start("k1", {"n": "x" * 2000}, wf=PARENT)
    e.settle()
    call = e.h.state.runs[parent_id].steps["call"]
    assert call.error_kind == "invalid_input" and "SWITCHYARD_MAX_TRIGGER_BYTES" in str(call.error_message)
    assert set(e.runs()) == {parent_id}


def test_a_tenant_with_a_full_queue_gets_no_more_children_and_the_step_retries() -> None:
    fan_out = workflow(
        """
name: fan
version: 1
trigger: {event: go}
steps:
  - {id: one, workflow: {name: child, inputs: {n: 1}}}
  - {id: two, workflow: {name: child, inputs: {n: 2}},
     retry: {max_attempts: 2, initial_backoff: 1, max_backoff: 1, jitter: 0}}
"""
    )
    e = Engine(fan_out, CHILD, max_concurrent_runs=1)
    e.h.tenants.configs[TENANT] = e.h.tenants.configs[TENANT].model_copy(update={"max_pending_runs": 1})
    fan = e.h.start("k1", wf=fan_out)
    e.settle()  # `one` is pending behind `fan` (one slot); `two` finds the queue full
    run = e.h.state.runs[fan]
    assert run.steps["two"].status == "retrying" and run.steps["two"].error_kind == "child_throttled"
    assert [r.workflow for r in e.runs().values()].count("child") == 1


def test_parent_and_child_links_survive_the_state_record() -> None:
    run = parent_run()
    machine.start(run, PARENT, NOW)
    run.parent = {"run_id": "grand", "step_id": "s", "attempt": 2, "partition": 3, "depth": 1}
    again = RunState.from_json(run.to_json())
    assert again == run
    assert again.steps["call"].child == subworkflows.child_run_id("p1", "call", 1)
    assert subworkflows.depth(again) == 1 and subworkflows.depth(parent_run()) == 0
