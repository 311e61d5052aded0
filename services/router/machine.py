"""The run state machine: pure transitions of one run, no I/O, no clock, no randomness of its own.

Each entry point mutates a :class:`RunState` and returns :class:`Effects` — history events,
step commands, timers and dead letters — which the Kafka-facing core turns into records. Time
(``now_ms``) and jitter (``rand``) come in as arguments, so every transition is reproducible in
unit tests.

Steps of the kinds the router runs itself (``wait``, ``approval``: no command, no executor) start,
park on the run's durable deadline timer and end through their kind's pure module (see
:mod:`services.router.step_kinds`); an operator's approval decision is :func:`decide`.

Run status: ``pending`` (admitted, waiting for a concurrency slot) → ``running`` ⇄ ``retrying``
(some step waits for its backoff) → ``succeeded`` | ``failed`` | ``cancelled``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias, TypedDict

from services.config import Settings
from services.contracts import strict_json
from services.contracts.records import ControlCommand, JsonObject, StepResult
from services.contracts.vocabulary import RUN_END_EVENTS, ErrorKind, EventType, RunStatus, StepStatus
from services.router import approvals, event_waits, retention, step_kinds, subworkflows, waits
from services.router.event_details import (
    AttemptTiming,
    ControlDetail,
    EventDetail,
    RunPendingDetail,
    StepFailureDetail,
    StepScheduledDetail,
    StepSucceededDetail,
    TriggerSummary,
)
from services.router.state import RunState, StepRecord
from services.workflow.compiled import CompiledWorkflow
from services.workflow.expressions import EvalContext, ExpressionError
from services.workflow.models import CONTEXT_STEP_PREFIX, Step, is_context_step

#: Default of ``deadline_grace_ms`` (``SWITCHYARD_DEADLINE_GRACE_MS``): the router waits this long
#: past a step's deadline before declaring it timed out, so that the executor's own timeout report
#: (sent at the deadline) normally wins the race.
DEADLINE_GRACE_MS: int = Settings.model_fields["deadline_grace_ms"].default


@dataclass(frozen=True)
class Event:
    type: EventType
    step_id: str | None = None
    attempt: int | None = None
    state: str | None = None
    detail: EventDetail | None = None


@dataclass(frozen=True)
class Command:
    step_id: str
    attempt: int
    action: str
    inputs: JsonObject
    deadline_ms: int

    def idempotency_key(self, run_id: str) -> str:
        return f"{run_id}:{self.step_id}:{self.attempt}"


TimerKind: TypeAlias = Literal["retry", "deadline"]


@dataclass(frozen=True)
class Timer:
    due_ms: int
    run_id: str
    step_id: str
    attempt: int
    kind: TimerKind


class DeadLetterRequest(TypedDict):
    """A failed step the core dead-letters (with the run's identity) once the step is written."""

    step_id: str
    attempt: int | None  # None: the step failed before any attempt (e.g. its `when` failed)
    error_kind: str
    error_message: str


@dataclass
class Effects:
    events: list[Event] = field(default_factory=list)
    commands: list[Command] = field(default_factory=list)
    timers: list[Timer] = field(default_factory=list)
    dead_letters: list[DeadLetterRequest] = field(default_factory=list)
    children: list[subworkflows.ChildEffect] = field(default_factory=list)  # sub-workflow runs

    @property
    def finished(self) -> bool:
        return any(e.type in RUN_END_EVENTS for e in self.events)


def context(run: RunState) -> EvalContext:
    """What expressions see: ``steps`` from the succeeded steps, ``context`` from the succeeded
    hidden ``context.<name>`` steps (read once at run start and kept, replays included)."""
    outputs: dict[str, Any] = {}
    firm_context: dict[str, Any] = {}
    for sid, rec in run.steps.items():
        if rec.status == StepStatus.SUCCEEDED:
            if is_context_step(sid):
                firm_context[sid[len(CONTEXT_STEP_PREFIX) :]] = rec.output
            else:
                outputs[sid] = rec.output
    return EvalContext(trigger=run.trigger_view(), step_outputs=outputs, context=firm_context)


def new_run_steps(workflow: CompiledWorkflow) -> dict[str, StepRecord]:
    """A record per step, the hidden context steps included."""
    return {step_id: StepRecord() for step_id in workflow.step_ids()}


#: Longest idempotency key a lean ``run_pending`` (trigger omitted) carries.
LEAN_KEY_CHARS = 256


def admitted(run: RunState, source: str, omitted: str | None = None) -> Effects:
    """First event of every run: it exists, and is pending until a slot is free.

    With ``omitted`` (why), the lean form: the trigger's data is left out (and a long key cut),
    for a run whose full first event cannot be written; it still names the run's source."""
    key = run.idempotency_key
    trigger: TriggerSummary = {
        "event_type": run.trigger.get("event"),
        "data": run.trigger.get("data") if omitted is None else None,
        "idempotency_key": key
        if omitted is None or len(key) <= LEAN_KEY_CHARS
        else key[:LEAN_KEY_CHARS] + "…",
    }
    detail: RunPendingDetail = {"trigger": trigger, "source": source}
    if omitted is not None:
        detail["trigger_omitted"] = omitted
    if run.parent is not None:
        detail["parent"] = run.parent
    return Effects(events=[Event(EventType.RUN_PENDING, state=RunStatus.PENDING.value, detail=detail)])


def start(
    run: RunState, workflow: CompiledWorkflow, now_ms: int, *, deadline_grace_ms: int = DEADLINE_GRACE_MS
) -> Effects:
    effects = Effects()
    run.status = RunStatus.RUNNING
    effects.events.append(Event(EventType.RUN_STARTED, state=RunStatus.RUNNING.value))
    _advance(run, workflow, now_ms, effects, deadline_grace_ms)
    return effects


def on_result(
    run: RunState,
    workflow: CompiledWorkflow,
    result: StepResult,
    now_ms: int,
    rand: float,
    *,
    max_run_output_bytes: int | None = None,
    deadline_grace_ms: int = DEADLINE_GRACE_MS,
    max_context_bytes: int | None = None,
) -> Effects:
    """Apply one StepResult. Stale or duplicate results are reported, never applied.

    A run keeps its steps' outputs (later steps read them); ``max_run_output_bytes`` bounds their
    total, because the run's state must fit in one Kafka record. An output that would pass the
    bound fails its step, not retryable (the same action would return the same output). The
    context reads' outputs count toward it too, and ``max_context_bytes`` bounds them alone
    (``context_too_large``: every expression of the run is handed the context)."""
    stale = stale_result(run, result)
    if stale is not None:
        return stale
    # The router runs these kinds itself: no executor reports them (a `workflow` step's outcome
    # does come as a result: its child run's, sent by the child's router).
    if workflow.step(result["step_id"]).kind not in ("action", "workflow"):
        ignored = Event(
            EventType.RESULT_IGNORED, result["step_id"], result["attempt"], detail={"reason": "not_an_action"}
        )
        return Effects(events=[ignored])
    effects = Effects()
    step_id = result["step_id"]
    timing: AttemptTiming = {
        "started_at": result.get("started_at"),
        "finished_at": result.get("finished_at"),
        "executor_id": result.get("executor_id"),
    }
    if result["status"] != StepStatus.SUCCEEDED.value:
        _reported_failure(run, workflow, result, timing, now_ms, rand, effects, deadline_grace_ms)
        return effects
    text = result.get("output_json")
    size = len(text.encode("utf-8", "surrogatepass")) if text else 0
    too_large = _output_budget_refusal(run, step_id, size, max_run_output_bytes)
    kind = ErrorKind.RUN_OUTPUT_TOO_LARGE
    if too_large is None and is_context_step(step_id):
        too_large = _context_budget_refusal(run, step_id, size, max_context_bytes)
        kind = ErrorKind.CONTEXT_TOO_LARGE
    if too_large is not None:
        _failed_attempt(
            run,
            workflow,
            step_id,
            kind,
            too_large,
            False,
            now_ms,
            rand,
            effects,
            None,
            timing,
            deadline_grace_ms,
        )
        return effects
    _succeeded(
        run, workflow, step_id, result["attempt"], text, size, timing, now_ms, effects, deadline_grace_ms
    )
    return effects


def _reported_failure(
    run: RunState,
    workflow: CompiledWorkflow,
    result: StepResult,
    timing: AttemptTiming,
    now_ms: int,
    rand: float,
    effects: Effects,
    grace_ms: int,
) -> None:
    """An attempt its executor reported failed: retried or failed as the step's policy says."""
    retryable = bool(result.get("retryable", True))
    spec = workflow.definition.step(result["step_id"]).workflow
    if spec is not None:  # a child run's outcome: the step decides
        retryable = subworkflows.retryable(spec, result.get("error_kind"))
    _failed_attempt(
        run,
        workflow,
        result["step_id"],
        result.get("error_kind") or ErrorKind.ACTION_ERROR,
        result.get("error_message") or "",
        retryable,
        now_ms,
        rand,
        effects,
        event_type=None,
        extra=timing,
        deadline_grace_ms=grace_ms,
        retry_after_ms=result.get("retry_after_ms"),
    )


def _output_budget_refusal(run: RunState, step_id: str, size: int, limit: int | None) -> str | None:
    """Why an output of ``size`` bytes cannot be kept for ``step_id`` (the run's kept outputs would
    pass ``limit``), or ``None``."""
    if limit is None:
        return None
    kept = sum(r.output_bytes for sid, r in run.steps.items() if sid != step_id)
    if kept + size <= limit:
        return None
    return (
        f"output of {size} bytes would bring the run's kept step outputs to {kept + size} bytes,"
        f" above SWITCHYARD_MAX_RUN_OUTPUT_BYTES ({limit}); return less (e.g. a"
        " reference to the data) from this step"
    )


def _context_budget_refusal(run: RunState, step_id: str, size: int, limit: int | None) -> str | None:
    """Why a context read's output of ``size`` bytes cannot be kept (the run's context would pass
    ``limit``), or ``None``."""
    if limit is None:
        return None
    kept = sum(r.output_bytes for sid, r in run.steps.items() if sid != step_id and is_context_step(sid))
    if kept + size <= limit:
        return None
    return (
        f"{step_id} read {size} bytes, bringing the run's context to {kept + size} bytes, above"
        f" SWITCHYARD_MAX_CONTEXT_BYTES ({limit}); read less (filters, a lower limit, get_record)"
    )


def _succeeded(
    run: RunState,
    workflow: CompiledWorkflow,
    step_id: str,
    attempt: int,
    text: str | None,
    size: int,
    timing: AttemptTiming,
    now_ms: int,
    effects: Effects,
    grace_ms: int,
) -> None:
    """Keep a succeeded attempt's output (``text``, ``size`` bytes) and move the run on."""
    _record_success(run, step_id, attempt, _loads(text), size, timing, effects)
    _advance(run, workflow, now_ms, effects, grace_ms)


def _record_success(
    run: RunState, step_id: str, attempt: int, output: Any, size: int, timing: AttemptTiming, effects: Effects
) -> None:
    """Mark the step succeeded with ``output`` (``size`` bytes of JSON); the caller moves the run on."""
    rec = run.steps[step_id]
    rec.status = StepStatus.SUCCEEDED
    rec.output = output
    rec.output_bytes = size
    rec.deadline_ms = None
    succeeded: StepSucceededDetail = {"output": output, **timing}
    effects.events.append(
        Event(EventType.STEP_SUCCEEDED, step_id, attempt, StepStatus.SUCCEEDED.value, succeeded)
    )


def stale_result(run: RunState, result: StepResult) -> Effects | None:
    """The effects of a result that must not be applied (reported in the run's history: a late,
    duplicate or unknown attempt, or a finished run), or ``None`` when it applies. Needs no
    workflow: a finished run's definition may be gone."""
    step_id, attempt = result["step_id"], result["attempt"]
    reason = _stale_reason(run, run.steps.get(step_id), attempt)
    if reason is None:
        return None
    return Effects(events=[Event(EventType.RESULT_IGNORED, step_id, attempt, detail={"reason": reason})])


def timer_is_live(run: RunState, timer: Timer) -> bool:
    """Whether ``timer`` can still do something: its attempt is the step's current one and is
    still running (deadline) or waiting for its backoff (retry)."""
    if run.status.terminal:
        return False
    rec = run.steps.get(timer.step_id)
    if rec is None or rec.attempt != timer.attempt:
        return False
    wanted = StepStatus.RUNNING if timer.kind == "deadline" else StepStatus.RETRYING
    return rec.status == wanted


def fail_run(run: RunState, kind: str, message: str) -> Effects:
    """End a run that cannot go on (its records cannot be written, its definition lost its trust,
    the router failed on it): its open steps are cancelled and ``run_failed`` says why."""
    effects = Effects()
    if not run.status.terminal:
        _fail_run(run, None, kind, message, effects)
    return effects


def on_timer(
    run: RunState,
    workflow: CompiledWorkflow,
    timer: Timer,
    now_ms: int,
    rand: float,
    *,
    deadline_grace_ms: int = DEADLINE_GRACE_MS,
) -> Effects:
    effects = Effects()
    rec = run.steps.get(timer.step_id)
    if run.status.terminal or rec is None or rec.attempt != timer.attempt:
        return effects  # superseded timer
    if timer.kind == "retry" and rec.status == StepStatus.RETRYING:
        _schedule(run, workflow, timer.step_id, now_ms, effects, deadline_grace_ms)
        _refresh_status(run, effects)
    elif timer.kind == "deadline" and rec.status == StepStatus.RUNNING and rec.deadline_ms is not None:
        step = workflow.definition.step(timer.step_id)
        if step.workflow is not None:
            subworkflows.on_deadline(
                run, workflow, timer.step_id, step.workflow, now_ms, rand, effects, deadline_grace_ms
            )
            return effects
        if step.kind == "wait_for":
            event_waits.timed_out(run, workflow, timer.step_id, now_ms, rand, effects, deadline_grace_ms)
            return effects
        if step.action is None:  # a wait's wake-up, an approval's timeout: the kind decides
            ending = _router_deadline(step, rec.deadline_ms)
            _end_in_router(
                run,
                workflow,
                timer.step_id,
                ending,
                now_ms,
                effects,
                deadline_grace_ms,
                EventType.STEP_TIMED_OUT,
            )
            return effects
        _failed_attempt(
            run,
            workflow,
            timer.step_id,
            ErrorKind.TIMEOUT,
            f"no result for attempt {rec.attempt} by its deadline",
            True,
            now_ms,
            rand,
            effects,
            event_type=EventType.STEP_TIMED_OUT,
            deadline_grace_ms=deadline_grace_ms,
        )
    return effects


def on_event(
    run: RunState,
    workflow: CompiledWorkflow,
    step_ids: list[str],
    event: event_waits.WaitEvent,
    now_ms: int,
    rand: float,
    *,
    max_run_output_bytes: int | None = None,
    deadline_grace_ms: int = DEADLINE_GRACE_MS,
) -> Effects:
    """A tenant event matched the waiting ``wait_for`` steps ``step_ids`` (see
    :mod:`services.router.event_waits`): they succeed with it and the run moves on."""
    return event_waits.deliver(
        run,
        workflow,
        step_ids,
        event,
        now_ms,
        rand,
        max_run_output_bytes=max_run_output_bytes,
        deadline_grace_ms=deadline_grace_ms,
    )


def cancel(run: RunState, requester: str, reason: str) -> Effects:
    effects = Effects()
    if run.status.terminal:
        return effects
    for step_id, rec in run.steps.items():
        if rec.status in (StepStatus.PENDING, StepStatus.RUNNING, StepStatus.RETRYING):
            subworkflows.cancel_child(
                run, step_id, rec, effects, f"parent run cancelled by {requester}: {reason}"
            )
            rec.status = StepStatus.CANCELLED
            rec.deadline_ms = rec.retry_at_ms = None
            effects.events.append(
                Event(EventType.STEP_CANCELLED, step_id, rec.attempt or None, StepStatus.CANCELLED.value)
            )
    run.status = RunStatus.CANCELLED
    effects.events.append(
        Event(
            EventType.RUN_CANCELLED,
            state=RunStatus.CANCELLED.value,
            detail={"requester": requester, "reason": reason},
        )
    )
    return effects


def control_event(command: ControlCommand, refusal: str | None = None) -> Event:
    """The history entry for an operator's command: who asked, why, and whether it was accepted
    (the first event of the step :func:`services.router.control.plan` decides; the life of a
    command: :mod:`services.control`)."""
    detail: ControlDetail = {
        "command_id": command["command_id"],
        "kind": command["kind"],
        "requester": command["requester"],
        "reason": command["reason"],
        "step_id": command.get("step_id"),
        "command_correlation_id": command.get("correlation_id"),
    }
    if refusal is not None:
        detail["refusal"] = refusal
    if command["kind"] == "approve":
        detail["decision"] = command.get("decision")
    return Event(EventType.CONTROL_REFUSED if refusal else EventType.CONTROL_ACCEPTED, detail=detail)


def steps_to_replay(run: RunState, workflow: CompiledWorkflow, kind: str, from_step: str | None) -> list[str]:
    """Which steps a replay resets, or raise ``ValueError`` saying why the replay is refused.

    * ``replay_run`` without a step: the failed and cancelled steps of a failed or cancelled run;
    * ``replay_run`` from a step: that step and everything downstream of it;
    * ``replay_step``: that one step (steps after it that never ran will run after it).
    """
    if not run.status.terminal:
        raise ValueError(f"run is {run.status.value}; only a finished run can be replayed")
    if run.compacted is not None:
        raise ValueError(retention.refusal(run.compacted))
    if from_step is not None and from_step not in run.steps:
        raise ValueError(f"workflow {run.workflow} v{run.version} has no step {from_step!r}")
    if (
        from_step is not None
        and is_context_step(from_step)
        and run.steps[from_step].status == StepStatus.SUCCEEDED
    ):
        raise ValueError(
            f"{from_step} is the run's context, read once at its start; a replay keeps what it read"
            " (start a new run to read it again)"
        )
    if kind == "replay_step":
        if from_step is None:
            raise ValueError("replay_step needs a step id")
        return [from_step]
    if from_step is not None:
        downstream, frontier = {from_step}, [from_step]
        while frontier:
            for child in workflow.children(frontier.pop()):
                if child not in downstream:
                    downstream.add(child)
                    frontier.append(child)
        return [s for s in workflow.topological_order() if s in downstream]
    if run.status == RunStatus.SUCCEEDED:
        raise ValueError("run succeeded; name a step (--from-step) to replay part of it")
    failed = [s for s, r in run.steps.items() if r.status in (StepStatus.FAILED, StepStatus.CANCELLED)]
    if not failed:
        raise ValueError("run has no failed or cancelled step to replay")
    return failed


def replay(run: RunState, steps: list[str], command: ControlCommand) -> Effects:
    """Reset ``steps`` to pending and put the run back in the queue; attempts continue numbering."""
    effects = Effects(events=[control_event(command)])
    for step_id in steps:
        rec = run.steps[step_id]
        rec.status = StepStatus.PENDING
        rec.output = rec.error_kind = rec.error_message = None
        rec.output_bytes = 0
        rec.deadline_ms = rec.retry_at_ms = None
        rec.retry_base = rec.attempt
        effects.events.append(
            Event(
                EventType.STEP_RESET,
                step_id,
                None,
                StepStatus.PENDING.value,
                {"command_id": command["command_id"]},
            )
        )
    run.replays += 1
    run.status = RunStatus.PENDING
    run.finished_ms = None
    effects.events.append(
        Event(
            EventType.RUN_REPLAYED,
            state=RunStatus.PENDING.value,
            detail={
                "command_id": command["command_id"],
                "requester": command["requester"],
                "reason": command["reason"],
                "replay": run.replays,
                "steps": steps,
            },
        )
    )
    return effects


# --- internals -------------------------------------------------------------------------------------------


def _stale_reason(run: RunState, rec: StepRecord | None, attempt: int) -> str | None:
    if run.status.terminal:  # first: a compacted run has no step records left
        return f"run_{run.status.value}"
    if rec is None:
        return "unknown_step"
    if attempt != rec.attempt:
        return "stale_attempt"
    if rec.status != StepStatus.RUNNING:
        return f"step_{rec.status}"
    return None


def _loads(text: str | None) -> Any:
    """An output as the run keeps it: strict JSON (what the engine can always write again), else
    the text itself."""
    if text is None:
        return None
    try:
        return strict_json.loads(text, "output")
    except strict_json.StrictJSONError:
        return text


STATE_ERROR_CHARS = 300
#: The longest an executor's ``retry_after_ms`` can hold a retry back (breakers cool down in 30 s
#: by default; a forged or corrupt value must not park a step for days).
MAX_RETRY_AFTER_MS = 15 * 60 * 1000


def _failed_attempt(
    run: RunState,
    workflow: CompiledWorkflow,
    step_id: str,
    kind: str,
    message: str,
    retryable: bool,
    now_ms: int,
    rand: float,
    effects: Effects,
    event_type: EventType | None,
    extra: AttemptTiming | None = None,
    deadline_grace_ms: int = DEADLINE_GRACE_MS,
    retry_after_ms: int | None = None,
) -> None:
    """``retry_after_ms``: the executor's word on the soonest a retry can do better (an open circuit
    breaker's remaining cooldown); the retry waits at least that long, at most
    :data:`MAX_RETRY_AFTER_MS` (it comes from a record, so it is bounded like one)."""
    rec = run.steps[step_id]
    policy = workflow.definition.step(step_id).retry
    # The state keeps a bounded message (it counts toward the run's record); events keep it all.
    rec.error_kind, rec.error_message, rec.deadline_ms = kind, message[:STATE_ERROR_CHARS], None
    detail: StepFailureDetail = {"error_kind": kind, "error_message": message}
    if extra is not None:
        detail["started_at"] = extra["started_at"]
        detail["finished_at"] = extra["finished_at"]
        detail["executor_id"] = extra["executor_id"]
    if retryable and policy.should_retry(rec.attempt - rec.retry_base, kind):
        delay_ms = int(policy.backoff(rec.attempt - rec.retry_base, rand) * 1000)
        if retry_after_ms is not None and retry_after_ms > delay_ms:
            delay_ms = min(retry_after_ms, MAX_RETRY_AFTER_MS)
        rec.status = StepStatus.RETRYING
        rec.retry_at_ms = now_ms + delay_ms
        detail["retry_at"] = rec.retry_at_ms
        detail["next_attempt"] = rec.attempt + 1
        effects.events.append(
            Event(
                event_type or EventType.STEP_RETRYING, step_id, rec.attempt, StepStatus.RETRYING.value, detail
            )
        )
        effects.timers.append(Timer(rec.retry_at_ms, run.run_id, step_id, rec.attempt, "retry"))
        _refresh_status(run, effects)
        return
    rec.status = StepStatus.FAILED
    detail["retries_exhausted"] = retryable
    effects.events.append(
        Event(event_type or EventType.STEP_FAILED, step_id, rec.attempt, StepStatus.FAILED.value, detail)
    )
    effects.dead_letters.append(
        {
            "step_id": step_id,
            "attempt": rec.attempt,
            "error_kind": kind,
            "error_message": f"step {step_id} failed after {rec.attempt} attempt(s): {message}",
        }
    )
    _advance(run, workflow, now_ms, effects, deadline_grace_ms)


def _schedule(
    run: RunState, workflow: CompiledWorkflow, step_id: str, now_ms: int, effects: Effects, grace_ms: int
) -> None:
    rec = run.steps[step_id]
    step = workflow.definition.step(step_id)
    rec.attempt += 1
    rec.retry_at_ms = None
    if step.kind == "wait_for":
        event_waits.begin(run, workflow, step_id, now_ms, effects)
        return
    if step.action is None and step.workflow is None:
        _start_in_router(run, workflow, step, now_ms, effects)
        return
    try:
        inputs = workflow.render_inputs(step_id, context(run))
    except ExpressionError as exc:
        _failed_unscheduled(run, step_id, ErrorKind.EXPRESSION_ERROR, str(exc), effects)
        return
    if step.workflow is not None:
        subworkflows.schedule(run, step_id, step.workflow, inputs, now_ms, effects)
        return
    deadline = now_ms + int(step.timeout * 1000)
    rec.status = StepStatus.RUNNING
    rec.deadline_ms = deadline + grace_ms
    assert step.action is not None  # exactly one kind (models.Step._one_kind)
    command = Command(step_id, rec.attempt, step.action, inputs, deadline)
    effects.commands.append(command)
    effects.timers.append(Timer(rec.deadline_ms, run.run_id, step_id, rec.attempt, "deadline"))
    effects.events.append(
        Event(
            EventType.STEP_SCHEDULED,
            step_id,
            rec.attempt,
            StepStatus.RUNNING.value,
            {
                "action": step.action,
                "inputs": inputs,
                "deadline": deadline,
                "idempotency_key": command.idempotency_key(run.run_id),
            },
        )
    )


def _failed_unscheduled(run: RunState, step_id: str, kind: str, message: str, effects: Effects) -> None:
    """Fail a step as it starts (its inputs or kind spec cannot be evaluated): no retry, and no
    advance here: the caller's :func:`_advance` loop goes on from it."""
    rec = run.steps[step_id]
    rec.status = StepStatus.FAILED
    rec.error_kind, rec.error_message, rec.deadline_ms = kind, message[:STATE_ERROR_CHARS], None
    effects.events.append(
        Event(
            EventType.STEP_FAILED,
            step_id,
            rec.attempt,
            StepStatus.FAILED.value,
            {"error_kind": kind, "error_message": message},
        )
    )
    effects.dead_letters.append(
        {"step_id": step_id, "attempt": rec.attempt, "error_kind": kind, "error_message": message}
    )


# --- steps the router runs itself (services.router.step_kinds) -------------------------------------------


def _start_in_router(
    run: RunState, workflow: CompiledWorkflow, step: Step, now_ms: int, effects: Effects
) -> None:
    """Start a step of a kind the router runs itself: no command, no executor slot. Its kind's
    module says whether it parks (running until a wake-up or timeout kept as ``deadline_ms``, the
    run's durable timer), finishes or fails at once; the step is scheduled in history either way."""
    outcome: step_kinds.Outcome
    if step.wait is not None:
        outcome = waits.start(step, workflow, context(run), now_ms)
    elif step.approval is not None:
        outcome = approvals.start(step, now_ms)
    else:  # pragma: no cover - models.Step admits no other kind
        raise AssertionError(f"step {step.id!r} of kind {step.kind} has no start in the router")
    rec = run.steps[step.id]
    detail: StepScheduledDetail = {
        "action": None,
        "kind": step.kind,
        "inputs": {},
        "deadline": outcome.due_ms if isinstance(outcome, step_kinds.Park) else now_ms,
        "idempotency_key": f"{run.run_id}:{step.id}:{rec.attempt}",
    }
    if isinstance(outcome, step_kinds.Park):
        detail["waiting"] = outcome.waiting
    rec.status = StepStatus.RUNNING
    effects.events.append(
        Event(EventType.STEP_SCHEDULED, step.id, rec.attempt, StepStatus.RUNNING.value, detail)
    )
    if isinstance(outcome, step_kinds.Park):
        rec.deadline_ms = outcome.due_ms
        effects.timers.append(Timer(outcome.due_ms, run.run_id, step.id, rec.attempt, "deadline"))
    elif isinstance(outcome, step_kinds.Finish):
        _record_success(
            run,
            step.id,
            rec.attempt,
            outcome.output,
            _json_size(outcome.output),
            _router_timing(now_ms),
            effects,
        )
    else:
        _failed_unscheduled(run, step.id, outcome.error_kind, outcome.message, effects)


def _router_deadline(step: Step, due_ms: int) -> step_kinds.Ending:
    """What the deadline (wake-up, timeout) of a step the router runs itself comes to."""
    if step.wait is not None:
        return waits.woken(due_ms)
    if step.approval is not None:
        return approvals.timed_out(step)
    # pragma: no cover - models.Step admits no other kind
    raise AssertionError(f"step {step.id!r} of kind {step.kind} has no deadline in the router")


def _end_in_router(
    run: RunState,
    workflow: CompiledWorkflow,
    step_id: str,
    ending: step_kinds.Ending,
    now_ms: int,
    effects: Effects,
    grace_ms: int,
    failure_event: EventType = EventType.STEP_FAILED,
) -> None:
    """Apply how a parked step ended (success, or a failure never retried) and move the run on."""
    rec = run.steps[step_id]
    if isinstance(ending, step_kinds.Finish):
        _record_success(
            run,
            step_id,
            rec.attempt,
            ending.output,
            _json_size(ending.output),
            _router_timing(now_ms),
            effects,
        )
        _advance(run, workflow, now_ms, effects, grace_ms)
        return
    _failed_attempt(
        run,
        workflow,
        step_id,
        ending.error_kind,
        ending.message,
        False,
        now_ms,
        0.0,
        effects,
        event_type=failure_event,
        extra=_router_timing(now_ms),
        deadline_grace_ms=grace_ms,
    )


def _json_size(output: JsonObject) -> int:
    """Bytes of ``output`` as JSON (a router step's output is small and the engine's own)."""
    return len(strict_json.dumps(output))


def _router_timing(now_ms: int) -> AttemptTiming:
    return {"started_at": None, "finished_at": now_ms, "executor_id": None}


def decide(
    run: RunState,
    workflow: CompiledWorkflow | None,
    command: ControlCommand,
    now_ms: int,
    *,
    deadline_grace_ms: int = DEADLINE_GRACE_MS,
) -> Effects:
    """Apply an operator's approval decision (a verified ``approve`` command): ``control_accepted``
    then the step's end, or ``control_refused`` saying why it decides nothing."""
    why_not = approvals.refusal(run, workflow, command)
    if why_not is not None or workflow is None:
        return Effects(
            events=[control_event(command, why_not or "the run's definition is no longer verified")]
        )
    effects = Effects(events=[control_event(command)])
    step_id = command.get("step_id") or ""
    ending = approvals.decided(workflow.definition.step(step_id), command, now_ms)
    _end_in_router(run, workflow, step_id, ending, now_ms, effects, deadline_grace_ms)
    return effects


def _advance(run: RunState, workflow: CompiledWorkflow, now_ms: int, effects: Effects, grace_ms: int) -> None:
    """Skip, start and finish until nothing changes (a start can fail at once on a bad expression)."""
    while not run.status.terminal:
        statuses = {sid: StepStatus(rec.status) for sid, rec in run.steps.items()}
        try:
            advance = workflow.advance(statuses, context(run))
        except ExpressionError as exc:  # a `when` that fails to evaluate fails the run
            _fail_run(run, None, ErrorKind.EXPRESSION_ERROR, str(exc), effects)
            return
        for step_id in advance.skip:
            run.steps[step_id].status = StepStatus.SKIPPED
            effects.events.append(
                Event(
                    EventType.STEP_SKIPPED, step_id, None, StepStatus.SKIPPED.value, {"reason": "condition"}
                )
            )
        for failure in advance.fail:
            rec = run.steps[failure.step_id]
            rec.status = StepStatus.FAILED
            rec.error_kind, rec.error_message = failure.error_kind, failure.message[:STATE_ERROR_CHARS]
            effects.events.append(
                Event(
                    EventType.STEP_FAILED,
                    failure.step_id,
                    None,
                    StepStatus.FAILED.value,
                    {"error_kind": failure.error_kind, "error_message": failure.message},
                )
            )
            effects.dead_letters.append(
                {
                    "step_id": failure.step_id,
                    "attempt": None,
                    "error_kind": failure.error_kind,
                    "error_message": failure.message,
                }
            )
        for step_id in advance.start:
            _schedule(run, workflow, step_id, now_ms, effects, grace_ms)
        if advance.outcome == "succeeded":
            run.status = RunStatus.SUCCEEDED
            effects.events.append(Event(EventType.RUN_SUCCEEDED, state=RunStatus.SUCCEEDED.value))
            return
        if advance.outcome == "failed":
            failed = next((s for s, r in run.steps.items() if r.status == StepStatus.FAILED), None)
            failed_rec = run.steps[failed] if failed else None
            _fail_run(
                run,
                failed,
                failed_rec.error_kind if failed_rec else ErrorKind.FAILED,
                failed_rec.error_message if failed_rec else "",
                effects,
            )
            return
        if not advance.start and not advance.skip and not advance.fail:
            _refresh_status(run, effects)
            return


def _fail_run(
    run: RunState, step_id: str | None, kind: str | None, message: str | None, effects: Effects
) -> None:
    for sid, rec in run.steps.items():
        if rec.status in (StepStatus.RUNNING, StepStatus.RETRYING):
            subworkflows.cancel_child(run, sid, rec, effects, f"parent run failed: {kind}")
            rec.status = StepStatus.CANCELLED
            rec.deadline_ms = rec.retry_at_ms = None
            effects.events.append(
                Event(
                    EventType.STEP_CANCELLED,
                    sid,
                    rec.attempt,
                    StepStatus.CANCELLED.value,
                    {"reason": "run_failed"},
                )
            )
    run.status = RunStatus.FAILED
    effects.events.append(
        Event(
            EventType.RUN_FAILED,
            state=RunStatus.FAILED.value,
            detail={"step_id": step_id, "error_kind": kind, "error_message": message},
        )
    )


def _refresh_status(run: RunState, effects: Effects) -> None:
    if run.status.terminal or run.status == RunStatus.PENDING:
        return
    waiting = any(rec.status == StepStatus.RETRYING for rec in run.steps.values())
    wanted = RunStatus.RETRYING if waiting else RunStatus.RUNNING
    if wanted != run.status:
        run.status = wanted
        effects.events.append(
            Event(EventType.RUN_RETRYING if waiting else EventType.RUN_RUNNING, state=wanted.value)
        )
