"""``approval`` steps: the run waits, in the router, for an operator's decision.

The step is ``running`` with its timeout as ``deadline_ms`` (the durable timer carries it across
restarts). An operator decides with a signed control command of kind ``approve`` (``switchyard
approve RUN STEP --decision approve|reject``), verified at intake like a cancel; the core applies
it through :func:`services.router.control.plan` and :func:`services.router.machine.decide`:

* ``approve`` — the step succeeds with ``{"decision": "approve", "by", "comment", "at"}``;
* ``reject`` — the step fails ``approval_rejected`` (never retried), or with ``on_reject:
  continue`` succeeds with decision ``reject``;
* no decision by the timeout — ``on_timeout``: fail ``approval_timed_out`` or succeed with
  ``{"decision": "timeout"}``.

A decision for a step that is not waiting for one (another kind of step, not started, decided,
a finished run) is refused with the reason. ``by`` is the requester intake verified (the key id
or the gateway's operator), never what the sender claimed. Pure: no I/O, no clock.
"""

from __future__ import annotations

from typing import Literal, get_args

from services.contracts.records import ControlCommand
from services.contracts.vocabulary import ErrorKind, StepStatus
from services.router.state import RunState
from services.router.step_kinds import Ending, Fail, Finish, Park, rfc3339
from services.workflow.compiled import CompiledWorkflow
from services.workflow.models import Step

Decision = Literal["approve", "reject"]
DECISIONS: tuple[str, ...] = get_args(Decision)


def start(step: Step, now_ms: int) -> Park:
    """An approval step starting at ``now_ms``: parked until its timeout."""
    spec = step.approval
    assert spec is not None, "approvals.start is for approval steps"
    due_ms = now_ms + int(spec.timeout * 1000)
    return Park(due_ms, {"prompt": spec.prompt, "timeout_at": rfc3339(due_ms), "on_timeout": spec.on_timeout})


def timed_out(step: Step) -> Ending:
    """No decision by the step's timeout: what ``on_timeout`` says."""
    spec = step.approval
    assert spec is not None, "approvals.timed_out is for approval steps"
    if spec.on_timeout == "continue":
        return Finish({"decision": "timeout"})
    return Fail(
        ErrorKind.APPROVAL_TIMED_OUT,
        f"no decision on approval step {step.id!r} within {spec.timeout:g} s (on_timeout: fail)",
    )


def refusal(run: RunState, workflow: CompiledWorkflow | None, command: ControlCommand) -> str | None:
    """Why ``command`` (kind ``approve``) cannot decide anything in ``run`` now, or ``None``."""
    step_id = command.get("step_id")
    decision = command.get("decision")
    if decision not in DECISIONS:
        return f"decision must be one of {', '.join(DECISIONS)}, not {decision!r}"
    if run.status.terminal:
        return f"run is already {run.status.value}"
    if not step_id:
        return "an approval decision names the step it decides"
    if workflow is None:
        return "the run's definition is no longer verified"
    rec = run.steps.get(step_id)
    try:
        step = workflow.step(step_id)
    except KeyError:
        step = None
    if rec is None or step is None:
        return f"workflow {run.workflow} v{run.version} has no step {step_id!r}"
    if step.approval is None:
        return f"step {step_id!r} is a {step.kind} step, not an approval"
    if rec.status != StepStatus.RUNNING:
        return f"step {step_id!r} is not waiting for a decision (it is {rec.status})"
    return None


def decided(step: Step, command: ControlCommand, now_ms: int) -> Ending:
    """The outcome of a decision :func:`refusal` let through, by the verified requester."""
    spec = step.approval
    assert spec is not None, "approvals.decided is for approval steps"
    decision = command.get("decision")
    comment = command.get("comment") or ""
    record = {"decision": decision, "by": command["requester"], "comment": comment, "at": rfc3339(now_ms)}
    if decision == "approve" or spec.on_reject == "continue":
        return Finish(record)
    why = f": {comment}" if comment else ""
    return Fail(ErrorKind.APPROVAL_REJECTED, f"rejected by {command['requester']}{why}")
