"""`workflow:` steps in definitions: their shape, their inputs, and what validation refuses."""

from __future__ import annotations

import pytest

from services.workflow import DefinitionError, Problem, load_definition_text
from services.workflow.models import MAX_WAIT_SECONDS, SUBWORKFLOW_TIMEOUT_SECONDS


def problems_of(steps: str, name: str = "parent") -> list[Problem]:
    with pytest.raises(DefinitionError) as info:
        load_definition_text(f"name: {name}\nversion: 1\ntrigger: {{event: go}}\nsteps:\n{steps}", "wf.yaml")
    return list(info.value.problems)


def test_a_workflow_step_has_its_kind_defaults_and_compiled_inputs() -> None:
    defn = load_definition_text(
        "name: parent\nversion: 1\ntrigger: {event: go}\nsteps:\n"
        '  - {id: call, workflow: {name: child, inputs: {n: "${{ trigger.data.n }}"}}}\n'
        "  - {id: b, action: echo, needs: [call]}\n",
        "wf.yaml",
    )
    call = defn.step("call")
    assert (call.kind, call.action) == ("workflow", None)
    assert call.workflow is not None
    assert (call.workflow.version, call.workflow.timeout, call.workflow.retry_failed) == (
        None,
        SUBWORKFLOW_TIMEOUT_SECONDS,
        False,
    )
    assert defn.step("b").kind == "action"


@pytest.mark.parametrize(
    ("step", "where", "says"),
    [
        ("{id: a, action: echo, workflow: {name: c}}", "steps[0]", "exactly one of action, wait"),
        ("{id: a}", "steps[0]", "exactly one of action, wait"),
        ("{id: a, workflow: {name: c}, inputs: {x: 1}}", "steps[0]", "go under `workflow.inputs`"),
        ("{id: a, workflow: {name: c}, timeout: 5}", "steps[0]", "goes under `workflow.timeout`"),
        (
            f"{{id: a, workflow: {{name: c, timeout: {MAX_WAIT_SECONDS + 1}}}}}",
            "steps[0].workflow.timeout",
            "",
        ),
        ("{id: a, workflow: {name: c, version: 0}}", "steps[0].workflow.version", ""),
        ("{id: a, workflow: {name: Not_A_Name}}", "steps[0].workflow.name", "does not match"),
        ("{id: a, workflow: {name: c, input: {}}}", "steps[0].workflow.input", "did you mean 'inputs'"),
        ("{id: a, workflow: {name: parent}}", "steps[0].workflow.name", "calls itself"),
        (
            '{id: a, workflow: {name: c, inputs: {t: "${{ secrets.TOKEN }}"}}}',
            "steps[0].workflow.inputs",
            "cannot reference secrets (TOKEN)",
        ),
        (
            '{id: a, workflow: {name: c, inputs: {t: "${{ steps.b.output }}"}}}',
            "steps[0].workflow.inputs.t",
            "unknown step",
        ),
    ],
)
def test_what_validation_refuses(step: str, where: str, says: str) -> None:
    problems = problems_of(f"  - {step}\n")
    assert any(p.path == where and says in p.message for p in problems), problems
