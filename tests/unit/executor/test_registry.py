"""ActionRegistry: built-ins, explicit extras, malformed actions and duplicate names."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

from services.executor import ActionContext, ActionLoadError, ActionRegistry, BaseAction, DuplicateActionError


class AnotherEcho(BaseAction):
    name = "echo"
    Input = BaseModel

    async def run(self, ctx: ActionContext, inputs: Any, /) -> dict[str, Any]:
        return {}


class Custom(BaseAction):
    name = "firm.custom_record"
    Input = BaseModel
    scopes = frozenset({"firm_data:write"})
    mutates_firm_data = True

    async def run(self, ctx: ActionContext, inputs: Any, /) -> dict[str, Any]:
        return {"updated": True}


def test_builtins_are_registered() -> None:
    registry = ActionRegistry.load(entry_points=False)
    assert registry.names() >= {"noop", "echo", "sleep", "fail", "http.request", "firm.update_record"}


def test_builtins_match_the_offline_action_list() -> None:
    from services.workflow.actions import BUILTIN_ACTIONS

    assert ActionRegistry.load(entry_points=False).names() == BUILTIN_ACTIONS


def test_entry_points_load_without_error() -> None:
    assert "noop" in ActionRegistry.load()


def test_extra_actions_are_added() -> None:
    registry = ActionRegistry.load(entry_points=False, extra=[Custom()])
    assert "firm.custom_record" in registry.names()
    assert registry.get("firm.custom_record") is not None


def test_duplicate_name_is_a_clear_error() -> None:
    with pytest.raises(DuplicateActionError) as info:
        ActionRegistry.load(entry_points=False, extra=[AnotherEcho()])
    message = str(info.value)
    assert "'echo' is registered twice" in message
    assert "built-in services.actions.basic" in message
    assert "AnotherEcho" in message


def test_malformed_actions_are_rejected() -> None:
    class BadName(Custom):
        name = "Bad Name"

    class SyncRun(BaseAction):
        name = "sync"
        Input = BaseModel

        def run(self, ctx: ActionContext, inputs: Any, /) -> dict[str, Any]:
            return {}

    class NoModel(BaseAction):
        name = "nomodel"
        Input = dict  # type: ignore[assignment]

        async def run(self, ctx: ActionContext, inputs: Any, /) -> dict[str, Any]:
            return {}

    registry = ActionRegistry()
    for action, fragment in ((BadName(), "invalid"), (SyncRun(), "async def"), (NoModel(), "pydantic")):
        with pytest.raises(ActionLoadError, match=fragment):
            registry.register(action)  # type: ignore[arg-type]
    assert len(registry) == 0
