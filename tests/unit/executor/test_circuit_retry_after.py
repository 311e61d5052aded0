"""A ``circuit_open`` attempt tells the router how long to wait (``retry_after_ms``).

Retried at once, it would be refused again and spend its step's attempts in milliseconds while
the target cools down; the result carries the breaker's remaining cooldown instead, and a moment
when the breaker's trial calls are already under way.
"""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import BaseModel, ConfigDict

from services.contracts.records import StepResult
from services.executor import ActionContext, ActionRegistry, BaseAction, execute_command
from services.executor.breaker import BreakerPolicy, CircuitBreakers
from services.executor.execute import TRIALS_BUSY_RETRY_S
from services.executor.guardrails import Guardrails
from services.executor.plugins import ActionError
from tests.unit.executor.helpers import command


class AnyInput(BaseModel):
    model_config = ConfigDict(extra="allow")


class Down(BaseAction):
    """A remote call whose target is down (a retryable failure the breaker counts)."""

    name = "remote.down"
    Input = AnyInput
    external = True

    async def run(self, ctx: ActionContext, inputs: Any, /) -> dict[str, Any]:
        raise ActionError("http_transport_error", "connection refused")


def test_an_open_breaker_asks_for_its_remaining_cooldown_and_half_open_for_a_moment() -> None:
    registry = ActionRegistry.load(builtins=False, entry_points=False, extra=[Down()])
    now = [1000.0]
    breakers = CircuitBreakers(BreakerPolicy(failure_threshold=1, cooldown_s=30.0), clock=lambda: now[0])
    guards = Guardrails(breakers=breakers)

    def attempt() -> StepResult:
        return asyncio.run(execute_command(registry, command("remote.down", {}), guardrails=guards))

    first = attempt()  # the target's failure opens the breaker
    assert (first["error_kind"], first["retry_after_ms"]) == ("http_transport_error", None)

    now[0] += 12.0
    refused = attempt()
    assert refused["error_kind"] == "circuit_open" and refused["retryable"]
    assert refused["retry_after_ms"] == 18_000  # what is left of the 30 s cooldown

    now[0] += 18.0  # cooled down: one trial call goes through (and is under way)...
    breakers.get(("acme", "remote.down", "")).admit()
    busy = attempt()  # ...so the next is refused with no cooldown left to wait
    assert busy["error_kind"] == "circuit_open"
    assert busy["retry_after_ms"] == int(TRIALS_BUSY_RETRY_S * 1000)


class PoolBusy(BaseAction):
    """A remote call that never left the executor: every pooled connection was busy."""

    name = "remote.pool_busy"
    Input = AnyInput
    external = True

    async def run(self, ctx: ActionContext, inputs: Any, /) -> dict[str, Any]:
        raise ActionError("http_timeout", "PoolTimeout", reached_target=False)


def test_a_failure_that_never_reached_the_target_does_not_open_its_breaker() -> None:
    """A pool shared by a policy's tenants, held by one tenant's slow target, must not open the
    breakers of the others' healthy targets."""
    registry = ActionRegistry.load(builtins=False, entry_points=False, extra=[PoolBusy(), Down()])
    guards = Guardrails(breakers=CircuitBreakers(BreakerPolicy(failure_threshold=2, cooldown_s=30.0)))

    def kinds(action: str, times: int) -> list[str | None]:
        async def main() -> list[str | None]:
            return [
                (await execute_command(registry, command(action, {}), guardrails=guards))["error_kind"]
                for _ in range(times)
            ]

        return asyncio.run(main())

    assert kinds("remote.pool_busy", 5) == ["http_timeout"] * 5  # never circuit_open
    # the same breaker policy does open on failures of the target itself
    assert kinds("remote.down", 3) == ["http_transport_error", "http_transport_error", "circuit_open"]
