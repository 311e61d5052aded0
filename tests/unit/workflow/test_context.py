"""The definition's ``context:`` block: validation, the hidden steps it compiles into, the CEL variable."""

from __future__ import annotations

import pytest

from services.contracts.vocabulary import StepStatus
from services.workflow import BUILTIN_ACTIONS, DefinitionError, Problem, load_definition_text
from services.workflow.compiled import compile_workflow
from services.workflow.expressions import EvalContext, ExpressionError, compile_expression
from services.workflow.models import MAX_CONTEXT_ENTRIES, WorkflowDefinition, to_json_value
from services.workflow.signing import content_hash
from services.workflow.validation import step_timeout_problems

HEADER = """\
name: ctx
version: 1
trigger: {event: client.created}
scopes: [firm_data:read]
"""

GOOD = (
    HEADER
    + """\
context:
  client:
    action: firm.get_record
    inputs: {record_type: client, id: "${{ trigger.data.client_id }}"}
  partners:
    action: firm.query
    inputs: {record_type: partner, where: {office: "${{ trigger.data.office }}"}, limit: 5}
steps:
  - id: greet
    action: echo
    when: context.client.status == "active"
    inputs: {name: "${{ context.client.fields.name }}", n: "${{ size(context.partners.records) }}"}
  - id: after
    action: noop
    needs: [greet]
"""
)


def problems_of(text: str) -> list[Problem]:
    with pytest.raises(DefinitionError) as info:
        load_definition_text(text, "wf.yaml", known_actions=BUILTIN_ACTIONS)
    return list(info.value.problems)


def test_a_context_compiles_into_hidden_steps_that_every_root_needs() -> None:
    wf = compile_workflow(load_definition_text(GOOD, "wf.yaml", known_actions=BUILTIN_ACTIONS))
    assert wf.step_ids() == ("context.client", "context.partners", "greet", "after")
    assert wf.roots() == ("context.client", "context.partners")
    assert wf.parents("greet") == ("context.client", "context.partners")
    assert wf.parents("after") == ("greet",)  # only roots need the context directly
    hidden = wf.step("context.client")
    assert (hidden.action, hidden.timeout, hidden.retry.max_attempts) == ("firm.get_record", 30.0, 3)
    assert [s.id for s in wf.definition.steps] == ["greet", "after"]  # the author's steps only
    # Context inputs render over the trigger.
    rendered = wf.render_inputs("context.client", EvalContext({"data": {"client_id": "c-1"}}))
    assert rendered == {"record_type": "client", "id": "c-1"}


def test_nothing_starts_before_the_whole_context_is_read() -> None:
    wf = compile_workflow(load_definition_text(GOOD, "wf.yaml", known_actions=BUILTIN_ACTIONS))
    trigger: dict[str, object] = {"data": {}}
    assert wf.advance({}, EvalContext(trigger)).start == ("context.client", "context.partners")
    half = {"context.client": StepStatus.SUCCEEDED, "context.partners": StepStatus.RUNNING}
    assert wf.advance(half, EvalContext(trigger)).start == ()
    done = {"context.client": StepStatus.SUCCEEDED, "context.partners": StepStatus.SUCCEEDED}
    ctx = EvalContext(trigger, context={"client": {"status": "active"}, "partners": {"records": []}})
    assert wf.advance(done, ctx).start == ("greet",)
    skipped = EvalContext(trigger, context={"client": {"status": "gone"}, "partners": {"records": []}})
    assert wf.advance(done, skipped).skip == ("greet", "after")
    failed = {"context.client": StepStatus.FAILED}
    assert wf.advance(failed, EvalContext(trigger)).outcome == "failed"


def test_context_is_a_cel_variable_with_literal_entry_names() -> None:
    expr = compile_expression('context.client.fields.name + context["partners"].x')
    assert expr.context_refs == {"client", "partners"} and expr.step_refs == frozenset()
    assert (
        expr.evaluate(
            EvalContext({}, context={"client": {"fields": {"name": "A"}}, "partners": {"x": "B"}}).variables()
        )
        == "AB"
    )
    with pytest.raises(ExpressionError, match="literal context entry name"):
        compile_expression("context[trigger.data.k]")


def test_a_reference_to_an_undeclared_context_entry_is_refused() -> None:
    text = GOOD.replace("context.client.fields.name", "context.clinet.fields.name")
    (problem,) = problems_of(text)
    assert problem.path == "steps[0].inputs.name"
    assert "unknown context entry 'clinet' (did you mean 'client'?)" in problem.message
    none = HEADER + "steps:\n  - {id: a, action: noop, when: 'context.client.ok'}\n"
    (problem,) = problems_of(none)
    assert "declare it under `context:`" in problem.message


def test_a_write_action_in_context_is_refused_with_the_read_actions_named() -> None:
    text = GOOD.replace("action: firm.get_record", "action: firm.update_record")
    (problem,) = problems_of(text)
    assert problem.path == "context.client.action"
    assert "'firm.update_record' is not a read action" in problem.message
    assert "firm.get_record" in problem.message and "Make it a step instead" in problem.message
    http = GOOD.replace("action: firm.query", "action: http.request")
    assert "'http.request' is not a read action" in problems_of(http)[0].message
    # Also without an action list (the router compiles published definitions without one).
    with pytest.raises(DefinitionError, match="not a read action"):
        load_definition_text(text, "wf.yaml")


def test_context_inputs_read_only_the_trigger_and_the_filter_cannot_read_context() -> None:
    text = GOOD.replace('id: "${{ trigger.data.client_id }}"', 'id: "${{ context.partners.x }}"')
    (problem,) = problems_of(text)
    assert problem.path == "context.client.inputs" and "`trigger` only" in problem.message
    text = GOOD.replace("event: client.created}", "event: client.created, filter: 'context.client.ok'}")
    (problem,) = problems_of(text)
    assert problem.path == "trigger.filter" and "cannot use `context`" in problem.message


def test_context_bounds() -> None:
    entries = "".join(f"  e{i}: {{action: noop}}\n" for i in range(MAX_CONTEXT_ENTRIES + 1))
    text = HEADER + "context:\n" + entries + "steps:\n  - {id: a, action: noop}\n"
    (problem,) = problems_of(text)
    assert problem.path == "context" and f"the limit is {MAX_CONTEXT_ENTRIES}" in problem.message
    long_name = HEADER + "context:\n  " + "n" * 49 + ": {action: noop}\nsteps:\n  - {id: a, action: noop}\n"
    assert "does not match the pattern" in problems_of(long_name)[0].message
    typo = GOOD.replace("    action: firm.get_record\n", "    action: firm.get_record\n    input: {}\n")
    assert any(
        "unknown field 'input'" in p.message and "allowed fields" in p.message for p in problems_of(typo)
    )


def test_a_context_timeout_is_held_to_the_runtime_limit_like_a_step_timeout() -> None:
    text = GOOD.replace("    action: firm.get_record\n", "    action: firm.get_record\n    timeout: 7200\n")
    defn = load_definition_text(text, "wf.yaml", known_actions=BUILTIN_ACTIONS)
    (problem,) = step_timeout_problems(defn, 3600)
    assert problem.path == "context.client.timeout" and "SWITCHYARD_MAX_STEP_TIMEOUT_S" in problem.message
    assert step_timeout_problems(defn, 7200) == []


def test_a_definition_without_context_dumps_and_signs_as_before_the_field_existed() -> None:
    """Signatures and content hashes are over the dump: definitions published before ``context:``
    existed must still verify after an upgrade."""
    plain = load_definition_text(HEADER + "steps:\n  - {id: a, action: noop}\n", "wf.yaml")
    assert "context" not in plain.model_dump(mode="json")
    assert "context" not in to_json_value(plain)
    with_context = load_definition_text(GOOD, "wf.yaml")
    dumped = with_context.model_dump(mode="json")
    assert set(dumped["context"]) == {"client", "partners"}
    assert WorkflowDefinition.model_validate(dumped) == with_context
    assert content_hash(with_context) != content_hash(with_context.model_copy(update={"context": {}}))
