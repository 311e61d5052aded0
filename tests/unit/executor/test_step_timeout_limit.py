"""The step timeout limit: one setting, named where a definition is refused and where an attempt
is cut, never below the timeout a step declares."""

from __future__ import annotations

import asyncio
import time

import pytest

from services.config import Settings
from services.executor import ActionRegistry, execute_command
from services.executor.processor import DEFAULT_MAX_ATTEMPT_S
from services.workflow.loader import load_definition_text
from services.workflow.validation import step_timeout_problems
from tests.unit.executor.helpers import command, message_of

DEFINITION = """
name: long
version: 1
trigger: {event: go}
steps:
  - {id: short, action: sleep, timeout: 60}
  - {id: hour, action: sleep, timeout: 3600}
  - {id: day, action: sleep, timeout: 86400}
"""


def test_steps_over_the_limit_are_named_with_the_limit_and_the_setting() -> None:
    defn = load_definition_text(DEFINITION, "long.yaml")
    problems = step_timeout_problems(defn, 3600, file="long.yaml")
    assert [p.path for p in problems] == ["steps[2].timeout"]
    assert "timeout 86400 s exceeds the runtime's limit of 3600 s" in problems[0].message
    assert "SWITCHYARD_MAX_STEP_TIMEOUT_S" in problems[0].message
    assert step_timeout_problems(defn, 86400) == []


def test_the_default_limit_is_one_hour_and_a_setting() -> None:
    assert DEFAULT_MAX_ATTEMPT_S == 3600.0 == Settings(kafka_bootstrap_servers=None).max_step_timeout_s
    assert Settings(max_step_timeout_s=86400).max_step_timeout_s == 86400
    with pytest.raises(ValueError, match="max_step_timeout_s"):
        Settings(max_step_timeout_s=86401)


def test_an_attempt_within_the_limit_runs_to_its_deadline() -> None:
    """A step declaring 0.3 s under a 0.5 s limit gets its whole 0.3 s (no hidden cap below)."""
    registry = ActionRegistry.load(entry_points=False)
    deadline_ms = int(time.time() * 1000) + 300
    result = asyncio.run(
        execute_command(
            registry, command("sleep", {"seconds": 0.25}, deadline=deadline_ms), max_attempt_s=0.5
        )
    )
    assert result["status"] == "succeeded"


def test_the_cap_names_the_setting_when_it_binds() -> None:
    registry = ActionRegistry.load(entry_points=False)
    result = asyncio.run(execute_command(registry, command("sleep", {"seconds": 5}), max_attempt_s=0.1))
    assert result["error_kind"] == "timeout"
    assert "SWITCHYARD_MAX_STEP_TIMEOUT_S" in message_of(result)
