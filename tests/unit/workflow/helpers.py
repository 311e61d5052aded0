"""Builders shared by the workflow unit tests."""

from __future__ import annotations

from typing import Any

from services.workflow import BUILTIN_ACTIONS, CompiledWorkflow, WorkflowDefinition, compile_workflow


def definition(steps: list[dict[str, Any]], **extra: Any) -> WorkflowDefinition:
    data: dict[str, Any] = {"name": "t", "version": 1, "trigger": {"event": "demo"}, "steps": steps, **extra}
    return WorkflowDefinition.model_validate(data)


def compiled(steps: list[dict[str, Any]], **extra: Any) -> CompiledWorkflow:
    return compile_workflow(definition(steps, **extra), BUILTIN_ACTIONS)
