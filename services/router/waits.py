"""``wait`` steps: a durable pause of a run, kept by the router (no executor, no executor slot).

``wait: {duration: 300}`` wakes 300 s after the step starts; ``wait: {until: "<CEL>"}`` evaluates
the expression once, when the step starts, to an RFC 3339 timestamp (a string with a time zone,
or a CEL ``timestamp``): a time already past ends the wait at once, one more than
:data:`~services.workflow.models.MAX_WAIT_SECONDS` ahead or a value that is no timestamp fails
the step ``expression_error``. While it waits the step is ``running`` with its wake-up time as
``deadline_ms``, so the durable timer survives router restarts and a cancel ends it like any
running step. On waking it succeeds with ``{"waited_until": <RFC 3339>}``. Pure: no I/O, no clock.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from services.contracts.vocabulary import ErrorKind
from services.router.step_kinds import Fail, Finish, Outcome, Park, rfc3339
from services.workflow.compiled import CompiledWorkflow
from services.workflow.expressions import EvalContext, ExpressionError
from services.workflow.models import MAX_WAIT_SECONDS, Step

UNTIL = "wait.until"


def start(step: Step, workflow: CompiledWorkflow, ctx: EvalContext, now_ms: int) -> Outcome:
    """Where a wait step starting at ``now_ms`` goes: parked until its wake-up time, done at once
    (a time already past), or failed (an ``until`` that is no usable timestamp)."""
    spec = step.wait
    assert spec is not None, "waits.start is for wait steps"
    if spec.duration is not None:
        return _park(now_ms + int(spec.duration * 1000))
    expr = workflow.spec_expression(step.id, UNTIL)
    try:
        due_ms = instant_ms(expr.evaluate(ctx.variables()))
    except ExpressionError as exc:
        return Fail(ErrorKind.EXPRESSION_ERROR, f"wait.until: {exc}")
    except ValueError as exc:
        return Fail(ErrorKind.EXPRESSION_ERROR, f"wait.until `{expr.source}`: {exc}")
    if due_ms <= now_ms:
        return woken(due_ms)
    if due_ms - now_ms > MAX_WAIT_SECONDS * 1000:
        return Fail(
            ErrorKind.EXPRESSION_ERROR,
            f"wait.until `{expr.source}` is {rfc3339(due_ms)}, more than {MAX_WAIT_SECONDS / 86400:.0f}"
            " days ahead; a wait may last at most that long",
        )
    return _park(due_ms)


def woken(due_ms: int) -> Finish:
    """The outcome of a wait whose time ``due_ms`` has come."""
    return Finish({"waited_until": rfc3339(due_ms)})


def instant_ms(value: Any) -> int:
    """Milliseconds since the epoch of an RFC 3339 timestamp (what CEL timestamps become too);
    ``ValueError`` saying why for anything else."""
    if not isinstance(value, str):
        raise ValueError(f"gave {type(value).__name__}, not an RFC 3339 timestamp or a CEL timestamp")
    if len(value) > 64:
        raise ValueError(f"gave a string of {len(value)} characters, not an RFC 3339 timestamp")
    try:
        moment = dt.datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"gave {value!r}, not an RFC 3339 timestamp (e.g. 2026-12-01T09:00:00Z)") from None
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"gave {value!r} without a time zone; add one (Z for UTC, or +01:00)")
    try:
        return int(moment.timestamp() * 1000)
    except (OverflowError, ValueError):
        raise ValueError(f"gave {value!r}, a time out of range") from None


def _park(due_ms: int) -> Park:
    return Park(due_ms, {"until": rfc3339(due_ms)})
