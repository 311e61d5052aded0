"""Admission decides which pending runs start, without calling back into the core.

Property: whatever the queue, the limits and the runs already active, ``decide`` starts runs in
arrival order, never past a tenant's or a workflow's limit, and leaves waiting only runs that a
limit (or an untrusted definition) holds back: a reference admission that starts one run at a
time, re-reading the counts after each start, agrees with it.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from services.router.admission import Admission
from services.router.state import RunState, RunStatus

TENANT = "acme"
WORKFLOWS = ["a", "b", "c"]


def run(number: int, workflow: str, status: RunStatus = RunStatus.PENDING) -> RunState:
    return RunState(
        run_id=f"r{number}",
        tenant=TENANT,
        workflow=workflow,
        version=1,
        partition=0,
        correlation_id="c",
        idempotency_key=f"k{number}",
        trigger={},
        arrival=number,
        created_ms=0,
        status=status,
    )


def reference(
    queue: list[str],
    runs: dict[str, RunState],
    active: dict[str, int],
    limits: dict[str, int | None],
    tenant_limit: int,
    untrusted: set[str],
) -> list[str]:
    """The old admission pass: start one at a time, counts re-read after each start."""
    started: list[str] = []
    counts = dict(active)
    for run_id in queue:
        r = runs.get(run_id)
        if r is None or r.status != RunStatus.PENDING or r.workflow in untrusted:
            continue
        if sum(counts.values()) >= tenant_limit:
            break
        limit = limits[r.workflow]
        if limit is not None and counts.get(r.workflow, 0) >= limit:
            continue
        started.append(run_id)
        counts[r.workflow] = counts.get(r.workflow, 0) + 1
    return started


@given(
    st.lists(
        st.tuples(
            st.sampled_from(WORKFLOWS),
            st.sampled_from([RunStatus.PENDING, RunStatus.PENDING, RunStatus.CANCELLED]),
        ),
        max_size=12,
    ),
    st.dictionaries(st.sampled_from(WORKFLOWS), st.integers(0, 3)),
    st.fixed_dictionaries({w: st.one_of(st.none(), st.integers(0, 3)) for w in WORKFLOWS}),
    st.integers(0, 8),
    st.sets(st.sampled_from(WORKFLOWS), max_size=1),
)
def test_decide_agrees_with_starting_one_run_at_a_time(
    queued: list[tuple[str, RunStatus]],
    active: dict[str, int],
    limits: dict[str, int | None],
    tenant_limit: int,
    untrusted: set[str],
) -> None:
    admission = Admission()
    runs = {}
    for number, (workflow, status) in enumerate(queued):
        r = run(number, workflow, status)
        runs[r.run_id] = r
        admission.enqueue(r)
    for workflow, count in active.items():
        for _ in range(count):
            admission.count(run(-1, workflow, RunStatus.RUNNING), +1)
    queue = list(admission.pending.get(TENANT, []))

    def limit_of(r: RunState) -> tuple[int, int | None] | None:
        return None if r.workflow in untrusted else (tenant_limit, limits[r.workflow])

    started = [r.run_id for r in admission.decide(TENANT, runs, limit_of)]
    assert started == reference(queue, runs, active, limits, tenant_limit, untrusted)
    left = admission.pending.get(TENANT, [])
    assert not set(started) & set(left)
    waiting = [rid for rid in queue if runs[rid].status == RunStatus.PENDING and rid not in started]
    assert [rid for rid in left if runs[rid].status == RunStatus.PENDING] == waiting  # order kept


def test_a_status_change_asks_for_admission_when_a_slot_frees_or_the_queue_changes() -> None:
    admission = Admission()
    r = run(1, "a")
    assert admission.moved(r, None, RunStatus.PENDING) and admission.pending[TENANT] == ["r1"]
    assert not admission.moved(r, RunStatus.PENDING, RunStatus.RUNNING)  # takes a slot
    assert admission.active_by_tenant[TENANT] == 1 and admission.active_by_workflow[(TENANT, "a")] == 1
    assert not admission.moved(r, RunStatus.RUNNING, RunStatus.RETRYING)
    assert admission.moved(r, RunStatus.RETRYING, RunStatus.SUCCEEDED)  # frees it
    assert admission.active_by_tenant[TENANT] == 0
    queued = run(2, "a")
    admission.enqueue(queued)
    assert admission.moved(queued, RunStatus.PENDING, RunStatus.CANCELLED)
    assert "r2" not in admission.pending[TENANT]
