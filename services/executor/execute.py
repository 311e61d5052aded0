"""One attempt, without Kafka: StepCommand dict in, StepResult dict out.

:func:`execute_command` never raises for anything a command or an action can do (only
cancellation propagates): every problem becomes a failed result with an error kind —

=====================  ==========  ===============================================================
kind                   retryable   when
=====================  ==========  ===============================================================
``timeout``            yes         the deadline passed before or while the action ran (waiting for
                                   an external-call token counts: a wait that would overrun the
                                   deadline fails at once)
``unknown_action``     no          no action of that name is registered
``permission_denied``  no          the action needs scopes the workflow (or tenant) does not have
                                   (:mod:`.permissions`); the action never runs
``circuit_open``       yes         the circuit breaker of (tenant, action, target) is open
                                   (:mod:`.breaker`); the action never runs
``invalid_input``      no          ``inputs_json`` is not a JSON object, or fails ``Input``
``invalid_output``     no          the action returned something that is not a JSON object
``output_too_large``   no          the output exceeds ``max_output_bytes``
``action_error``       yes         the action raised something other than ``ActionError``
(the action's kind)    (its flag)  the action raised ``ActionError``
=====================  ==========  ===============================================================

Order of checks: deadline, action lookup, permissions, inputs, circuit breaker, rate limit, run.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from services.executor import permissions
from services.executor.breaker import CircuitBreaker, CircuitOpenError
from services.executor.guardrails import (
    BREAKER_REJECTIONS,
    PERMISSION_DENIED,
    Guardrails,
    has_breaker,
    is_external,
    target_of,
)
from services.executor.permissions import GrantsLookup
from services.executor.plugins import ActionContext, ActionError, ActionRegistry
from services.executor.ratelimit import RateLimitTimeout
from services.observability import logs, metrics

log = logging.getLogger("services.executor")

MAX_OUTPUT_BYTES = 512 * 1024
MAX_ERROR_MESSAGE = 4000

__all__ = ["GrantsLookup", "execute_command"]


class _Failure(Exception):
    def __init__(self, kind: str, message: str, retryable: bool, *, called: bool = True) -> None:
        super().__init__(message)
        self.kind, self.message, self.retryable = kind, message, retryable
        self.called = called  # False: failed before the action was called (circuit breaker: no outcome)


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


def _truncate(text: str, limit: int = MAX_ERROR_MESSAGE) -> str:
    return text if len(text) <= limit else text[: limit - 12] + "…(truncated)"


def _describe_validation(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors(include_url=False, include_input=False):
        where = ".".join(str(p) for p in error["loc"]) or "(inputs)"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)


async def execute_command(
    registry: ActionRegistry,
    command: dict[str, Any],
    *,
    executor_id: str = "",
    grants: GrantsLookup | None = None,
    guardrails: Guardrails | None = None,
    max_attempt_s: float | None = None,
    max_output_bytes: int = MAX_OUTPUT_BYTES,
    clock: Callable[[], float] = time.time,
) -> dict[str, Any]:
    """Run the attempt ``command`` describes and return its ``StepResult`` record.

    ``guardrails`` adds circuit breakers and the external-call rate limit; tenant grants come
    from ``guardrails.grants``, else from ``grants`` (neither: the tenant check is skipped, the
    workflow's declared scopes are still enforced). ``max_attempt_s`` caps the time an attempt may
    take regardless of its deadline (the executor uses it to stay within the consumer's poll
    interval); hitting it is a ``timeout`` too.
    """
    guards = guardrails or Guardrails()
    if guards.grants is None and grants is not None:
        guards = Guardrails(grants, guards.breakers, guards.limiter)
    tenant, run_id, correlation_id = command["tenant"], command["run_id"], command["correlation_id"]
    action_name = command["action"]
    bound = logs.bind(
        log,
        tenant=tenant,
        run_id=run_id,
        correlation_id=correlation_id,
        step_id=command["step_id"],
        attempt=command["attempt"],
        action=action_name,
    )
    started = clock()
    output_json: str | None = None
    try:
        output_json = await _attempt(
            registry, command, bound, guards, max_attempt_s, max_output_bytes, clock, started
        )
    except _Failure as failure:
        error: _Failure | None = failure
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # a bug of ours must not take the batch down
        bound.exception("executor failure")
        error = _Failure("executor_error", f"{type(exc).__name__}: {exc}", True)
    else:
        error = None
    finished = clock()
    outcome = "succeeded" if error is None else ("timeout" if error.kind == "timeout" else "failed")
    metrics.ACTION_SECONDS.labels(action_name, tenant, outcome).observe(max(0.0, finished - started))
    result: dict[str, Any] = {
        "run_id": run_id,
        "tenant": tenant,
        "step_id": command["step_id"],
        "attempt": command["attempt"],
        "status": "succeeded" if error is None else "failed",
        "output_json": output_json,
        "error_kind": None if error is None else error.kind,
        "error_message": None if error is None else _truncate(error.message),
        "retryable": True if error is None else error.retryable,
        "started_at": _ms(started),
        "finished_at": _ms(finished),
        "correlation_id": correlation_id,
        "executor_id": executor_id,
    }
    if error is None:
        bound.debug("attempt succeeded", extra={"duration_s": round(finished - started, 4)})
    elif error.kind == "permission_denied":
        PERMISSION_DENIED.labels(tenant, action_name).inc()
        bound.warning(
            "permission denied",
            extra={"error_kind": error.kind, "error_message": result["error_message"], "retryable": False},
        )
    else:
        bound.info(
            "attempt failed",
            extra={
                "error_kind": error.kind,
                "error_message": result["error_message"],
                "retryable": error.retryable,
                "duration_s": round(finished - started, 4),
            },
        )
    return result


async def _attempt(
    registry: ActionRegistry,
    command: dict[str, Any],
    bound: logs.BoundLogger,
    guards: Guardrails,
    max_attempt_s: float | None,
    max_output_bytes: int,
    clock: Callable[[], float],
    started: float,
) -> str:
    """The attempt proper; returns the output JSON or raises :class:`_Failure`."""
    deadline = command["deadline"] / 1000
    remaining = deadline - started
    if remaining <= 0:
        raise _Failure("timeout", f"deadline passed {-remaining:.3f}s before the attempt started", True)
    action = registry.get(command["action"])
    if action is None:
        raise _Failure("unknown_action", f"no action named {command['action']!r} is registered", False)
    declared = frozenset(command.get("scopes") or ())
    try:
        permissions.check(action, command["tenant"], declared, guards.grants)
    except permissions.PermissionDenied as exc:
        raise _Failure("permission_denied", str(exc), False) from exc
    try:
        raw = json.loads(command["inputs_json"]) if command["inputs_json"] else {}
    except ValueError as exc:
        raise _Failure("invalid_input", f"inputs_json is not JSON: {exc}", False) from exc
    if not isinstance(raw, dict):
        raise _Failure("invalid_input", f"inputs must be a JSON object, not {type(raw).__name__}", False)
    try:
        inputs = action.Input.model_validate(raw)
    except ValidationError as exc:
        raise _Failure("invalid_input", f"{action.name}: {_describe_validation(exc)}", False) from exc
    except Exception as exc:  # a validator that raises something pydantic does not wrap
        raise _Failure("invalid_input", f"{action.name}: {type(exc).__name__}: {exc}", False) from exc

    ctx = ActionContext(
        tenant=command["tenant"],
        run_id=command["run_id"],
        step_id=command["step_id"],
        attempt=command["attempt"],
        idempotency_key=command["idempotency_key"],
        deadline=deadline,
        correlation_id=command["correlation_id"],
        log=bound,
        workflow=command.get("workflow", ""),
        scopes=declared,
    )
    breaker = _admit(guards, action, inputs, command["tenant"])
    remaining = deadline - clock()
    budget = remaining if max_attempt_s is None else min(remaining, max_attempt_s)
    try:
        output = await _guarded_run(guards, action, ctx, inputs, budget, remaining, max_attempt_s)
    except _Failure as failure:
        if breaker is not None:
            if not failure.called:
                breaker.record_cancelled()
            elif failure.retryable:
                breaker.record_failure()
            else:
                breaker.record_success()  # the target answered; the request was wrong
        raise
    except asyncio.CancelledError:
        if breaker is not None:
            breaker.record_cancelled()
        raise
    if breaker is not None:
        breaker.record_success()

    if not isinstance(output, dict):
        raise _Failure("invalid_output", f"{action.name} returned {type(output).__name__}, not a dict", False)
    try:
        text = json.dumps(output, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise _Failure("invalid_output", f"{action.name} returned non-JSON output: {exc}", False) from exc
    if len(text.encode()) > max_output_bytes:
        raise _Failure(
            "output_too_large",
            f"{action.name} returned {len(text.encode())} bytes of output; the limit is {max_output_bytes}",
            False,
        )
    return text


def _admit(guards: Guardrails, action: Any, inputs: Any, tenant: str) -> CircuitBreaker | None:
    """The breaker of this call, admitted; None when the action has none."""
    if guards.breakers is None or not has_breaker(action):
        return None
    breaker = guards.breakers.get((tenant, action.name, target_of(action, inputs)))
    try:
        breaker.admit()
    except CircuitOpenError as exc:
        BREAKER_REJECTIONS.labels(*exc.key[:2]).inc()  # tenant, action: no per-target series
        raise _Failure("circuit_open", str(exc), True) from exc
    return breaker


async def _guarded_run(
    guards: Guardrails,
    action: Any,
    ctx: ActionContext,
    inputs: Any,
    budget: float,
    remaining: float,
    max_attempt_s: float | None,
) -> Any:
    """Wait for an external-call token (if needed), then run the action, all within ``budget``."""
    loop = asyncio.get_running_loop()
    until = loop.time() + budget
    try:
        async with asyncio.timeout_at(until) as scope:
            if guards.limiter is not None and is_external(action):
                try:
                    await guards.limiter.acquire(ctx.tenant, max(0.0, until - loop.time()))
                except RateLimitTimeout as exc:
                    raise _Failure("timeout", str(exc), True, called=False) from exc
            return await action.run(ctx, inputs)
    except _Failure:
        raise
    except TimeoutError as exc:
        if scope.expired():
            capped = "" if budget == remaining else f" (capped at {max_attempt_s}s per attempt)"
            raise _Failure(
                "timeout", f"{action.name} did not finish within {budget:.3f}s{capped}", True
            ) from exc
        raise _Failure("timeout", f"{action.name}: {type(exc).__name__}: {exc}", True) from exc
    except ActionError as exc:
        raise _Failure(str(exc.kind) or "action_error", str(exc.message), bool(exc.retryable)) from exc
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        ctx.log.warning("action raised", exc_info=True)
        raise _Failure("action_error", f"{type(exc).__name__}: {exc}", True) from exc
