"""Hostile input against the steps the router runs itself, generated (hypothesis), not hand-picked.

* a tenant's definition: any mix of kind fields with any JSON values is either refused with a
  :class:`DefinitionError` (problems listed) or compiles — never another exception;
* a tenant's events: any JSON data, type, key against ``wait_for`` matches over ``event`` and the
  run never raise out of the matcher or the delivery, and what a match keeps stays inside the run's
  output budget;
* an operator's approval decision: any decision and comment text is applied or refused with a
  ``control_refused`` reason, never an exception.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.contracts.records import ControlCommand
from services.contracts.vocabulary import EventType, StepStatus
from services.router import event_waits, machine
from services.router.event_waits import WaitEvent
from services.router.state import RunState
from services.workflow.compiled import CompiledWorkflow, compile_workflow
from services.workflow.loader import load_definition_text
from services.workflow.problems import DefinitionError
from services.workflow.validation import validate_definition_data

NOW = 1_000_000
BUDGET = 4_000

json_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
)
json_values = st.recursive(
    json_leaves,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)
spec_values = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {},
        optional={
            "duration": json_values,
            "until": st.sampled_from(["trigger.data.at", "timestamp('2026-12-01T00:00:00Z')", "1 +", "x"]),
            "event": st.sampled_from(["doc.signed", "", "a" * 300, "ok.event"]),
            "match": st.sampled_from(["event.data.a == trigger.data.a", "event.data.a.b.c", "(", "steps.x"]),
            "timeout": json_values,
            "on_timeout": st.sampled_from(["fail", "continue", "explode"]),
            "on_reject": st.sampled_from(["fail", "continue", 3]),
            "prompt": st.text(max_size=3000),
            "name": st.sampled_from(["child", "wf", "BAD NAME", ""]),
            "version": json_values,
            "inputs": json_values,
            "retry_failed": json_values,
        },
    ),
)
kind_fields = st.fixed_dictionaries(
    {"id": st.sampled_from(["a", "b", "step", "in", "x" * 70])},
    optional={
        "action": st.sampled_from(["echo", "noop", "Bad Action"]),
        "wait": spec_values,
        "wait_for": spec_values,
        "approval": spec_values,
        "workflow": spec_values,
        "inputs": json_values,
        "timeout": json_values,
        "retry": json_values,
        "needs": st.lists(st.sampled_from(["a", "b", "zz"]), max_size=2),
    },
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(kind_fields, min_size=1, max_size=3))
def test_any_mix_of_step_kinds_is_refused_with_problems_or_compiles(steps: list[dict[str, Any]]) -> None:
    data = {"name": "wf", "version": 1, "trigger": {"event": "go"}, "steps": steps}
    try:
        definition = validate_definition_data(data, file="fuzz.yaml")
    except DefinitionError as exc:
        assert exc.problems, "a refusal names its problems"
        return
    compile_workflow(definition)  # what validation let through compiles


def _workflow(match: str) -> CompiledWorkflow:
    return compile_workflow(
        load_definition_text(
            "name: wf\nversion: 1\ntrigger: {event: go}\nsteps:\n"
            f"  - {{id: signed, wait_for: {{event: doc.signed, match: {match!r}, timeout: 60}}}}\n"
            "  - {id: after, action: noop, needs: [signed]}\n",
            filename="wf.yaml",
        )
    )


MATCHES = [
    _workflow(m)
    for m in (
        "event.data.engagement == trigger.data.engagement",
        "event.data.items.exists(i, i == trigger.data.engagement)",
        "size(event.data.note) > 3 && event.key.startsWith('k')",
        "event.data.amount > 100.0",
    )
]


def _run(workflow: CompiledWorkflow, data: Any) -> RunState:
    run = RunState(
        run_id="r1",
        tenant="t",
        workflow="wf",
        version=1,
        partition=0,
        correlation_id="c",
        idempotency_key="k",
        trigger={"event": "go", "data": data},
        arrival=1,
        created_ms=0,
        steps=machine.new_run_steps(workflow),
    )
    machine.start(run, workflow, NOW)
    return run


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(MATCHES),
    json_values,
    json_values,
    st.text(max_size=50),
)
def test_any_event_data_is_matched_or_not_and_never_breaks_the_budget(
    workflow: CompiledWorkflow, trigger_data: Any, event_data: Any, key: str
) -> None:
    run = _run(workflow, trigger_data)
    event = WaitEvent("doc.signed", event_data, key, "wf.tenant.t.triggers/0/1")
    found = event_waits.matching_steps(run, workflow, event)
    assert found.steps in ([], ["signed"])
    if not found.steps:
        assert run.steps["signed"].status == StepStatus.RUNNING
        return
    machine.on_event(run, workflow, found.steps, event, NOW + 1, 0.5, max_run_output_bytes=BUDGET)
    rec = run.steps["signed"]
    assert rec.status in (StepStatus.SUCCEEDED, StepStatus.FAILED)
    assert sum(r.output_bytes for r in run.steps.values()) <= BUDGET


def _approval_run() -> tuple[RunState, CompiledWorkflow]:
    workflow = compile_workflow(
        load_definition_text(
            "name: wf\nversion: 1\ntrigger: {event: go}\nsteps:\n"
            "  - {id: sign_off, approval: {prompt: 'Go?', timeout: 60}}\n",
            filename="wf.yaml",
        )
    )
    return _run(workflow, {}), workflow


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=40), st.text(max_size=2500), st.sampled_from(["sign_off", "other", ""]))
def test_any_approval_decision_is_applied_or_refused_with_a_reason(
    decision: str, comment: str, step_id: str
) -> None:
    run, workflow = _approval_run()
    command: ControlCommand = {
        "command_id": "c1",
        "kind": "approve",
        "requester": "ops@acme",
        "tenant": "t",
        "run_id": "r1",
        "step_id": step_id,
        "reason": "fuzz",
        "correlation_id": "corr",
        "issued_at": NOW,
        "filter_json": None,
        "dry_run": False,
        "key_id": None,
        "signature": None,
        "on_behalf_of": None,
        "decision": decision,
        "comment": comment,
    }
    effects = machine.decide(run, workflow, command, NOW + 1)
    types = [e.type for e in effects.events]
    applied = decision in ("approve", "reject") and step_id == "sign_off"
    if applied:
        assert types[0] == EventType.CONTROL_ACCEPTED
        assert run.steps["sign_off"].status in (StepStatus.SUCCEEDED, StepStatus.FAILED)
    else:
        assert types == [EventType.CONTROL_REFUSED]
        assert run.steps["sign_off"].status == StepStatus.RUNNING
