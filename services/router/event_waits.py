"""``wait_for`` steps: a run waits for one of its tenant's events (the router runs them, no executor).

What this module owns:

* the step's transitions, pure like the rest of :mod:`services.router.machine` (which dispatches
  here): :func:`begin` (the step is ``running`` while it waits, ``deadline_ms`` = its timeout, a
  durable ``deadline`` timer), :func:`deliver` (a matching event: the step succeeds with
  ``{"event", "data", "key", "source"}``, bounded by the run's output budget) and
  :func:`timed_out` (``on_timeout``: ``fail`` → ``wait_timed_out``, not retried; ``continue`` →
  succeeds with ``{"timed_out": true}``);
* :func:`matching_steps`: which of a run's waiting steps an event satisfies (``match`` is CEL over
  ``event``, ``trigger`` and ``steps``, cost-bounded like every expression);
* :class:`WaitIndex`: per core partition, the runs waiting, by (tenant, event type), in the order
  they started waiting; derived from run state (rebuilt on restore and after an abort).

Semantics (README "Waiting for an event"): an event is seen only by the steps that wait when it
arrives (one that came earlier is not kept); it completes *every* waiting step whose ``match`` is
true (a broadcast, like a signal); a step never takes the same event record (same
topic/partition/offset, its ``source``) as another ``wait_for`` step of its run already took.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

from services.contracts import strict_json
from services.contracts.records import EventDelivered
from services.contracts.text import bounded_text
from services.contracts.vocabulary import ErrorKind, EventType, StepStatus
from services.router import machine
from services.router.event_details import AttemptTiming, StepWaitingForEventDetail
from services.router.state import RunState
from services.workflow.compiled import CompiledWorkflow
from services.workflow.expression_cost import BUDGET
from services.workflow.expressions import ExpressionError

#: Longest event type, key, source and correlation id an ``EventDelivered`` may carry.
MAX_EVENT_TYPE = 200
MAX_DELIVERY_FIELD = 1024
#: Longest reason kept from a ``match`` that failed to evaluate (it goes to a log line).
MATCH_ERROR_CHARS = 500
#: What trying one event on a partition's waiting runs may cost in all (estimated, the units of
#: :data:`~services.workflow.expression_cost.BUDGET`): 40 worst-case evaluations, ~1 s on a loaded
#: 2-core machine; a typical ``match`` (~0.1 ms) fits ~10,000 times. Runs past it do not see the event.
EVENT_COST_BUDGET = 40 * BUDGET

WaitKey = tuple[str, str]  # tenant, event type


@dataclass(frozen=True, slots=True)
class WaitEvent:
    """An event as waiting steps see it (``event`` in ``match``) and where it came from."""

    type: str
    data: Any
    key: str
    source: str  # topic/partition/offset of the tenant's record: a step takes one record once

    def variable(self) -> dict[str, Any]:
        return {"type": self.type, "data": self.data, "key": self.key}


def delivery_problem(body: EventDelivered) -> str | None:
    """Why an inbox ``EventDelivered`` cannot be applied (its fields are out of bounds), or None."""
    if not body["tenant"] or not 0 < len(body["event_type"]) <= MAX_EVENT_TYPE:
        return f"event delivery: tenant and an event type of 1 to {MAX_EVENT_TYPE} characters are required"
    for name in ("key", "source", "correlation_id"):
        value = body[name]
        if len(value) > MAX_DELIVERY_FIELD:
            return f"event delivery: {name} is {len(value)} characters; the limit is {MAX_DELIVERY_FIELD}"
    return None


def waits_of(workflow: CompiledWorkflow) -> Mapping[str, str]:
    """The workflow's ``wait_for`` steps: step id -> event type (computed once, at compile time)."""
    return workflow.event_waits


def waited_event_types(workflows: Iterable[CompiledWorkflow]) -> frozenset[str]:
    """Every event type some step of ``workflows`` waits for (what intake forwards to the core)."""
    types: set[str] = set()
    for workflow in workflows:
        types.update(waits_of(workflow).values())
    return frozenset(types)


def waiting_keys(run: RunState, workflow: CompiledWorkflow | None) -> tuple[WaitKey, ...]:
    """The (tenant, event type) pairs ``run`` waits for now (its ``wait_for`` steps that run)."""
    if workflow is None or run.status.terminal:
        return ()
    waits = waits_of(workflow)
    if not waits:
        return ()
    keys = {
        (run.tenant, event)
        for step_id, event in waits.items()
        if (rec := run.steps.get(step_id)) is not None and rec.status == StepStatus.RUNNING
    }
    return tuple(sorted(keys))


@dataclass
class WaitIndex:
    """The runs of one core partition that wait for an event, by (tenant, event type).

    Derived from run state: :meth:`sync` after each change of a run that waits or starts
    waiting, :meth:`rebuild` after a restore. Per waiting run it costs one entry in
    ``by_event`` (a dict slot: the run id is shared with the run) and one in ``of_run`` (a small
    tuple): ~200 bytes. An event costs a dict lookup plus one ``match`` per candidate, capped.
    """

    by_event: dict[WaitKey, dict[str, None]] = field(default_factory=dict)
    of_run: dict[str, tuple[WaitKey, ...]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.of_run)

    def sync(self, run: RunState, workflow: CompiledWorkflow | None) -> None:
        """Make the index say what ``run`` waits for now; a run that starts waiting for an event
        type goes last in its order."""
        keys = waiting_keys(run, workflow)
        old = self.of_run.get(run.run_id, ())
        if keys == old:
            return
        for key in old:
            if key not in keys:
                runs = self.by_event.get(key)
                if runs is not None:
                    runs.pop(run.run_id, None)
                    if not runs:
                        del self.by_event[key]
        for key in keys:
            if key not in old:
                self.by_event.setdefault(key, {})[run.run_id] = None
        if keys:
            self.of_run[run.run_id] = keys
        else:
            self.of_run.pop(run.run_id, None)

    def drop(self, run_id: str) -> None:
        for key in self.of_run.pop(run_id, ()):
            runs = self.by_event.get(key)
            if runs is not None:
                runs.pop(run_id, None)
                if not runs:
                    del self.by_event[key]

    def rebuild(
        self, runs: Iterable[RunState], workflow_of: Callable[[RunState], CompiledWorkflow | None]
    ) -> None:
        """Index ``runs`` from scratch (a restore or an abort), in the order the runs arrived."""
        self.by_event.clear()
        self.of_run.clear()
        for run in sorted(runs, key=lambda r: r.arrival):
            if not run.status.terminal and any(r.status == StepStatus.RUNNING for r in run.steps.values()):
                self.sync(run, workflow_of(run))

    def candidates(self, tenant: str, event_type: str, cap: int) -> tuple[list[str], int]:
        """The run ids an event of ``event_type`` is tried on (the ``cap`` oldest waits), and how
        many more wait for it without being tried."""
        runs = self.by_event.get((tenant, event_type))
        if not runs:
            return [], 0
        ids = list(islice(runs, cap))  # not a copy of all: a popular event type may have many
        return ids, len(runs) - len(ids)


# --- matching -------------------------------------------------------------------------------------


def _taken(run: RunState, waits: Mapping[str, str], source: str) -> bool:
    """Whether a ``wait_for`` step of ``run`` already took the event record at ``source``."""
    for step_id in waits:
        rec = run.steps.get(step_id)
        if (
            rec is not None
            and rec.status == StepStatus.SUCCEEDED
            and isinstance(rec.output, dict)
            and rec.output.get("source") == source
        ):
            return True
    return False


@dataclass(frozen=True, slots=True)
class Matches:
    """What trying one event on one run found: the steps it satisfies, why each ``match`` that
    could not be evaluated failed, the estimated cost spent, and whether the budget ran out first."""

    steps: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    cost: float = 0.0
    exhausted: bool = False


def matching_steps(
    run: RunState, workflow: CompiledWorkflow, event: WaitEvent, budget: float = EVENT_COST_BUDGET
) -> Matches:
    """The waiting steps of ``run`` that ``event`` satisfies. A ``match`` that cannot be evaluated
    leaves its step waiting (one event's bad shape must not end it); evaluations stop once their
    estimated cost would pass ``budget`` (``exhausted``). Total: never raises."""
    waits = waits_of(workflow)
    waiting = [
        step_id
        for step_id, event_type in waits.items()
        if event_type == event.type
        and (rec := run.steps.get(step_id)) is not None
        and rec.status == StepStatus.RUNNING
    ]
    if not waiting or _taken(run, waits, event.source):
        return Matches()
    variables = machine.context(run).variables()
    variables["event"] = event.variable()
    matched: list[str] = []
    errors: list[str] = []
    spent = 0.0
    for step_id in waiting:
        expr = workflow.match_expression(step_id)
        if expr is None:
            matched.append(step_id)
            continue
        try:
            prepared = expr.prepare(variables)
            if spent + prepared.estimate.cost > budget:
                return Matches(matched, errors, spent, exhausted=True)
            spent += prepared.estimate.cost
            result = expr.run(prepared)
            if not isinstance(result, bool):
                raise ExpressionError(f"match must evaluate to a bool, got {type(result).__name__}")
            if result:
                matched.append(step_id)
        except Exception as exc:  # ExpressionError, or anything the runtime raises on hostile data
            errors.append(bounded_text(f"step {step_id}: match failed: {exc}", MATCH_ERROR_CHARS))
    return Matches(matched, errors, spent)


# --- transitions (called by services.router.machine) ----------------------------------------------

_NO_TIMING: AttemptTiming = {"started_at": None, "finished_at": None, "executor_id": None}


def begin(
    run: RunState, workflow: CompiledWorkflow, step_id: str, now_ms: int, effects: machine.Effects
) -> None:
    """Start waiting: ``running`` until an event matches or ``deadline_ms`` (a durable timer) passes."""
    spec = workflow.step(step_id).wait_for
    assert spec is not None
    rec = run.steps[step_id]
    rec.status = StepStatus.RUNNING
    rec.deadline_ms = now_ms + int(spec.timeout * 1000)
    effects.timers.append(machine.Timer(rec.deadline_ms, run.run_id, step_id, rec.attempt, "deadline"))
    detail: StepWaitingForEventDetail = {
        "event": spec.event,
        "match": spec.match,
        "deadline": rec.deadline_ms,
    }
    effects.events.append(
        machine.Event(
            EventType.STEP_WAITING_FOR_EVENT, step_id, rec.attempt, StepStatus.RUNNING.value, detail
        )
    )


def deliver(
    run: RunState,
    workflow: CompiledWorkflow,
    step_ids: list[str],
    event: WaitEvent,
    now_ms: int,
    rand: float,
    *,
    max_run_output_bytes: int | None,
    deadline_grace_ms: int,
) -> machine.Effects:
    """``event`` matched ``step_ids`` of ``run``: each succeeds with the event as its output (or
    fails ``run_output_too_large``, not retried, if the run's outputs would pass their bound)."""
    effects = machine.Effects()
    text = strict_json.dumps(
        {"event": event.type, "data": event.data, "key": event.key, "source": event.source}
    ).decode("utf-8")
    size = len(text.encode("utf-8"))
    for step_id in step_ids:
        rec = run.steps.get(step_id)
        if run.status.terminal or rec is None or rec.status != StepStatus.RUNNING:
            continue  # an earlier step of this delivery ended the run
        refusal = machine._output_budget_refusal(run, step_id, size, max_run_output_bytes)
        if refusal is not None:
            machine._failed_attempt(
                run,
                workflow,
                step_id,
                ErrorKind.RUN_OUTPUT_TOO_LARGE,
                refusal,
                False,
                now_ms,
                rand,
                effects,
                None,
                deadline_grace_ms=deadline_grace_ms,
            )
            continue
        machine._succeeded(
            run, workflow, step_id, rec.attempt, text, size, _NO_TIMING, now_ms, effects, deadline_grace_ms
        )
    return effects


def timed_out(
    run: RunState,
    workflow: CompiledWorkflow,
    step_id: str,
    now_ms: int,
    rand: float,
    effects: machine.Effects,
    deadline_grace_ms: int,
) -> None:
    """No event matched by the deadline: ``on_timeout`` decides."""
    spec = workflow.step(step_id).wait_for
    assert spec is not None
    rec = run.steps[step_id]
    if spec.on_timeout == "continue":
        text = '{"timed_out":true}'
        machine._succeeded(
            run,
            workflow,
            step_id,
            rec.attempt,
            text,
            len(text),
            _NO_TIMING,
            now_ms,
            effects,
            deadline_grace_ms,
        )
        return
    machine._failed_attempt(
        run,
        workflow,
        step_id,
        ErrorKind.WAIT_TIMED_OUT,
        f"no {spec.event} event matched within {spec.timeout:g} s (wait_for.on_timeout: fail)",
        False,
        now_ms,
        rand,
        effects,
        None,
        deadline_grace_ms=deadline_grace_ms,
    )
