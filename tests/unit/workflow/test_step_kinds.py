"""Step kinds in the definition language: exactly one of action / wait / approval, their bounds,
and the CEL inside a kind's spec (``wait.until``) checked like a ``when``."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from services.workflow import BUILTIN_ACTIONS, DefinitionError, Problem, load_definition_text
from services.workflow.models import MAX_TEXT_CHARS, MAX_WAIT_SECONDS
from services.workflow.signing import canonical_definition

from .helpers import compiled, definition


def problems(steps: list[dict[str, Any]]) -> list[Problem]:
    text = "name: t\nversion: 1\ntrigger: {event: go}\nsteps:\n" + "".join(
        f"  - {step!r}\n".replace("'", '"').replace("None", "null") for step in steps
    )
    with pytest.raises(DefinitionError) as info:
        load_definition_text(text, "wf.yaml", known_actions=BUILTIN_ACTIONS)
    return list(info.value.problems)


def messages(steps: list[dict[str, Any]]) -> str:
    return "\n".join(f"{p.path}: {p.message}" for p in problems(steps))


def test_each_kind_is_chosen_by_its_one_field() -> None:
    defn = definition(
        [
            {"id": "a", "action": "echo"},
            {"id": "b", "wait": {"duration": 5}, "needs": ["a"]},
            {"id": "c", "approval": {"prompt": "Send it?"}, "needs": ["b"]},
        ]
    )
    assert [s.kind for s in defn.steps] == ["action", "wait", "approval"]
    assert [s.action for s in defn.steps] == ["echo", None, None]
    approval = defn.steps[2].approval
    assert approval is not None
    assert (approval.timeout, approval.on_timeout, approval.on_reject) == (7 * 86400, "fail", "fail")


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        ({"id": "a"}, "a step needs exactly one of action, wait, wait_for, approval, workflow; it has none"),
        ({"id": "a", "action": "echo", "wait": {"duration": 1}}, "it has action and wait"),
        ({"id": "a", "wait": {"duration": 1}, "approval": {"prompt": "p"}}, "it has wait and approval"),
        ({"id": "a", "wait": {"duration": 1}, "timeout": 5}, "timeout applies to action steps only"),
        ({"id": "a", "approval": {"prompt": "p"}, "inputs": {"x": 1}}, "inputs applies to action steps only"),
    ],
)
def test_a_step_has_exactly_one_kind_and_action_fields_only_on_actions(
    step: dict[str, Any], expected: str
) -> None:
    found = messages([step])
    assert "steps[0]" in found and expected in found, found


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"wait": {}}, "exactly one of `duration` (seconds) or `until`"),
        ({"wait": {"duration": 1, "until": "trigger.data.t"}}, "exactly one of `duration`"),
        ({"wait": {"duration": 0}}, "greater than 0"),
        ({"wait": {"duration": MAX_WAIT_SECONDS + 1}}, "less than or equal to 31622400"),
        ({"wait": {"duration": "5"}}, "valid number"),
        ({"wait": {"seconds": 5}}, "unknown field 'seconds'"),
        ({"approval": {"prompt": "p", "timeout": MAX_WAIT_SECONDS + 1}}, "less than or equal to"),
        ({"approval": {"prompt": "x" * (MAX_TEXT_CHARS + 1)}}, "at most 2000 characters"),
        ({"approval": {"prompt": ""}}, "at least 1 character"),
        ({"approval": {"prompt": "p", "on_timeout": "retry"}}, "'fail' or 'continue'"),
        (
            {"approval": {"prompt": "p", "on_rejct": "fail"}},
            "unknown field 'on_rejct' (did you mean 'on_reject'?)",
        ),
        ({"approval": {}}, "steps[0].approval.prompt: required field is missing"),
    ],
)
def test_kind_specs_are_bounded_and_strict(spec: dict[str, Any], expected: str) -> None:
    assert expected in messages([{"id": "a", **spec}])


@pytest.mark.parametrize(
    ("until", "expected"),
    [
        ("trigger.data.t +", "steps[1].wait.until: does not compile"),
        ("nope.t", "steps[1].wait.until: unknown variable 'nope'"),
        ("steps.c.output.at", "steps[1].wait.until: references step 'c' which is not an ancestor"),
        ("steps.b.output.at", "steps[1].wait.until: references the output of its own step 'b'"),
        ("${{ trigger.data.t }}", "steps[1].wait.until: write conditions as bare CEL"),
    ],
)
def test_a_bad_until_is_a_problem_at_its_path(until: str, expected: str) -> None:
    steps: list[dict[str, Any]] = [
        {"id": "a", "action": "echo"},
        {"id": "b", "wait": {"until": until}, "needs": ["a"]},
        {"id": "c", "action": "echo", "needs": ["b"]},
    ]
    assert expected in messages(steps)


def test_until_is_compiled_once_with_the_workflow() -> None:
    wf = compiled(
        [
            {"id": "a", "action": "echo"},
            {"id": "b", "wait": {"until": "steps.a.output.at"}, "needs": ["a"]},
        ]
    )
    assert wf.spec_expression("b", "wait.until").step_refs == {"a"}
    with pytest.raises(KeyError):
        wf.spec_expression("a", "wait.until")


def test_unknown_action_check_applies_to_action_steps_only() -> None:
    found = messages([{"id": "a", "action": "ecko"}, {"id": "b", "wait": {"duration": 1}}])
    assert "unknown action 'ecko'" in found and "steps[1]" not in found


def test_a_step_dumps_only_its_kind_so_signatures_made_before_the_kinds_still_verify() -> None:
    defn = definition([{"id": "a", "action": "echo"}, {"id": "b", "wait": {"duration": 5}, "needs": ["a"]}])
    action, wait = defn.model_dump(mode="json")["steps"]
    # exactly the keys an action step had before the step kinds: its canonical JSON is unchanged
    assert set(action) == {"id", "action", "inputs", "needs", "when", "timeout", "retry"}
    assert set(wait) == {"id", "wait", "needs", "when"}
    assert type(defn).model_validate(defn.model_dump(mode="json")) == defn  # round trip (publishing)


#: An action-only definition and the SHA-256 of its canonical JSON (what its signature covers) as
#: computed before the step kinds existed: published definitions must keep verifying.
BEFORE_KINDS = """
name: chain
version: 3
trigger: {event: go, filter: "trigger.data.n > 1"}
steps:
  - {id: a, action: echo, inputs: {x: "${{ trigger.data.n }}"}, timeout: 5}
  - {id: b, action: noop, needs: [a], when: "steps.a.output.x > 2", retry: {max_attempts: 2}}
"""
BEFORE_KINDS_SHA256 = "aece4d3dd037a2d67eaa1b3aba66b2e10bac8d10a98e998fcbcdf1224581934f"


def test_the_canonical_json_of_an_action_only_definition_is_what_it_was_before_the_kinds() -> None:
    defn = load_definition_text(BEFORE_KINDS, "chain.yaml")
    assert hashlib.sha256(canonical_definition(defn)).hexdigest() == BEFORE_KINDS_SHA256
