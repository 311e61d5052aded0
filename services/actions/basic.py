"""Actions without side effects, for tests, demos and workflow plumbing."""

from __future__ import annotations

import asyncio

from pydantic import BaseModel, ConfigDict, Field

from services.contracts.records import JsonObject
from services.executor.plugins import ActionContext, ActionError, BaseAction


class NoopInput(BaseModel):
    """Anything goes; inputs are ignored (handy for expressing data dependencies)."""

    model_config = ConfigDict(extra="ignore")


class Noop(BaseAction):
    """Does nothing and returns ``{}``."""

    name = "noop"
    mutates = False
    Input = NoopInput

    async def run(self, ctx: ActionContext, inputs: NoopInput, /) -> JsonObject:
        return {}


class EchoInput(BaseModel):
    """Any fields; they are returned as the output."""

    model_config = ConfigDict(extra="allow")


class Echo(BaseAction):
    """Returns its inputs unchanged."""

    name = "echo"
    mutates = False
    Input = EchoInput

    async def run(self, ctx: ActionContext, inputs: EchoInput, /) -> JsonObject:
        return inputs.model_dump(mode="json")


class SleepInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seconds: float = Field(ge=0, le=24 * 3600, description="How long to sleep.")


class Sleep(BaseAction):
    """Sleeps without blocking the event loop; returns ``{"slept": seconds}``."""

    name = "sleep"
    mutates = False
    Input = SleepInput

    async def run(self, ctx: ActionContext, inputs: SleepInput, /) -> JsonObject:
        await asyncio.sleep(inputs.seconds)
        return {"slept": inputs.seconds}


class FailInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    error_kind: str = Field(default="action_error", min_length=1, max_length=100)
    message: str = Field(default="failed on purpose", max_length=4000)
    fail_attempts: int | None = Field(
        default=None, ge=0, description="Fail while attempt <= fail_attempts, then succeed; None: always."
    )
    retryable: bool = True


class Fail(BaseAction):
    """Fails with the given error kind (optionally only for the first ``fail_attempts`` attempts)."""

    name = "fail"
    mutates = False
    Input = FailInput

    async def run(self, ctx: ActionContext, inputs: FailInput, /) -> JsonObject:
        if inputs.fail_attempts is None or ctx.attempt <= inputs.fail_attempts:
            raise ActionError(inputs.error_kind, inputs.message, retryable=inputs.retryable)
        return {"succeeded_on_attempt": ctx.attempt}
