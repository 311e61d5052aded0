"""Rebuild a finished run's router state from its history, so that it can be replayed. Pure.

A run leaves router memory ``SWITCHYARD_FINISHED_RUN_RETENTION_S`` after it finished, and a
succeeded one keeps no replay state even before (see :mod:`services.router.retention`). Its history
in PostgreSQL (:class:`~services.router.history.StoredRun`) holds what a replay needs: the trigger
(``run_pending``), every step's state, highest attempt number, output and error, the run's last
event sequence number and how often it was replayed. From that, :func:`rehydrate` makes the
:class:`RunState` the core would have kept, and the replay goes on as for a recent run: attempt
numbers continue, the replay limit counts the earlier replays, events continue after ``last_seq``.

What the history holds is what the projector could store, which differs from the original in
rare cases a replay may notice: JSON objects come back with their keys in PostgreSQL's ``jsonb``
order, NUL characters and lone surrogates as visible escapes, numbers beyond PostgreSQL's range as
text, idempotency keys over 512 characters as ``sha256:<hex>``.

A run whose first event was written without its trigger data (it was too large) cannot be
replayed: it comes back compacted (``trigger_not_in_history``), so the replay is refused saying so.
"""

from __future__ import annotations

from typing import Any

from services.contracts import strict_json
from services.contracts.vocabulary import RunStatus, StepStatus
from services.router import retention
from services.router.history import StoredRun, StoredStep
from services.router.machine import STATE_ERROR_CHARS, new_run_steps
from services.router.state import RunState, StepRecord, writable
from services.workflow.compiled import CompiledWorkflow

_STEP_STATES = frozenset(s.value for s in StepStatus)
#: Step states that mean an attempt was open; a finished run has none (its end cancelled them).
_OPEN = frozenset({StepStatus.RUNNING.value, StepStatus.RETRYING.value})


class NotRehydratable(ValueError):
    """The history holds the run, but not as a finished run the core can take up again."""


def rehydrate(
    stored: StoredRun, workflow: CompiledWorkflow | None, *, partition: int, arrival: int, now_ms: int
) -> RunState:
    """The run's state as the core keeps it; ``now_ms`` becomes its ``finished_ms``, so that it
    stays in router memory for a whole retention window from now (the window in which the
    projector is assumed to catch up with what the core writes next)."""
    try:
        status = RunStatus(stored.state)
    except ValueError:
        raise NotRehydratable(f"its history has the unknown state {stored.state!r}") from None
    if not status.terminal:
        raise NotRehydratable(
            f"its history shows it {status.value}, but no router holds its state; only a finished run"
            " can be replayed"
        )
    steps = new_run_steps(workflow) if workflow is not None else {}
    for step in stored.steps:
        steps[step.step_id] = _step(step)
    run = RunState(
        run_id=stored.run_id,
        tenant=stored.tenant,
        workflow=stored.workflow,
        version=stored.version,
        partition=partition,
        correlation_id=stored.correlation_id,
        idempotency_key=stored.idempotency_key or "",
        trigger={"event": stored.event_type, "data": writable(stored.trigger_data)},
        arrival=arrival,
        created_ms=int(stored.created_at.timestamp() * 1000),
        status=status,
        seq=stored.last_seq,
        steps=steps,
        finished_ms=now_ms,
        replays=stored.replays,
    )
    if stored.trigger_omitted or stored.event_type is None:
        retention.compact(run, retention.NO_TRIGGER)
    return run


def _step(step: StoredStep) -> StepRecord:
    state = step.state if step.state in _STEP_STATES else StepStatus.FAILED.value
    if state in _OPEN:
        state = StepStatus.CANCELLED.value
    output: Any = writable(step.output) if state == StepStatus.SUCCEEDED.value else None
    message = step.error_message[:STATE_ERROR_CHARS] if step.error_message is not None else None
    return StepRecord(
        status=state,
        attempt=step.attempts,
        output=output,
        error_kind=step.error_kind,
        error_message=message,
        # Only a replay's reset steps are retried, and the reset sets the base again.
        retry_base=step.attempts,
        output_bytes=len(strict_json.dumps(output)) if output is not None else 0,
    )
