"""The inbox records of sub-workflows, as the cores write them (the logic: :mod:`.subworkflows`).

Three records, each to the inbox partition of the run it is about, keyed by that run's id and
written in the transaction of the step that decided it:

* a child's ``RunRequested`` (``parent`` set), from the parent's core;
* a cancel ``ControlCommand`` for a child, from the parent's core (requester ``parent:<run id>``;
  its id derived from the child's, so the child's core applies it once);
* the parent step's ``StepResult`` once the child ended (or was refused), from the child's core.

The core forwards these without intake: it wrote them itself, from run state it owns, so they
carry no tenant-controlled identity to check (the tenant is the parent run's).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

from services.bus.clients import headers_for
from services.bus.placement import partition_for
from services.contracts import serde, strict_json
from services.contracts.records import ControlCommand, RunParent, RunRequested, StepResult
from services.router import subworkflows
from services.router.outgoing import Outgoing, checked
from services.router.state import RunState
from services.router.subworkflows import ChildCancel, ChildEffect, ChildStart

#: The inbox partition of a run of a tenant (placement as intake computes it).
Placement = Callable[[str, str], int]
_CANCEL_NAMESPACE = uuid.UUID("c3b0f1d2-7a8e-5b6c-9d0e-1f2a3b4c5d6e")


def placement(tenant_of: Callable[[str], tuple[int, int | None] | None], partitions: int) -> Placement:
    """Where a run lives: the tenant's slices and pinned base (``tenant_of``; None: one slice)."""

    def place(tenant: str, run_id: str) -> int:
        config = tenant_of(tenant)
        slices, base = config if config is not None else (1, None)
        return partition_for(tenant, run_id, partitions, slices, base)

    return place


def child_records(
    run: RunState, children: list[ChildEffect], now_ms: int, inbox: str, place: Placement, limit: int
) -> list[Outgoing]:
    """The child requests and cancels a step of parent ``run`` emitted, checked against ``limit``."""
    out: list[Outgoing] = []
    for child in children:
        if isinstance(child, ChildStart):
            value = serde.encode_inbox("RunRequested", _request(run, child, now_ms))
        else:
            value = serde.encode_inbox("ControlCommand", _cancel(run, child, now_ms))
        headers = headers_for(run.tenant, child.run_id, run.correlation_id)
        partition = place(run.tenant, child.run_id)
        out.append(checked(Outgoing(inbox, value, child.run_id, partition, headers), limit))
    return out


def result_record(result: StepResult, parent: RunParent, inbox: str, limit: int) -> Outgoing:
    """A parent step's result, to the parent run's own inbox partition."""
    value = serde.encode_inbox("StepResult", result)
    headers = headers_for(result["tenant"], parent["run_id"], result["correlation_id"])
    return checked(Outgoing(inbox, value, parent["run_id"], parent["partition"], headers), limit)


def _request(run: RunState, child: ChildStart, now_ms: int) -> RunRequested:
    parent: RunParent = {
        "run_id": run.run_id,
        "step_id": child.step_id,
        "attempt": child.attempt,
        "partition": run.partition,
        "depth": child.depth,
    }
    return {
        "run_id": child.run_id,
        "tenant": run.tenant,
        "workflow": child.workflow,
        "version": subworkflows.LATEST if child.version is None else child.version,
        "event_type": "",  # the child's core sets the child workflow's own trigger event
        "data_json": strict_json.dumps_str(child.inputs),
        "idempotency_key": subworkflows.idempotency_key(run.run_id, child.step_id, child.attempt),
        "correlation_id": run.correlation_id,
        "requested_at": now_ms,
        "source": f"parent:{run.run_id}/{child.step_id}/{child.attempt}",
        "parent": parent,
    }


def _cancel(run: RunState, child: ChildCancel, now_ms: int) -> ControlCommand:
    return {
        "command_id": str(uuid.uuid5(_CANCEL_NAMESPACE, child.run_id)),
        "kind": "cancel",
        "requester": subworkflows.REQUESTER_PREFIX + run.run_id,
        "tenant": run.tenant,
        "run_id": child.run_id,
        "step_id": None,
        "reason": child.reason,
        "correlation_id": run.correlation_id,
        "issued_at": now_ms,
        "filter_json": None,
        "dry_run": False,
        "key_id": None,
        "signature": None,
        "on_behalf_of": None,
    }
