"""One attempt, without Kafka: a StepCommand in, its StepResult out.

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
``secret_missing``     no          an input references ``${{ secrets.NAME }}`` that no secret
                                   provider of the tenant has (:mod:`services.secrets`)
``secret_unavailable`` yes         a secret provider failed to answer
``invalid_input``      no          ``inputs_json`` is not strict JSON (lone surrogates, ``NaN``,
                                   overflowing numbers), not a JSON object, or fails ``Input``
``invalid_output``     no          the action returned something that is not a JSON object, or not
                                   strict JSON: ``NaN``/infinities, lone surrogates, non-JSON types,
                                   nested deeper than ``MAX_OUTPUT_DEPTH``
``output_too_large``   no          the output exceeds ``max_output_bytes`` (UTF-8); the executor
                                   also reports it when the whole result record would not fit
``action_error``       yes         the action raised something other than ``ActionError`` (even
                                   ``SystemExit``), or an
                                   ``ActionError`` whose kind is not an error kind a retry policy
                                   could name (``^[a-z][a-z0-9_.]{0,63}$``)
(the action's kind)    (its flag)  the action raised ``ActionError``
``executor_error``     yes         a fault of the executor itself while running the attempt (a
                                   bug), or its result could not be encoded
``cancelled``          no          the router gave up on the attempt (run cancelled or failed,
                                   :mod:`.cancellation`) and its task was cancelled
=====================  ==========  ===============================================================

and ``context_not_read_only`` (not retried): a ``context.<name>`` step names an action that does
not declare ``mutates = False`` (:func:`.permissions.check_context_read`); the action never runs.

The kinds, their ``retryable`` flags and meanings are defined once in
:mod:`services.contracts.vocabulary` (a unit test checks that the flags here agree).

Every text a result carries (error messages, kinds) is bounded and valid UTF-8, so the result
record can always be encoded.

Order of checks: deadline, action lookup, permissions, secrets, inputs, circuit breaker, rate
limit, run. Resolved secret values exist only in the inputs handed to the action: they are masked
in its output and in error messages before the result is written, and in log lines written while
the attempt runs (:mod:`services.secrets.masking`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import BaseModel, ValidationError

from services.contracts import strict_json
from services.contracts.records import JsonObject, StepCommand, StepResult
from services.contracts.redaction import redact_text
from services.contracts.text import bounded_text
from services.contracts.vocabulary import ErrorKind
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
from services.executor.plugins import Action, ActionContext, ActionError, ActionRegistry
from services.executor.ratelimit import RateLimitTimeout
from services.observability import logs, metrics
from services.secrets import SecretMissing, SecretProviderError, SecretResolver, masking, references
from services.secrets.providers import EnvProvider

log = logging.getLogger("services.executor")

MAX_OUTPUT_BYTES = 512 * 1024
MAX_ERROR_MESSAGE = 4000
#: Deepest output accepted: run state (a JSON document holding the outputs) must stay encodable.
MAX_OUTPUT_DEPTH = 128
#: Deepest ``inputs_json`` accepted (inputs may embed trigger data, itself up to 64 levels).
MAX_INPUT_DEPTH = 256
#: The error kinds a retry policy can name (services.workflow.models.ERROR_KIND_PATTERN).
ERROR_KIND = re.compile(r"[a-z][a-z0-9_.]{0,63}")
#: Failure kinds that are outcomes of their own in ``switchyard_action_seconds``.
_OUTCOMES = frozenset({ErrorKind.TIMEOUT, ErrorKind.CANCELLED})
#: Label of actions that are not registered (their names come from definitions, not from us).
UNREGISTERED_ACTION = "_unregistered"
#: The least a ``circuit_open`` attempt asks the router to wait: its breaker is half-open with its
#: trial calls under way (no cooldown left to wait, but a retry right now would be refused again).
TRIALS_BUSY_RETRY_S = 1.0
#: Secrets when the caller configures none: the environment provider only.
DEFAULT_SECRETS = SecretResolver((EnvProvider(),))

__all__ = ["GrantsLookup", "execute_command"]


class _Failure(Exception):
    def __init__(
        self,
        kind: str,
        message: str,
        retryable: bool,
        *,
        called: bool = True,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.kind, self.message, self.retryable = kind, message, retryable
        self.called = called  # False: failed before the action was called (circuit breaker: no outcome)
        self.starved = False  # True: our deadline cut short an attempt that started with too little time
        self.retry_after_s = retry_after_s  # the soonest a retry can do better (an open breaker's cooldown)


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


def _truncate(text: str, limit: int = MAX_ERROR_MESSAGE) -> str:
    """Bounded and valid UTF-8 (an action's message may quote anything, lone surrogates too)."""
    if len(text) > limit:
        text = text[: limit - 12] + "…(truncated)"
    return bounded_text(text, limit)


def tenant_label(guards: Guardrails, tenant: str) -> str:
    """The metric label of ``tenant``: itself when the registry knows it (or there is no registry)."""
    lookup = guards.grants
    return metrics.tenant_label(tenant, lookup is None or lookup(tenant) is not None)


def _describe_validation(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors(include_url=False, include_input=False):
        where = ".".join(str(p) for p in error["loc"]) or "(inputs)"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)


async def execute_command(
    registry: ActionRegistry,
    command: StepCommand,
    *,
    executor_id: str = "",
    grants: GrantsLookup | None = None,
    guardrails: Guardrails | None = None,
    max_attempt_s: float | None = None,
    max_output_bytes: int = MAX_OUTPUT_BYTES,
    clock: Callable[[], float] = time.time,
    cancelled: Callable[[], str | None] | None = None,
    secrets: SecretResolver | None = None,
) -> StepResult:
    """Run the attempt ``command`` describes and return its ``StepResult`` record.

    ``guardrails`` adds circuit breakers and the external-call rate limit; tenant grants come
    from ``guardrails.grants``, else from ``grants`` (neither: the tenant check is skipped, the
    workflow's declared scopes are still enforced). ``max_attempt_s`` caps the time an attempt may
    take regardless of its deadline (the executor passes ``SWITCHYARD_MAX_STEP_TIMEOUT_S``, which
    publishing also enforces, so it only binds definitions that bypassed publishing); hitting it
    is a ``timeout`` too.

    When the attempt's task is cancelled, ``cancelled`` says why if the cancellation was asked for
    on purpose (:mod:`.cancellation`): the result is then a failure of kind ``cancelled``, not
    retryable. Any other cancellation (shutdown) propagates.

    ``secrets`` resolves the ``${{ secrets.NAME }}`` references of the inputs (default:
    :data:`DEFAULT_SECRETS`).
    """
    guards = _with_grants(guardrails or Guardrails(), grants)
    bound = _attempt_logger(command)
    started = clock()
    revealed: list[str] = []  # the secret values this attempt resolved (masked wherever it writes)
    watching = masking.watch(revealed)
    output_json, error = await _outcome(
        _attempt(
            registry,
            command,
            bound,
            guards,
            max_attempt_s,
            max_output_bytes,
            clock,
            started,
            secrets or DEFAULT_SECRETS,
            revealed,
        ),
        bound,
        cancelled,
    )
    finished = clock()
    label = tenant_label(guards, command["tenant"])
    _observe(registry, command["action"], label, error, finished - started)
    result = _result(command, executor_id, output_json, error, revealed, started, finished)
    _log_outcome(bound, label, command["action"], error, result["error_message"], finished - started)
    masking.unwatch(watching)
    return result


def _with_grants(guards: Guardrails, grants: GrantsLookup | None) -> Guardrails:
    """``guards``, with ``grants`` as its tenant grants when it has none of its own."""
    if guards.grants is None and grants is not None:
        return Guardrails(grants, guards.breakers, guards.limiter)
    return guards


def _attempt_logger(command: StepCommand) -> logs.BoundLogger:
    return logs.bind(
        log,
        tenant=command["tenant"],
        run_id=command["run_id"],
        correlation_id=command["correlation_id"],
        step_id=command["step_id"],
        attempt=command["attempt"],
        action=command["action"],
    )


async def _outcome(
    attempt: Awaitable[str], bound: logs.BoundLogger, cancelled: Callable[[], str | None] | None
) -> tuple[str | None, _Failure | None]:
    """The attempt's output JSON, or the failure it ended in. Only a cancellation nobody asked for
    (``cancelled`` says no reason) propagates."""
    try:
        return await attempt, None
    except _Failure as failure:
        return None, failure
    except asyncio.CancelledError:
        reason = None if cancelled is None else cancelled()
        if reason is None:
            raise
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()  # handled here: nothing later in this task is to be cancelled
        return None, _Failure(ErrorKind.CANCELLED, reason, False)
    except Exception as exc:  # a bug of ours must not take the batch down
        bound.exception("executor failure")
        return None, _Failure(ErrorKind.EXECUTOR_ERROR, f"{type(exc).__name__}: {exc}", True)


def _observe(
    registry: ActionRegistry, action_name: str, label: str, error: _Failure | None, seconds: float
) -> None:
    """The attempt in ``switchyard_action_seconds``, by action, tenant and outcome."""
    outcome = "succeeded" if error is None else error.kind if error.kind in _OUTCOMES else "failed"
    action_label = action_name if registry.get(action_name) is not None else UNREGISTERED_ACTION
    metrics.ACTION_SECONDS.labels(action_label, label, outcome).observe(max(0.0, seconds))


def _result(
    command: StepCommand,
    executor_id: str,
    output_json: str | None,
    error: _Failure | None,
    revealed: list[str],
    started: float,
    finished: float,
) -> StepResult:
    """The attempt's ``StepResult``; an error message has the attempt's secrets masked."""
    return {
        "run_id": command["run_id"],
        "tenant": command["tenant"],
        "step_id": command["step_id"],
        "attempt": command["attempt"],
        "status": "succeeded" if error is None else "failed",
        "output_json": output_json,
        "error_kind": None if error is None else error.kind,
        "error_message": None if error is None else _truncate(_scrub(error.message, revealed)),
        "retryable": True if error is None else error.retryable,
        "started_at": _ms(started),
        "finished_at": _ms(finished),
        "correlation_id": command["correlation_id"],
        "executor_id": executor_id,
        "retry_after_ms": None if error is None or error.retry_after_s is None else _ms(error.retry_after_s),
    }


def _log_outcome(
    bound: logs.BoundLogger,
    label: str,
    action_name: str,
    error: _Failure | None,
    error_message: str | None,
    seconds: float,
) -> None:
    """One log line per attempt (a denied permission is also counted: it is a tenant's mistake an
    operator looks for)."""
    if error is None:
        bound.debug("attempt succeeded", extra={"duration_s": round(seconds, 4)})
    elif error.kind == ErrorKind.PERMISSION_DENIED:
        PERMISSION_DENIED.labels(label, action_name).inc()
        bound.warning(
            "permission denied",
            extra={"error_kind": error.kind, "error_message": error_message, "retryable": False},
        )
    else:
        bound.info(
            "attempt failed",
            extra={
                "error_kind": error.kind,
                "error_message": error_message,
                "retryable": error.retryable,
                "duration_s": round(seconds, 4),
            },
        )


def _scrub(message: str, revealed: list[str]) -> str:
    """An error message with the attempt's secrets and known credential places masked."""
    return redact_text(masking.mask_text(message, revealed))


async def _resolve_secrets(
    secrets: SecretResolver, tenant: str, raw: JsonObject, revealed: list[str], budget: float
) -> JsonObject:
    """The inputs as the action receives them: wire form decoded, secret references resolved."""
    names = references.names_in(raw)
    values: dict[str, str] = {}
    if names:
        try:
            async with asyncio.timeout(max(0.0, budget)):
                values = await secrets.lookup_all(tenant, names)
        except SecretMissing as exc:
            raise _Failure(ErrorKind.SECRET_MISSING, str(exc), False) from exc
        except SecretProviderError as exc:
            raise _Failure(ErrorKind.SECRET_UNAVAILABLE, str(exc), True) from exc
        except TimeoutError as exc:
            raise _Failure(
                ErrorKind.TIMEOUT, f"secret lookup did not finish within {budget:.3f}s", True
            ) from exc
        revealed.extend(values.values())
    resolved: JsonObject = references.resolve(raw, values)
    return resolved


async def _attempt(
    registry: ActionRegistry,
    command: StepCommand,
    bound: logs.BoundLogger,
    guards: Guardrails,
    max_attempt_s: float | None,
    max_output_bytes: int,
    clock: Callable[[], float],
    started: float,
    secrets: SecretResolver,
    revealed: list[str],
) -> str:
    """The attempt proper, its checks in the module docstring's order; returns the output JSON or
    raises :class:`_Failure`."""
    deadline = _deadline(command, started)
    action = _action(registry, command["action"])
    declared = _permitted_scopes(action, command, guards)
    raw = _decode_inputs(command)
    raw = await _resolve_secrets(secrets, command["tenant"], raw, revealed, deadline - clock())
    inputs = _validated_inputs(action, raw)
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
    output = await _run_action(guards, action, ctx, inputs, command, clock, max_attempt_s)
    return encode_output(action.name, masking.mask(output, revealed), max_output_bytes)


def _deadline(command: StepCommand, started: float) -> float:
    """The attempt's deadline in epoch seconds; a ``timeout`` if it passed already."""
    deadline = command["deadline"] / 1000
    remaining = deadline - started
    if remaining <= 0:
        raise _Failure(
            ErrorKind.TIMEOUT, f"deadline passed {-remaining:.3f}s before the attempt started", True
        )
    return deadline


def _action(registry: ActionRegistry, name: str) -> Action:
    action = registry.get(name)
    if action is None:
        raise _Failure(ErrorKind.UNKNOWN_ACTION, f"no action named {name!r} is registered", False)
    return action


def _permitted_scopes(action: Action, command: StepCommand, guards: Guardrails) -> frozenset[str]:
    """The scopes the workflow declared, once the action is known to need no more than those (and
    than the tenant's grants)."""
    declared = frozenset(command.get("scopes") or ())
    try:
        permissions.check_context_read(action, command["step_id"])
    except permissions.NotReadOnly as exc:
        raise _Failure(ErrorKind.CONTEXT_NOT_READ_ONLY, str(exc), False) from exc
    try:
        permissions.check(action, command["tenant"], declared, guards.grants)
    except permissions.PermissionDenied as exc:
        raise _Failure(ErrorKind.PERMISSION_DENIED, str(exc), False) from exc
    return declared


def _decode_inputs(command: StepCommand) -> JsonObject:
    """``inputs_json`` as a JSON object (empty text: no inputs), strictly decoded."""
    try:
        raw = (
            strict_json.loads(command["inputs_json"], "inputs_json", MAX_INPUT_DEPTH)
            if command["inputs_json"]
            else {}
        )
    except strict_json.StrictJSONError as exc:
        raise _Failure(ErrorKind.INVALID_INPUT, str(exc), False) from exc
    if not isinstance(raw, dict):
        raise _Failure(
            ErrorKind.INVALID_INPUT, f"inputs must be a JSON object, not {type(raw).__name__}", False
        )
    return raw


def _validated_inputs(action: Action, raw: JsonObject) -> BaseModel:
    """The action's ``Input`` model of ``raw``; an ``invalid_input`` failure saying where not."""
    try:
        return action.Input.model_validate(raw)
    except ValidationError as exc:
        raise _Failure(ErrorKind.INVALID_INPUT, f"{action.name}: {_describe_validation(exc)}", False) from exc
    except Exception as exc:  # a validator that raises something pydantic does not wrap
        raise _Failure(ErrorKind.INVALID_INPUT, f"{action.name}: {type(exc).__name__}: {exc}", False) from exc


async def _run_action(
    guards: Guardrails,
    action: Action,
    ctx: ActionContext,
    inputs: BaseModel,
    command: StepCommand,
    clock: Callable[[], float],
    max_attempt_s: float | None,
) -> Any:
    """Run the action behind its circuit breaker (if it has one) within what is left of the
    deadline, capped at ``max_attempt_s``; tell the breaker what the call says about its target."""
    breaker = _admit(guards, action, inputs, command["tenant"])
    remaining = ctx.deadline - clock()
    budget = remaining if max_attempt_s is None else min(remaining, max_attempt_s)
    try:
        output = await _guarded_run(guards, action, ctx, inputs, budget, remaining, max_attempt_s)
    except _Failure as failure:
        if failure.kind == "timeout" and failure.called:
            failure.starved = starved_budget(command, budget, max_attempt_s)
        if breaker is not None:
            _record_failure(breaker, failure)
        raise
    except asyncio.CancelledError:
        if breaker is not None:
            breaker.record_cancelled()
        raise
    if breaker is not None:
        breaker.record_success()
    return output


def _record_failure(breaker: CircuitBreaker, failure: _Failure) -> None:
    if not failure.called or failure.starved:
        # The attempt was cut short by a deadline mostly spent waiting in a queue (a backlog
        # after a restart, an overloaded executor): that says nothing about the target, and
        # counting it would open the circuit on a healthy target in every catch-up burst.
        breaker.record_cancelled()
    elif failure.retryable:
        breaker.record_failure()
    else:
        breaker.record_success()  # the target answered; the request was wrong


def starved_budget(command: StepCommand, budget: float, max_attempt_s: float | None) -> bool:
    """Whether an attempt started with less than half of the time its step allows.

    The step allows ``deadline - issued_at`` (capped at ``max_attempt_s``); what is missing was
    spent before the attempt started. A timeout of such an attempt is not held against the target
    by the circuit breaker.
    """
    allowed: float = (command["deadline"] - command.get("issued_at", command["deadline"])) / 1000
    if max_attempt_s is not None:
        allowed = min(allowed, max_attempt_s)
    return allowed > 0 and budget < allowed / 2


def encode_output(action_name: str, output: Any, max_output_bytes: int = MAX_OUTPUT_BYTES) -> str:
    """The output as compact JSON text, or :class:`_Failure` (``invalid_output``,
    ``output_too_large``). Strict: what an action returns may come from a remote server, and
    everything downstream (run state, later steps' inputs, Avro) must be able to encode it."""
    if not isinstance(output, dict):
        raise _Failure(
            ErrorKind.INVALID_OUTPUT, f"{action_name} returned {type(output).__name__}, not a dict", False
        )
    if strict_json.depth(output, MAX_OUTPUT_DEPTH) > MAX_OUTPUT_DEPTH:
        raise _Failure(
            ErrorKind.INVALID_OUTPUT,
            f"{action_name} returned output nested deeper than {MAX_OUTPUT_DEPTH} levels",
            False,
        )
    try:
        text = json.dumps(output, allow_nan=False, separators=(",", ":"), ensure_ascii=False)
        encoded = text.encode("utf-8")  # refuses lone surrogates
    except UnicodeEncodeError as exc:
        raise _Failure(
            ErrorKind.INVALID_OUTPUT,
            f"{action_name} returned text that is not valid Unicode (a lone surrogate)",
            False,
        ) from exc
    except (TypeError, ValueError, RecursionError) as exc:
        raise _Failure(
            ErrorKind.INVALID_OUTPUT, f"{action_name} returned non-JSON output: {exc}", False
        ) from exc
    if len(encoded) > max_output_bytes:
        raise _Failure(
            ErrorKind.OUTPUT_TOO_LARGE,
            f"{action_name} returned {len(encoded)} bytes of output; the limit is {max_output_bytes}",
            False,
        )
    return text


def _admit(guards: Guardrails, action: Action, inputs: BaseModel, tenant: str) -> CircuitBreaker | None:
    """The breaker of this call, admitted; None when the action has none."""
    if guards.breakers is None or not has_breaker(action):
        return None
    # Unregistered tenants share one breaker key (and metric label) per target: names are unbounded.
    breaker = guards.breakers.get((tenant_label(guards, tenant), action.name, target_of(action, inputs)))
    try:
        breaker.admit()
    except CircuitOpenError as exc:
        BREAKER_REJECTIONS.labels(*exc.key[:2]).inc()  # tenant, action: no per-target series
        # A retry before the breaker lets a trial through fails the same way and spends an attempt:
        # the router waits at least this long (trials busy: a moment, the trial is under way).
        retry_after = max(exc.retry_after, TRIALS_BUSY_RETRY_S)
        raise _Failure(ErrorKind.CIRCUIT_OPEN, str(exc), True, retry_after_s=retry_after) from exc
    return breaker


async def _guarded_run(
    guards: Guardrails,
    action: Action,
    ctx: ActionContext,
    inputs: BaseModel,
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
                    raise _Failure(ErrorKind.TIMEOUT, str(exc), True, called=False) from exc
            return await action.run(ctx, inputs)
    except _Failure:
        raise
    except TimeoutError as exc:
        if scope.expired():
            capped = (
                ""
                if budget == remaining
                else f" (capped at the executor's limit of {max_attempt_s:g} s,"
                " SWITCHYARD_MAX_STEP_TIMEOUT_S)"
            )
            raise _Failure(
                ErrorKind.TIMEOUT, f"{action.name} did not finish within {budget:.3f}s{capped}", True
            ) from exc
        raise _Failure(ErrorKind.TIMEOUT, f"{action.name}: {type(exc).__name__}: {exc}", True) from exc
    except ActionError as exc:
        kind, message = exc.kind, str(exc.message)
        if not isinstance(kind, str) or not ERROR_KIND.fullmatch(kind):
            # A kind a retry policy cannot name, and that would become a metric label and a column
            # value as it is: say what it was, report the generic kind.
            message = f"(error kind {bounded_text(str(kind), 100)!r} is not valid) {message}"
            kind = ErrorKind.ACTION_ERROR
        raise _Failure(
            kind, message, bool(exc.retryable), called=getattr(exc, "reached_target", True) is not False
        ) from exc
    except asyncio.CancelledError:
        raise
    except (Exception, SystemExit, KeyboardInterrupt) as exc:
        # SystemExit / KeyboardInterrupt from a plugin would escape the task and stop the event
        # loop every attempt runs on (signals reach the main thread, never this one).
        ctx.log.warning("action raised", exc_info=True)
        raise _Failure(ErrorKind.ACTION_ERROR, f"{type(exc).__name__}: {exc}", True) from exc
