"""``wait_for`` steps in definitions: shape, one kind per step, ``match`` checked like ``when``."""

from __future__ import annotations

import json
from typing import Any

import pytest

from services.workflow.compiled import compile_workflow
from services.workflow.loader import load_definition_text
from services.workflow.models import DEFAULT_WAIT_FOR_SECONDS, MAX_WAIT_SECONDS
from services.workflow.problems import DefinitionError


def definition(*steps: dict[str, Any]) -> str:
    return json.dumps({"name": "w", "version": 1, "trigger": {"event": "go"}, "steps": list(steps)})


def problems(*steps: dict[str, Any]) -> str:
    with pytest.raises(DefinitionError) as info:
        load_definition_text(definition(*steps), filename="w.json")
    return str(info.value)


def test_a_wait_for_step_has_its_defaults_and_kind() -> None:
    defn = load_definition_text(
        definition(
            {"id": "start", "action": "noop"},
            {"id": "signed", "needs": ["start"], "wait_for": {"event": "document.signed"}},
        ),
        filename="w.json",
    )
    start, signed = defn.steps
    assert (start.kind, signed.kind) == ("action", "wait_for")
    assert signed.action is None
    assert signed.wait_for is not None
    assert signed.wait_for.timeout == DEFAULT_WAIT_FOR_SECONDS == 7 * 24 * 3600
    assert signed.wait_for.on_timeout == "fail"
    assert signed.wait_for.match is None


def test_match_sees_event_trigger_and_the_steps_it_needs() -> None:
    wf = compile_workflow(
        load_definition_text(
            definition(
                {"id": "open", "action": "echo", "inputs": {"id": "${{ trigger.data.id }}"}},
                {
                    "id": "signed",
                    "needs": ["open"],
                    "wait_for": {
                        "event": "document.signed",
                        "match": "event.data.engagement == trigger.data.id && has(steps.open.output)",
                        "timeout": 60,
                        "on_timeout": "continue",
                    },
                },
            ),
            filename="w.json",
        )
    )
    variables = {
        "event": {"type": "document.signed", "data": {"engagement": "e1"}, "key": "k"},
        "trigger": {"data": {"id": "e1"}},
        "steps": {"open": {"output": {}}},
    }
    assert wf.evaluate_match("signed", variables)
    variables["event"] = {"type": "document.signed", "data": {"engagement": "e2"}, "key": "k"}
    assert not wf.evaluate_match("signed", variables)


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        ({"id": "s", "action": "noop", "wait_for": {"event": "x"}}, "exactly one of action, wait, wait_for"),
        ({"id": "s"}, "exactly one of action, wait, wait_for"),
        ({"id": "s", "wait_for": {"event": "x", "timeout": MAX_WAIT_SECONDS + 1}}, "less than or equal"),
        ({"id": "s", "wait_for": {"event": "x", "timeout": 0}}, "greater than 0"),
        ({"id": "s", "wait_for": {"event": "x", "on_timeout": "retry"}}, "'fail' or 'continue'"),
        ({"id": "s", "wait_for": {"event": "bad event"}}, "does not match the pattern"),
        ({"id": "s", "wait_for": {"event": "x", "matches": "true"}}, "allowed fields: event, match"),
        (
            {"id": "s", "wait_for": {"event": "x"}, "inputs": {"a": 1}},
            "inputs applies to action steps only; a wait_for step",
        ),
        (
            {"id": "s", "wait_for": {"event": "x"}, "timeout": 5},
            "a wait_for step sets its time limits in `wait_for:`",
        ),
        ({"id": "s", "wait_for": {"event": "x", "match": "event.data.x >"}}, "does not compile"),
        ({"id": "s", "wait_for": {"event": "x", "match": "evnt.data.x"}}, "unknown variable 'evnt'"),
        ({"id": "s", "wait_for": {"event": "x", "match": "steps.other.output"}}, "unknown step 'other'"),
        (
            {
                "id": "s",
                "wait_for": {"event": "x", "match": "event.data.a.map(i, event.data.b.map(j, i + j))"},
            },
            "too costly",
        ),
    ],
)
def test_bad_wait_for_steps_are_refused_with_the_reason(step: dict[str, Any], expected: str) -> None:
    assert expected in problems(step)


def test_match_names_its_path_and_only_ancestors() -> None:
    text = problems(
        {"id": "a", "action": "noop"},
        {"id": "s", "wait_for": {"event": "x", "match": "steps.a.output.ok"}},
    )
    assert "steps[1].wait_for.match" in text
    assert "not an ancestor" in text


def test_event_is_not_a_variable_of_ordinary_expressions() -> None:
    assert "unknown variable 'event'" in problems({"id": "s", "action": "noop", "when": "event.type == 'x'"})


def test_the_json_schema_knows_wait_for() -> None:
    from services.workflow.schema_export import definition_schema

    schema = json.dumps(definition_schema())
    assert "WaitFor" in schema and "on_timeout" in schema


def test_definitions_signed_before_step_kinds_keep_their_content_hash() -> None:
    """An action step's canonical JSON has no ``wait_for: null`` (nor any other kind): what was
    signed before step kinds existed still verifies (hash computed by the version before them)."""
    from pathlib import Path

    from services.workflow.loader import load_definition_file
    from services.workflow.signing import canonical_definition, content_hash

    linear = load_definition_file(Path(__file__).resolve().parents[3] / "deploy/examples/linear-chain.yaml")
    assert content_hash(linear) == "f8ed11bb601635b3f9b228c553dc0ef683cb77de2c511bed83e759d263d45517"
    assert b"wait_for" not in canonical_definition(linear)


def test_a_wait_for_definition_survives_its_signed_round_trip() -> None:
    from services.workflow.models import WorkflowDefinition

    defn = load_definition_text(
        definition({"id": "s", "wait_for": {"event": "x", "match": "event.key == trigger.key"}}),
        filename="w.json",
    )
    again = WorkflowDefinition.model_validate_json(defn.model_dump_json())
    assert again == defn and again.steps[0].kind == "wait_for"
    assert "action" not in defn.model_dump(mode="json")["steps"][0]
