"""Which timeouts count against a target's circuit breaker.

An attempt cut short by its deadline counts as a failure of the target only when it started with
at least half of the time its step allows: when most of the deadline was spent waiting in a queue
(a backlog after an executor restart), the timeout says nothing about the target.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from pydantic import BaseModel, ConfigDict

from services.executor import ActionContext, ActionRegistry, BaseAction, execute_command
from services.executor.breaker import BreakerPolicy, CircuitBreakers
from services.executor.execute import starved_budget
from services.executor.guardrails import Guardrails
from tests.unit.executor.helpers import command


class AnyInput(BaseModel):
    model_config = ConfigDict(extra="allow")


class Hanging(BaseAction):
    """An external call that never answers in time."""

    name = "remote.hang"
    Input = AnyInput
    external = True

    async def run(self, ctx: ActionContext, inputs: Any, /) -> dict[str, Any]:
        await asyncio.sleep(30)
        return {}


def attempts(issued_ago_s: float, remaining_s: float) -> list[str | None]:
    """Two attempts on a breaker that opens after one failure; their error kinds."""
    reg = ActionRegistry.load(builtins=False, entry_points=False, extra=[Hanging()])
    guards = Guardrails(breakers=CircuitBreakers(BreakerPolicy(1, 60.0)))

    async def main() -> list[str | None]:
        kinds = []
        for _ in range(2):
            now_ms = int(time.time() * 1000)
            cmd = command(
                "remote.hang",
                {},
                issued_at=now_ms - int(issued_ago_s * 1000),
                deadline=now_ms + int(remaining_s * 1000),
            )
            kinds.append((await execute_command(reg, cmd, guardrails=guards))["error_kind"])
        return kinds

    return asyncio.run(main())


def test_a_timeout_with_the_full_budget_opens_the_breaker() -> None:
    assert attempts(issued_ago_s=0.0, remaining_s=0.2) == ["timeout", "circuit_open"]


def test_a_timeout_of_an_attempt_that_waited_in_a_queue_does_not() -> None:
    # Issued 20 s ago with a 20.2 s budget: 0.2 s left when the attempt starts.
    assert attempts(issued_ago_s=20.0, remaining_s=0.2) == ["timeout", "timeout"]


def test_starved_budget_boundaries() -> None:
    cmd = command("noop", issued_at=0, deadline=60_000)
    assert not starved_budget(cmd, 60.0, None)
    assert not starved_budget(cmd, 30.0, None)
    assert starved_budget(cmd, 29.9, None)
    # The per-attempt cap is the allowance when it is lower than the step's timeout.
    assert not starved_budget(cmd, 10.0, 20.0)
    assert starved_budget(cmd, 9.9, 20.0)
    # A command without a usable issue time is never called starved.
    assert not starved_budget(command("noop", issued_at=60_000, deadline=60_000), 0.1, None)
