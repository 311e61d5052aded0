"""Concurrency admission of one partition: slots per tenant and per workflow, FIFO of pending runs.

A run over its tenant's or its workflow's limit stays ``pending`` and starts, in arrival order,
when a slot frees. This module only keeps the counts and the queues and *decides*: given the runs
and their limits, :meth:`Admission.decide` says which pending runs start now, with the slots they
take counted as if each start succeeded. It never calls back into the core: the core applies the
decision once (:mod:`services.router.core`), and a start that did not take its slot (the run
failed instead) asks for another decision, so no admission pass ever runs inside another.

Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from services.router.state import RunState, RunStatus

ACTIVE = (RunStatus.RUNNING, RunStatus.RETRYING)

#: A run's limits: the tenant's slots and the workflow's (None: unlimited) on this partition; or
#: None when the run cannot start now (its definition is not trusted: the trust check ends it).
Limits = Callable[[RunState], tuple[int, int | None] | None]


@dataclass
class Admission:
    pending: dict[str, list[str]] = field(default_factory=dict)  # tenant -> run ids in arrival order
    active_by_tenant: dict[str, int] = field(default_factory=dict)
    active_by_workflow: dict[tuple[str, str], int] = field(default_factory=dict)

    def count(self, run: RunState, delta: int) -> None:
        self.active_by_tenant[run.tenant] = self.active_by_tenant.get(run.tenant, 0) + delta
        key = (run.tenant, run.workflow)
        self.active_by_workflow[key] = self.active_by_workflow.get(key, 0) + delta

    def enqueue(self, run: RunState) -> None:
        self.pending.setdefault(run.tenant, []).append(run.run_id)

    def drop(self, run: RunState) -> None:
        queue = self.pending.get(run.tenant)
        if queue and run.run_id in queue:
            queue.remove(run.run_id)

    def moved(self, run: RunState, before: RunStatus | None, after: RunStatus) -> bool:
        """Account for a run's status change; True when its tenant's queue may start a run now (a
        slot freed, or a run arrived or left the queue)."""
        admit = False
        if before in ACTIVE and after not in ACTIVE:
            self.count(run, -1)
            admit = True
        elif before not in ACTIVE and after in ACTIVE:
            self.count(run, +1)
        if after == RunStatus.PENDING and before != RunStatus.PENDING:
            self.enqueue(run)
            admit = True
        elif before == RunStatus.PENDING and after.terminal:
            self.drop(run)
            admit = True
        return admit

    def decide(self, tenant: str, runs: Mapping[str, RunState], limits: Limits) -> list[RunState]:
        """The pending runs of ``tenant`` to start now, in arrival order; they leave the queue (as
        do ids of runs no longer pending). Runs over a workflow limit wait without holding up the
        runs behind them; a full tenant holds up the whole queue."""
        queue = self.pending.get(tenant)
        if not queue:
            return []
        by_tenant = self.active_by_tenant.get(tenant, 0)
        by_workflow: dict[str, int] = {}
        start: list[RunState] = []
        kept: list[str] = []
        for index, run_id in enumerate(queue):
            run = runs.get(run_id)
            if run is None or run.status != RunStatus.PENDING:
                continue
            limit = limits(run)
            if limit is None:
                kept.append(run_id)
                continue
            tenant_limit, workflow_limit = limit
            if by_tenant >= tenant_limit:
                kept.extend(queue[index:])
                break
            active = by_workflow.get(run.workflow, self.active_by_workflow.get((tenant, run.workflow), 0))
            if workflow_limit is not None and active >= workflow_limit:
                kept.append(run_id)
                continue
            start.append(run)
            by_tenant += 1
            by_workflow[run.workflow] = active + 1
        self.pending[tenant] = kept
        return start
