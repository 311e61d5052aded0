"""``example.greet``: a minimal action — an input model, no scopes, no side effects."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from services.executor.plugins import ActionContext, ActionError, BaseAction


class GreetInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    shout: bool = False


class Greet(BaseAction):
    """Returns ``{"greeting": "Hello, <name>!"}``; the name ``nobody`` fails (non-retryably)."""

    name = "example.greet"
    Input = GreetInput

    async def run(self, ctx: ActionContext, inputs: GreetInput, /) -> dict[str, Any]:
        if inputs.name == "nobody":
            raise ActionError("no_one_to_greet", "there is nobody to greet", retryable=False)
        greeting = f"Hello, {inputs.name}!"
        ctx.log.info("greeting", extra={"greeting": greeting})
        return {"greeting": greeting.upper() if inputs.shout else greeting, "attempt": ctx.attempt}
