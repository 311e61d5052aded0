"""Loading and validating whole documents: formats, source lines, limits, all problems at once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.workflow import (
    BUILTIN_ACTIONS,
    DefinitionError,
    Problem,
    compile_workflow,
    load_definition_file,
    load_definition_text,
    validate_definition,
)
from services.workflow.loader import MAX_SOURCE_BYTES, detect_format
from services.workflow.validation import MAX_EDGES, MAX_STEPS

from .helpers import definition

GOOD_YAML = """\
name: good
version: 2
trigger:
  event: client.created
steps:
  - id: a
    action: echo
    inputs:
      opened: 2024-01-05
      name: "${{ trigger.data.name }}"
"""


def problems_of(text: str, filename: str = "wf.yaml", **kwargs: object) -> list[Problem]:
    with pytest.raises(DefinitionError) as info:
        load_definition_text(text, filename, **kwargs)  # type: ignore[arg-type]
    return list(info.value.problems)


def test_yaml_dates_stay_strings() -> None:
    defn = load_definition_text(GOOD_YAML, "good.yaml")
    assert defn.steps[0].inputs["opened"] == "2024-01-05"
    assert defn.steps[0].timeout == 30.0 and defn.steps[0].retry.max_attempts == 3


def test_json_and_yaml_give_the_same_model(tmp_path: Path) -> None:
    defn = load_definition_text(GOOD_YAML, "good.yaml")
    path = tmp_path / "good.json"
    path.write_text(json.dumps(defn.model_dump(mode="json")))
    assert load_definition_file(path) == defn
    assert load_definition_text(path.read_text(), "no-extension") == defn


def test_format_detection() -> None:
    assert detect_format("{}", "x.json") == "json"
    assert detect_format("{}", "x.yml") == "yaml"
    assert detect_format('  {"a": 1}', "<string>") == "json"
    assert detect_format("a: 1", "<string>") == "yaml"


def test_problems_name_file_line_and_path() -> None:
    text = GOOD_YAML.replace("action: echo", "action: echo\n    needs: [ghost]")
    (problem,) = problems_of(text)
    assert (problem.file, problem.path, problem.line) == ("wf.yaml", "steps[0].needs[0]", 8)
    assert str(problem).startswith("wf.yaml:8: steps[0].needs[0]: needs unknown step 'ghost'")


def test_all_problems_are_reported_even_when_the_shape_is_wrong() -> None:
    text = """\
name: x
version: -1
trigger: {event: demo}
steps:
  - {id: a, action: noop, needs: [b], timeout: -5}
  - {id: b, action: noop, needs: [a]}
  - {id: c, action: teleport, when: "nope"}
"""
    rendered = [f"{p.path}: {p.message}" for p in problems_of(text, known_actions=BUILTIN_ACTIONS)]
    assert any(r.startswith("version:") for r in rendered)
    assert any(r.startswith("steps[0].timeout:") for r in rendered)
    assert any("needs form a cycle: a -> b -> a" in r for r in rendered)
    assert any("unknown action 'teleport'" in r for r in rendered)
    assert any("unknown variable 'nope'" in r for r in rendered)
    assert len(rendered) == 5


def test_error_string_lists_every_problem() -> None:
    text = "name: x\nversion: 1\ntrigger: {event: demo}\nsteps:\n  - {id: a, action: noop, needs: [x, y]}\n"
    message = str(DefinitionError(problems_of(text)))
    assert message.startswith("2 problems in workflow definition:")
    assert "steps[0].needs[0]" in message and "steps[0].needs[1]" in message


def test_step_limit() -> None:
    steps = [{"id": f"s{i}", "action": "noop"} for i in range(MAX_STEPS + 1)]
    text = json.dumps({"name": "big", "version": 1, "trigger": {"event": "demo"}, "steps": steps})
    assert any(f"the limit is {MAX_STEPS}" in p.message for p in problems_of(text, "big.json"))


def test_edge_limit() -> None:
    steps = [{"id": f"s{i}", "action": "noop", "needs": [f"s{j}" for j in range(i)][:40]} for i in range(100)]
    assert sum(len(s["needs"]) for s in steps) > MAX_EDGES
    text = json.dumps({"name": "dense", "version": 1, "trigger": {"event": "demo"}, "steps": steps})
    assert any(f"the limit is {MAX_EDGES}" in p.message for p in problems_of(text, "dense.json"))


def test_size_limit_and_empty_and_unreadable(tmp_path: Path) -> None:
    assert "the limit is" in problems_of("#" * (MAX_SOURCE_BYTES + 1))[0].message
    assert "empty" in problems_of("# nothing\n")[0].message
    missing = tmp_path / "missing.yaml"
    with pytest.raises(DefinitionError, match="cannot read file"):
        load_definition_file(missing)
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(DefinitionError, match="not UTF-8"):
        load_definition_file(binary)


def test_invalid_json_reports_line() -> None:
    (problem,) = problems_of('{\n  "name": "x",\n  oops\n}', "x.json")
    assert problem.line == 3 and "invalid JSON" in problem.message


def test_unknown_actions_are_only_checked_when_a_set_is_given() -> None:
    defn = definition([{"id": "a", "action": "custom.plugin"}])
    compile_workflow(defn)
    with pytest.raises(DefinitionError, match=r"unknown action 'custom\.plugin'"):
        compile_workflow(defn, BUILTIN_ACTIONS)
    with pytest.raises(DefinitionError):
        validate_definition(defn, known_actions=BUILTIN_ACTIONS)


def test_compile_workflow_exposes_step_policies() -> None:
    defn = definition([{"id": "a", "action": "noop", "timeout": 2.5, "retry": {"max_attempts": 7}}])
    wf = compile_workflow(defn)
    assert (wf.name, wf.version, wf.step_ids()) == ("t", 1, ("a",))
    assert wf.timeout("a") == 2.5 and wf.retry_policy("a").max_attempts == 7


def test_models_are_strict_and_frozen() -> None:
    with pytest.raises(ValueError):
        definition([{"id": "a", "action": "noop", "timeout": "30"}])
    defn = definition([{"id": "a", "action": "noop"}])
    with pytest.raises(ValueError):
        defn.name = "other"  # type: ignore[misc]
