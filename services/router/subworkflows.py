"""Sub-workflows: a ``workflow:`` step runs another workflow of the tenant as a child run.

Pure (no Kafka, no clock): the state machine calls the parent-side functions, the core the
child-side ones; the records they describe are built by :mod:`services.router.subworkflow_records`.

The life of a child run, across two cores (the parent's and the child's run may live on
different inbox partitions, even router instances):

1. **start** (parent's machine, :func:`schedule`): the step's attempt renders ``workflow.inputs``,
   becomes ``running`` with its deadline (``workflow.timeout``) in ``StepRecord.deadline_ms`` (so
   the durable ``deadline`` timer and the restore carry it) and its child's run id in
   ``StepRecord.child``, and emits a :class:`ChildStart`. The parent's core writes it, in the
   step's transaction, as a ``RunRequested`` with ``parent`` set to the child's inbox partition,
   keyed by the child run id — derived from (parent run, step, attempt) only, so a transaction
   retried after an abort cannot start a second child, and a new attempt starts a new one.
2. **take** (child's core, :func:`refusal`): the named workflow must be published and trusted
   (``version`` absent: the latest trusted one, pinned from then on) and the child no deeper than
   ``SWITCHYARD_MAX_SUBWORKFLOW_DEPTH``; otherwise no run starts and the parent's step gets a
   failed result (``child_unavailable``, ``subworkflow_too_deep``). The child is an ordinary run
   of the tenant (admission, concurrency, history), its trigger being the child workflow's own
   trigger event with the rendered inputs as ``data``.
3. **outcome** (child's core, :func:`outcome`): when the child ends, the step it ended in also
   writes a ``StepResult`` for the parent's step attempt to the parent's inbox partition
   (executor ``router:child``): its steps' outputs on success, ``child_failed`` /
   ``child_cancelled`` otherwise. The parent applies it as any result (stale ones are ignored).
4. **cancel** (parent's machine, :func:`cancel_child`): a parent step that stops waiting — run
   cancelled or failed, step timed out — emits a :class:`ChildCancel`, written as a cancel
   command into the child's inbox partition (requester ``parent:<run id>``); the child's core
   applies it as an operator's, so cancellation cascades down a tree of runs.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, TypeAlias

from services.contracts import strict_json
from services.contracts.records import JsonObject, RunParent, RunRequested, StepResult
from services.contracts.vocabulary import ErrorKind, EventType, RunStatus, StepStatus
from services.router import machine
from services.router.event_details import ChildScheduledDetail

if TYPE_CHECKING:
    from services.router.machine import Effects
    from services.router.state import RunState, StepRecord
    from services.workflow.compiled import CompiledWorkflow
    from services.workflow.models import SubWorkflow

#: ``executor_id`` of the result a child run's core writes for its parent's step.
EXECUTOR_ID = "router:child"
#: ``RunRequested.version`` of a child request that asks for the latest trusted version.
LATEST = 0
#: Requester of the cancel command a parent writes for its child: ``parent:<run id>``.
REQUESTER_PREFIX = "parent:"
#: Longest error text a child's failure carries into its parent's step.
MESSAGE_CHARS = 1000
_CHILD_NAMESPACE = uuid.UUID("6a1f3c2e-9d4b-5e7a-8c0f-2b7d9e4a1c36")


@dataclass(frozen=True, slots=True)
class ChildStart:
    """Start child run ``run_id`` of ``workflow`` (``version`` None: the latest trusted)."""

    step_id: str
    attempt: int
    run_id: str
    workflow: str
    version: int | None
    inputs: JsonObject
    depth: int  # the child's


@dataclass(frozen=True, slots=True)
class ChildCancel:
    """Cancel child run ``run_id``, started by attempt ``attempt`` of ``step_id``."""

    step_id: str
    attempt: int
    run_id: str
    reason: str


ChildEffect: TypeAlias = ChildStart | ChildCancel


class LatestDefinitions(Protocol):
    """What the child's core reads of the definitions registry."""

    def get(self, tenant: str, name: str, version: int) -> CompiledWorkflow | None: ...

    def latest_for(self, tenant: str) -> list[CompiledWorkflow]: ...


def child_run_id(parent_run_id: str, step_id: str, attempt: int) -> str:
    """The run id of the child an attempt starts: the same for the same attempt, whatever
    happens to the transaction; in its own namespace, so no tenant trigger key can take it."""
    return str(uuid.uuid5(_CHILD_NAMESPACE, f"{parent_run_id}\x1f{step_id}\x1f{attempt}"))


def idempotency_key(parent_run_id: str, step_id: str, attempt: int) -> str:
    return f"{parent_run_id}:{step_id}:{attempt}"


def depth(run: RunState) -> int:
    """How deep ``run`` is nested: 0 for a triggered run, 1 for its child, …"""
    return run.parent["depth"] if run.parent is not None else 0


# --- parent side (the state machine) ----------------------------------------------------------------


def schedule(
    run: RunState, step_id: str, spec: SubWorkflow, inputs: JsonObject, now_ms: int, effects: Effects
) -> None:
    """Start attempt ``rec.attempt`` (already counted) of a workflow step: it waits for its
    child until ``spec.timeout``."""
    rec = run.steps[step_id]
    child = child_run_id(run.run_id, step_id, rec.attempt)
    deadline = now_ms + int(spec.timeout * 1000)
    rec.status = StepStatus.RUNNING
    rec.deadline_ms = deadline  # the router decides alone: no executor to give a grace to
    rec.child = child
    effects.children.append(
        ChildStart(step_id, rec.attempt, child, spec.name, spec.version, inputs, depth(run) + 1)
    )
    effects.timers.append(machine.Timer(deadline, run.run_id, step_id, rec.attempt, "deadline"))
    detail: ChildScheduledDetail = {
        "workflow": spec.name,
        "version": spec.version,
        "child_run_id": child,
        "inputs": inputs,
        "deadline": deadline,
        "idempotency_key": idempotency_key(run.run_id, step_id, rec.attempt),
    }
    effects.events.append(
        machine.Event(EventType.STEP_SCHEDULED, step_id, rec.attempt, StepStatus.RUNNING.value, detail)
    )


def cancel_child(run: RunState, step_id: str, rec: StepRecord, effects: Effects, reason: str) -> None:
    """The step stops waiting for its child (call before its status changes): cancel the child."""
    if rec.status == StepStatus.RUNNING and rec.child is not None:
        # Bounded: a cancel's reason grows by a prefix at each level of a tree it goes down.
        effects.children.append(ChildCancel(step_id, rec.attempt, rec.child, reason[:MESSAGE_CHARS]))


def on_deadline(
    run: RunState,
    workflow: CompiledWorkflow,
    step_id: str,
    spec: SubWorkflow,
    now_ms: int,
    rand: float,
    effects: Effects,
    grace_ms: int,
) -> None:
    """The step's child did not end by ``workflow.timeout``: the child is cancelled and the
    attempt times out (retried only with ``retry_failed``)."""
    rec = run.steps[step_id]
    cancel_child(run, step_id, rec, effects, f"the parent's step {step_id} timed out")
    machine._failed_attempt(
        run,
        workflow,
        step_id,
        ErrorKind.TIMEOUT,
        f"child run {rec.child} did not end within {spec.timeout:g} s",
        spec.retry_failed,
        now_ms,
        rand,
        effects,
        EventType.STEP_TIMED_OUT,
        deadline_grace_ms=grace_ms,
    )


def retryable(spec: SubWorkflow, error_kind: str | None) -> bool:
    """Whether a child's failure may be retried under the step's policy: a throttled start always,
    a failed child only when the step asks (``retry_failed``)."""
    if error_kind == ErrorKind.CHILD_THROTTLED:
        return True
    return spec.retry_failed and error_kind == ErrorKind.CHILD_FAILED


# --- child side (the child's core) ---------------------------------------------------------------


def resolve(definitions: LatestDefinitions, tenant: str, name: str, version: int) -> CompiledWorkflow | None:
    """The trusted definition a child request names (``LATEST``: the newest trusted version)."""
    if version != LATEST:
        return definitions.get(tenant, name, version)
    return next((w for w in definitions.latest_for(tenant) if w.name == name), None)


@dataclass(frozen=True, slots=True)
class Bounds:
    """What a child request is held to on the child's core."""

    max_depth: int  # SWITCHYARD_MAX_SUBWORKFLOW_DEPTH
    max_data_bytes: int  # SWITCHYARD_MAX_TRIGGER_BYTES: the data lives in the child's state record
    pending: int  # the tenant's runs waiting for a slot on this router
    max_pending: int  # the tenant's max_pending_runs


def refusal(
    body: RunRequested, parent: RunParent, found: CompiledWorkflow | None, bounds: Bounds
) -> tuple[ErrorKind, str] | None:
    """Why a child request starts no run (the parent's step fails with it), or ``None``.

    Child requests do not pass intake, whose pending bound pauses a tenant's triggers; without
    one here a tenant's fan-out of calls could queue runs without limit, so a child is refused
    ``child_throttled`` (retried under the step's policy) while the tenant has ``max_pending``
    runs waiting."""
    max_depth, max_data_bytes = bounds.max_depth, bounds.max_data_bytes
    if parent["depth"] > max_depth:
        return (
            ErrorKind.SUBWORKFLOW_TOO_DEEP,
            f"child run of {body['workflow']} would be nested {parent['depth']} deep; the limit is"
            f" {max_depth} (SWITCHYARD_MAX_SUBWORKFLOW_DEPTH)",
        )
    if found is None:
        which = "any version" if body["version"] == LATEST else f"version {body['version']}"
        return (
            ErrorKind.CHILD_UNAVAILABLE,
            f"tenant {body['tenant']} has no published, trusted workflow {body['workflow']!r} ({which});"
            " publish it (or fix the step's workflow name / version)",
        )
    size = len(body["data_json"].encode("utf-8", "surrogatepass"))
    if size > max_data_bytes:
        return (
            ErrorKind.INVALID_INPUT,
            f"the child's inputs are {size} bytes as JSON; a run's trigger data is at most {max_data_bytes}"
            " (SWITCHYARD_MAX_TRIGGER_BYTES): pass less (e.g. a reference to the data)",
        )
    if bounds.pending >= bounds.max_pending:
        return (
            ErrorKind.CHILD_THROTTLED,
            f"tenant {body['tenant']} has {bounds.pending} runs waiting for a slot (max_pending_runs"
            f" {bounds.max_pending}); the child run was not started",
        )
    return None


def refused_result(
    body: RunRequested, parent: RunParent, kind: ErrorKind, message: str, now_ms: int
) -> StepResult:
    """The parent step's failed result for a child request that started no run."""
    return _result(body["tenant"], parent, body["correlation_id"], now_ms, now_ms, kind, message, None)


def outcome(run: RunState, now_ms: int) -> StepResult | None:
    """The parent step's result once child ``run`` ended (None: it has no parent, or is not over).
    Call before the run's state shrinks: a succeeded run's outputs are its steps'."""
    parent = run.parent
    if parent is None or not run.status.terminal:
        return None
    if run.status == RunStatus.SUCCEEDED:
        output: JsonObject = {
            "run_id": run.run_id,
            "workflow": run.workflow,
            "version": run.version,
            "status": run.status.value,
            "outputs": {
                sid: rec.output for sid, rec in run.steps.items() if rec.status == StepStatus.SUCCEEDED
            },
        }
        text = strict_json.dumps_str(output)
        return _result(run.tenant, parent, run.correlation_id, run.created_ms, now_ms, None, None, text)
    if run.status == RunStatus.CANCELLED:
        kind, what = ErrorKind.CHILD_CANCELLED, "was cancelled"
    else:
        kind, what = ErrorKind.CHILD_FAILED, "failed"
    message = f"child run {run.run_id} ({run.workflow} v{run.version}) {what}{_cause(run)}"
    return _result(run.tenant, parent, run.correlation_id, run.created_ms, now_ms, kind, message, None)


def _cause(run: RunState) -> str:
    failed = next(((sid, rec) for sid, rec in run.steps.items() if rec.status == StepStatus.FAILED), None)
    if failed is None:
        return ""
    sid, rec = failed
    return f": step {sid}: {rec.error_kind}: {rec.error_message or ''}"[:MESSAGE_CHARS]


def _result(
    tenant: str,
    parent: RunParent,
    correlation_id: str,
    started_ms: int,
    now_ms: int,
    kind: ErrorKind | None,
    message: str | None,
    output_json: str | None,
) -> StepResult:
    return {
        "run_id": parent["run_id"],
        "tenant": tenant,
        "step_id": parent["step_id"],
        "attempt": parent["attempt"],
        "status": "succeeded" if kind is None else "failed",
        "output_json": output_json,
        "error_kind": None if kind is None else kind.value,
        "error_message": None if message is None else message[:MESSAGE_CHARS],
        "retryable": False,  # the parent's step decides (``retryable``)
        "started_at": started_ms,
        "finished_at": now_ms,
        "correlation_id": correlation_id,
        "executor_id": EXECUTOR_ID,
        "retry_after_ms": None,
    }
