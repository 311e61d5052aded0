"""execute_command: deadlines, unknown actions, permissions, exceptions and output checks."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator

from services.contracts.records import StepCommand, StepResult
from services.executor import ActionContext, ActionError, ActionRegistry, BaseAction, execute_command
from tests.unit.executor.helpers import command, message_of, output_of


class AnyInput(BaseModel):
    model_config = ConfigDict(extra="allow")


class Probe(BaseAction):
    """Records its context; returns or raises what it is told to."""

    name = "probe"
    Input = AnyInput

    def __init__(self, behaviour: Any = None) -> None:
        self.behaviour = behaviour
        self.calls: list[ActionContext] = []

    async def run(self, ctx: ActionContext, inputs: Any, /) -> Any:
        self.calls.append(ctx)
        if isinstance(self.behaviour, BaseException):
            raise self.behaviour
        return self.behaviour if self.behaviour is not None else {"ok": True}


class Writer(Probe):
    name = "firm.write"
    scopes = frozenset({"firm_data:write"})
    mutates_firm_data = True


def registry(*actions: Any) -> ActionRegistry:
    return ActionRegistry.load(entry_points=False, extra=actions)


def run(reg: ActionRegistry, cmd: StepCommand, **kwargs: Any) -> StepResult:
    return asyncio.run(execute_command(reg, cmd, **kwargs))


def test_success_result_carries_identity_and_output() -> None:
    probe = Probe()
    result = run(registry(probe), command("probe", {"x": 1}), executor_id="ex-1")
    assert result["status"] == "succeeded"
    assert output_of(result) == {"ok": True}
    assert result["error_kind"] is None and result["retryable"] is True
    assert (result["run_id"], result["tenant"], result["step_id"], result["attempt"]) == (
        "run-1",
        "acme",
        "s1",
        1,
    )
    assert (result["correlation_id"], result["executor_id"]) == ("corr-1", "ex-1")
    assert result["started_at"] <= result["finished_at"]
    ctx = probe.calls[0]
    assert ctx.idempotency_key == "run-1:s1:1"
    assert ctx.log.extra is not None and ctx.log.extra["run_id"] == "run-1"
    assert 25 < ctx.remaining() <= 30


def test_deadline_already_passed_does_not_run_the_action() -> None:
    probe = Probe()
    past = int(time.time() * 1000) - 1
    result = run(registry(probe), command("probe", deadline=past))
    assert (result["status"], result["error_kind"], result["retryable"]) == ("failed", "timeout", True)
    assert probe.calls == []


def test_action_running_past_its_deadline_times_out() -> None:
    started = time.monotonic()
    deadline = int(time.time() * 1000) + 200
    result = run(registry(), command("sleep", {"seconds": 5}, deadline=deadline))
    assert (result["status"], result["error_kind"], result["retryable"]) == ("failed", "timeout", True)
    assert time.monotonic() - started < 2
    assert "did not finish" in message_of(result)


def test_max_attempt_caps_a_far_deadline() -> None:
    result = run(registry(), command("sleep", {"seconds": 5}), max_attempt_s=0.1)
    assert result["error_kind"] == "timeout"
    assert "capped" in message_of(result)


def test_unknown_action_is_not_retryable() -> None:
    result = run(registry(), command("no.such"))
    assert (result["status"], result["error_kind"], result["retryable"]) == (
        "failed",
        "unknown_action",
        False,
    )


def test_inputs_that_are_not_a_json_object_are_invalid() -> None:
    for raw in ("[1, 2]", "{not json"):
        result = run(registry(), command("echo", inputs_json=raw))
        assert (result["error_kind"], result["retryable"]) == ("invalid_input", False), raw


def test_unexpected_exception_is_a_retryable_action_error() -> None:
    result = run(registry(Probe(RuntimeError("kaput"))), command("probe"))
    assert (result["error_kind"], result["retryable"]) == ("action_error", True)
    assert "RuntimeError: kaput" in message_of(result)


def test_bad_outputs_are_reported() -> None:
    assert run(registry(Probe([1])), command("probe"))["error_kind"] == "invalid_output"
    assert run(registry(Probe({"x": object()})), command("probe"))["error_kind"] == "invalid_output"
    big = run(registry(Probe({"x": "y" * 100})), command("probe"), max_output_bytes=50)
    assert (big["error_kind"], big["retryable"]) == ("output_too_large", False)


def test_scopes_must_be_declared_by_the_workflow() -> None:
    writer = Writer()
    denied = run(registry(writer), command("firm.write"))
    assert (denied["error_kind"], denied["retryable"]) == ("permission_denied", False)
    assert writer.calls == []
    allowed = run(registry(writer), command("firm.write", scopes=["firm_data:write"]))
    assert allowed["status"] == "succeeded"


def test_mutating_action_needs_the_tenant_grant() -> None:
    writer = Writer()
    cmd = command("firm.write", scopes=["firm_data:write"])
    denied = run(registry(writer), cmd, grants=lambda tenant: frozenset({"firm_data:read"}))
    assert denied["error_kind"] == "permission_denied" and "not granted" in message_of(denied)
    granted = run(registry(writer), cmd, grants=lambda tenant: frozenset({"firm_data:write"}))
    assert granted["status"] == "succeeded"


def test_long_error_messages_are_truncated() -> None:
    result = run(registry(Probe(ActionError("big", "x" * 10_000))), command("probe"))
    assert result["error_kind"] == "big"
    assert len(message_of(result)) <= 4000 and message_of(result).endswith("(truncated)")


class Picky(BaseModel):
    value: int

    @field_validator("value")
    @classmethod
    def _explode(cls, value: int) -> int:
        raise TypeError("validator bug")


class PickyAction(BaseAction):
    name = "picky"
    Input = Picky

    async def run(self, ctx: ActionContext, inputs: Any, /) -> dict[str, Any]:
        return {}


def test_validator_raising_an_unwrapped_exception_is_invalid_input() -> None:
    result = run(registry(PickyAction()), command("picky", {"value": 1}))
    assert (result["error_kind"], result["retryable"]) == ("invalid_input", False)
    assert "validator bug" in message_of(result)
