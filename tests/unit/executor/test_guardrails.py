"""execute_command under guardrails: permissions, circuit breakers and the external-call rate limit."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx
import pytest
from pydantic import BaseModel, ConfigDict

from services.actions import HttpRequest
from services.contracts.records import StepCommand, StepResult
from services.executor import ActionContext, ActionRegistry, BaseAction, execute_command
from services.executor.breaker import BreakerPolicy, CircuitBreakers
from services.executor.guardrails import BREAKER_STATE, PERMISSION_DENIED, Guardrails
from services.executor.permissions import required_scopes
from services.executor.ratelimit import ExternalCallLimiter
from services.observability.metrics import UNREGISTERED_TENANT
from tests.unit.executor.helpers import command, message_of


class AnyInput(BaseModel):
    model_config = ConfigDict(extra="allow")


class Counting(BaseAction):
    """Counts its runs: the side effect a denied action must never have."""

    name = "firm.touch"
    Input = AnyInput
    mutates_firm_data = True  # declares no scopes: firm_data:write is implied

    def __init__(self) -> None:
        self.runs = 0

    async def run(self, ctx: ActionContext, inputs: Any, /) -> dict[str, Any]:
        self.runs += 1
        return {"runs": self.runs}


class Reader(Counting):
    name = "firm.read"
    scopes = frozenset({"firm_data:read"})
    mutates_firm_data = False


def run(reg: ActionRegistry, cmd: StepCommand, **kwargs: Any) -> StepResult:
    return asyncio.run(execute_command(reg, cmd, **kwargs))


def registry(*actions: Any) -> ActionRegistry:
    return ActionRegistry.load(builtins=False, entry_points=False, extra=actions)


def test_mutating_action_implies_firm_data_write() -> None:
    assert required_scopes(Counting()) == {"firm_data:write"}
    assert required_scopes(Reader()) == {"firm_data:read"}


@pytest.mark.parametrize(
    ("declared", "granted", "reason"),
    [
        ([], {"firm_data:write"}, "does not declare"),
        (["firm_data:read"], {"firm_data:write"}, "does not declare"),
        (["firm_data:write"], {"firm_data:read"}, "not granted"),
        (["firm_data:write"], None, "not in the tenants registry"),
    ],
)
def test_permission_denied_is_final_and_never_runs_the_action(
    declared: list[str], granted: set[str] | None, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    action = Counting()
    label = "acme" if granted is not None else UNREGISTERED_TENANT  # an unknown tenant is no label of its own
    before = PERMISSION_DENIED.labels(label, "firm.touch")._value.get()
    grants = Guardrails(grants=lambda tenant: None if granted is None else frozenset(granted))
    with caplog.at_level(logging.WARNING, logger="services.executor"):
        result = run(registry(action), command("firm.touch", scopes=declared), guardrails=grants)
    assert (result["status"], result["error_kind"], result["retryable"]) == (
        "failed",
        "permission_denied",
        False,
    )
    assert reason in message_of(result)
    assert action.runs == 0
    assert PERMISSION_DENIED.labels(label, "firm.touch")._value.get() == before + 1
    [line] = [r for r in caplog.records if r.getMessage() == "permission denied"]
    assert line.levelno == logging.WARNING
    assert (line.tenant, line.run_id, line.correlation_id) == ("acme", "run-1", "corr-1")  # type: ignore[attr-defined]


def test_permitted_when_declared_and_granted() -> None:
    action, reader = Counting(), Reader()
    guards = Guardrails(grants=lambda tenant: frozenset({"firm_data:write", "firm_data:read"}))
    ok = run(registry(action), command("firm.touch", scopes=["firm_data:write"]), guardrails=guards)
    assert ok["status"] == "succeeded" and action.runs == 1
    ok = run(registry(reader), command("firm.read", scopes=["firm_data:read"]), guardrails=guards)
    assert ok["status"] == "succeeded" and reader.runs == 1


def test_actions_without_scopes_run_for_unknown_tenants() -> None:
    result = run(ActionRegistry.load(entry_points=False), command("noop"), grants=lambda tenant: None)
    assert result["status"] == "succeeded"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_on_retryable_http_failures_and_recovers() -> None:
    calls: list[str] = []
    status = {"code": 503}

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(str(request.url))
        return httpx.Response(status["code"])

    clock = Clock()
    guards = Guardrails.create(breaker_policy=BreakerPolicy(3, 30.0), clock=clock)
    open_before = BREAKER_STATE.labels("acme", "http.request", "open")._value.get()
    reg = registry(HttpRequest(transport=httpx.MockTransport(handler)))
    url = "https://api.example/x"

    async def main() -> list[StepResult]:
        results = []
        for _ in range(5):
            results.append(
                await execute_command(reg, command("http.request", {"url": url}), guardrails=guards)
            )
        return results

    results = asyncio.run(main())
    assert [r["error_kind"] for r in results] == ["http_503"] * 3 + ["circuit_open"] * 2
    assert all(r["retryable"] for r in results)
    assert len(calls) == 3  # failed fast: the last two never reached the host
    assert BREAKER_STATE.labels("acme", "http.request", "open")._value.get() == open_before + 1
    # Another host has its own breaker.
    other = run(reg, command("http.request", {"url": "https://other.example:8443/"}), guardrails=guards)
    assert other["error_kind"] == "http_503"

    clock.now += 30  # cooldown over: one trial call, which succeeds and closes the breaker
    status["code"] = 200
    trial = run(reg, command("http.request", {"url": url}), guardrails=guards)
    assert trial["status"] == "succeeded"
    assert BREAKER_STATE.labels("acme", "http.request", "open")._value.get() == open_before
    assert run(reg, command("http.request", {"url": url}), guardrails=guards)["status"] == "succeeded"


def test_non_retryable_failures_do_not_trip_the_breaker() -> None:
    reg = registry(HttpRequest(transport=httpx.MockTransport(lambda r: httpx.Response(404))))
    guards = Guardrails(breakers=CircuitBreakers(BreakerPolicy(2, 30.0), clock=Clock()))
    kinds = [
        run(reg, command("http.request", {"url": "http://h/"}), guardrails=guards)["error_kind"]
        for _ in range(5)
    ]
    assert kinds == ["http_404"] * 5


def test_actions_that_are_not_external_have_no_breaker() -> None:
    guards = Guardrails(breakers=CircuitBreakers(BreakerPolicy(1, 30.0), clock=Clock()))
    reg = ActionRegistry.load(entry_points=False)
    kinds = [run(reg, command("fail", {}), guardrails=guards)["error_kind"] for _ in range(3)]
    assert kinds == ["action_error"] * 3


def test_rate_limit_wait_counts_against_the_deadline() -> None:
    calls: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        return httpx.Response(200, json={})

    reg = registry(HttpRequest(transport=httpx.MockTransport(handler)))
    limiter = ExternalCallLimiter(lambda tenant: 1.0)  # 1 call/s, burst 1, real clock
    guards = Guardrails(limiter=limiter)

    async def main() -> list[StepResult]:
        first = await execute_command(reg, command("http.request", {"url": "http://h/"}), guardrails=guards)
        short = command("http.request", {"url": "http://h/"}, deadline=command("x")["deadline"] - 29_700)
        second = await execute_command(reg, short, guardrails=guards)  # 0.3 s left, next slot in ~1 s
        return [first, second]

    first, second = asyncio.run(main())
    assert first["status"] == "succeeded"
    assert (second["error_kind"], second["retryable"]) == ("timeout", True)
    assert "rate limit" in message_of(second)
    assert second["finished_at"] - second["started_at"] < 200  # failed at once, did not wait
    assert len(calls) == 1


def test_non_external_actions_are_not_rate_limited() -> None:
    limiter = ExternalCallLimiter(lambda tenant: 0.001)
    reg = ActionRegistry.load(entry_points=False)
    results = [run(reg, command("noop"), guardrails=Guardrails(limiter=limiter)) for _ in range(5)]
    assert {r["status"] for r in results} == {"succeeded"}
