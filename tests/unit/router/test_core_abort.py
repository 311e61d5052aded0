"""An aborted transaction is undone in memory from the pre-images of the runs it touched.

Property: after any committed history and any uncommitted batch (run requests, results, control
commands, timers and expiry), ``on_abort`` leaves the partition as it was before the batch: the
runs, their timers, slots, queues, open-run index, finished-run expiry and replay-state budget.
Also: one changelog record per run per batch, and a replayed batch after an abort writes what it
would have written the first time.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.contracts import serde
from services.router.records import run_id_for
from services.router.run_store import PartitionState
from services.router.state import RunState, RunStatus
from tests.unit.router.fakes import ONE_STEP, RETRYING, TENANT, TOPICS, WORKFLOWS, Harness

KEYS = ["k1", "k2", "k3", "k4", "k5"]


def snapshot(state: PartitionState) -> dict[str, Any]:
    """Everything the partition holds, in a comparable form (queues as the runs still pending in
    them, in order; finished entries that are still valid; budget members and totals)."""
    runs = state.runs

    def valid(entry: tuple[int, str]) -> bool:
        run = runs.get(entry[1])
        return run is not None and run.status.terminal and run.finished_ms == entry[0]

    pending = {
        tenant: [rid for rid in queue if rid in runs and runs[rid].status == RunStatus.PENDING]
        for tenant, queue in state.admission.pending.items()
    }
    return {
        "runs": {rid: dataclasses.asdict(run) for rid, run in runs.items()},
        "arrivals": state.arrivals,
        "by_tenant": {k: v for k, v in state.admission.active_by_tenant.items() if v},
        "by_workflow": {k: v for k, v in state.admission.active_by_workflow.items() if v},
        "pending": {tenant: queue for tenant, queue in pending.items() if queue},
        "open": {key: set(ids) for key, ids in state.open_runs.items() if ids},
        "timers": {
            rid: sorted((t.due_ms, t.step_id, t.attempt, t.kind) for t in state.timers.of_run(rid))
            for rid in runs
        },
        "live_timers": len(state.timers),
        "finished": sorted({entry for entry in state.finished if valid(entry)}),
        "budget": (
            state.replay_budget.total(TENANT),
            {rid: state.replay_budget.size_of(TENANT, rid) for rid in runs},
        ),
    }


@st.composite
def operation(draw: st.DrawFn) -> tuple[str, Any]:
    return draw(
        st.one_of(
            st.tuples(st.just("request"), st.tuples(st.sampled_from(KEYS), st.sampled_from(WORKFLOWS))),
            st.tuples(st.just("result"), st.booleans()),
            st.tuples(st.just("result"), st.booleans()),
            st.tuples(st.just("control"), st.sampled_from(["cancel", "replay_run", "replay_step"])),
            st.tuples(st.just("tick"), st.sampled_from([0.0, 1.5, 3.0, 40.0])),
        )
    )


def apply(h: Harness, op: tuple[str, Any], draw: Any, *, commit: bool) -> None:
    """One operation; with ``commit`` the harness commits it, else it joins the open batch."""
    kind, arg = op
    value: bytes | None = None
    if kind == "request":
        key, wf = arg
        value = h.request(key, {"message": "m"}, wf=wf)
    elif kind == "result":
        running = sorted(
            (r.run_id, step_id, rec.attempt)
            for r in h.state.runs.values()
            for step_id, rec in r.steps.items()
            if rec.status == "running"
        )
        if not running:
            return
        run_id, step_id, attempt = draw(st.sampled_from(running))
        value = h.result(run_id, step_id, attempt, ok=arg)
    elif kind == "control":
        if not h.state.runs:
            return
        value = h.control(arg, draw(st.sampled_from(sorted(h.state.runs))))
    if value is None:  # a tick
        h.clock.advance(arg)
        h.core.tick(h.out)
    else:
        h.core.process([h.message(value)], h.out)
    if commit:
        h.core.on_committed()


def harness() -> Harness:
    return Harness(
        *WORKFLOWS,
        max_concurrent_runs=2,
        finished_run_retention_s=30,
        max_replay_state_bytes=2_000,
    )


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_an_abort_leaves_the_state_as_it_was_before_the_batch(data: st.DataObject) -> None:
    h = harness()
    for op in data.draw(st.lists(operation(), max_size=25), label="committed"):
        apply(h, op, data.draw, commit=True)
    before = snapshot(h.state)
    batch = data.draw(st.lists(operation(), min_size=1, max_size=12), label="aborted batch")
    for op in batch:
        apply(h, op, data.draw, commit=False)
    h.core.on_abort()
    assert snapshot(h.state) == before
    assert not h.core.store.dirty and h.core.store.touched == 0


def test_a_replayed_batch_writes_what_the_aborted_one_wrote() -> None:
    h = harness()
    first = h.start("k1", wf=RETRYING)
    h.start("k2", wf=RETRYING)
    queued = h.start("k3", wf=ONE_STEP)  # over the tenant's two slots: pending
    assert h.state.runs[queued].status == RunStatus.PENDING
    batch = [h.message(h.result(first, "a", 1, ok=False)), h.message(h.control("cancel", first))]
    sent = len(h.out.sent)

    def transaction() -> None:  # not committed
        h.core.process(batch, h.out)
        h.clock.advance(3.0)
        h.core.tick(h.out)

    transaction()
    aborted = h.out.sent[sent:]
    assert h.out.types(first)[-2:] == ["run_failed", "control_refused"]  # already failed
    h.core.on_abort()
    h.clock.advance(-3.0)
    h.out.sent = h.out.sent[:sent]
    transaction()
    assert h.out.sent[sent:] == aborted  # the command id was forgotten with the abort, too
    assert h.state.runs[queued].status == RunStatus.RUNNING  # the failed run's slot went to it


def test_a_run_changed_many_times_in_a_batch_writes_one_state_record() -> None:
    h = Harness(ONE_STEP)
    run_id = run_id_for(TENANT, ONE_STEP.name, "k")
    # admitted (pending), started, its step's result and the run's success: one batch
    h.feed(h.request("k", {"message": "m"}, wf=ONE_STEP), h.result(run_id, "a"))
    assert h.out.types(run_id)[-1] == "run_succeeded" and len(h.out.types(run_id)) >= 4
    records = h.out.state_records(run_id)
    assert len(records) == 1
    assert records[0].value is not None
    stored = RunState.from_json(serde.decode(records[0].value)[1]["snapshot_json"])
    assert stored == h.state.runs[run_id] and stored.status == RunStatus.SUCCEEDED
    assert [s.topic for s in h.out.sent].count(TOPICS.router_state) == 1
