"""Finished runs are small: succeeded runs shrink to a dedupe record at once, failed and cancelled
ones keep their replay state under a per-tenant budget, and timers of finished attempts go."""

from __future__ import annotations

import json

from services.contracts import serde
from services.router import retention
from services.router.records import run_id_for
from services.router.run_store import load_record, reindex
from services.router.state import RunState, RunStatus
from services.router.timers import SWEEP_SLACK
from tests.unit.router.fakes import ONE_STEP, TENANT, Harness, history_problems, workflow


def snapshot(h: Harness, run_id: str) -> RunState:
    return RunState.from_json(serde.decode(h.out.state_records(run_id)[-1].value)[1]["snapshot_json"])


def test_a_succeeded_run_shrinks_to_a_bounded_dedupe_record_and_cannot_be_replayed() -> None:
    h = Harness()
    data = {"message": "m", "blob": "x" * 50_000}
    run_id = h.start("big-trigger", data)
    assert h.out.state_records(run_id)[-1].size > 50_000  # in flight: the trigger is kept
    h.finish(run_id, output_json=json.dumps({"message": "y" * 20_000}))
    assert h.out.types(run_id)[-1] == "run_succeeded"
    assert h.out.state_records(run_id)[-1].size < 1024
    run = h.state.runs[run_id]
    assert run.compacted == retention.SUCCEEDED and run.steps == {} and run.trigger == {}
    assert snapshot(h, run_id) == run
    # Still a dedupe record: the same trigger is a duplicate; a late result is ignored with the reason.
    sent = len(h.out.sent)
    h.feed(h.request("big-trigger", data))
    assert len(h.out.sent) == sent
    h.feed(h.result(run_id, "receive"))
    assert h.out.events(run_id)[-1]["detail"] == {"reason": "run_succeeded"}
    # A replay from a step is refused, saying why.
    h.feed(h.control("replay_run", run_id, step="enrich"))
    refused = h.out.events(run_id)[-1]
    assert refused["type"] == "control_refused"
    assert refused["detail"]["refusal"].startswith("the run's replay state was compacted (succeeded)")
    h.feed(h.control("cancel", run_id))
    assert h.out.events(run_id)[-1]["detail"]["refusal"] == "run is already succeeded"
    assert not history_problems(h.out.events(run_id))


def test_timers_of_finished_attempts_and_runs_are_dropped_from_the_queue() -> None:
    h = Harness(ONE_STEP, max_concurrent_runs=1000)
    runs = [h.start(f"r{i}", wf=ONE_STEP) for i in range(500)]
    assert len(h.state.timers) == 500  # one deadline per running attempt
    for run_id in runs:
        h.feed(h.result(run_id, "a"))
    assert len(h.state.timers) == 0
    assert h.state.timers.queued <= SWEEP_SLACK  # not left queued until their deadline
    assert all(h.state.runs[r].status == RunStatus.SUCCEEDED for r in runs)


def test_a_cancelled_run_drops_its_timers_at_once() -> None:
    h = Harness()
    run_id = h.start("r")
    assert [t.kind for t in h.state.timers.of_run(run_id)] == ["deadline"]
    h.feed(h.control("cancel", run_id))
    assert h.state.timers.of_run(run_id) == [] and len(h.state.timers) == 0


RETRYING = workflow(
    """
name: retrying
version: 1
trigger: {event: go}
steps:
  - {id: a, action: echo, timeout: 5, retry: {max_attempts: 3, initial_backoff: 1, max_backoff: 1, jitter: 0}}
"""
)


def test_a_retry_timer_replaces_the_deadline_of_the_failed_attempt() -> None:
    h = Harness(RETRYING)
    run_id = h.start("r", wf=RETRYING)
    h.feed(h.result(run_id, "a", ok=False, retryable=True))
    assert [(t.kind, t.attempt) for t in h.state.timers.of_run(run_id)] == [("retry", 1)]
    h.tick(advance_s=2)
    assert [(t.kind, t.attempt) for t in h.state.timers.of_run(run_id)] == [("deadline", 2)]
    assert len(h.state.timers) == 1


def failed_run(h: Harness, key: str, size: int) -> str:
    run_id = h.start(key, {"message": "m", "blob": "x" * size}, wf=ONE_STEP)
    h.feed(h.result(run_id, "a", ok=False))
    assert h.out.types(run_id)[-1] == "run_failed"
    return run_id


def test_failed_runs_keep_replay_state_within_a_per_tenant_budget_oldest_shrinking_first() -> None:
    h = Harness(ONE_STEP, max_replay_state_bytes=25_000)
    runs = [failed_run(h, f"f{i}", 10_000) for i in range(4)]
    kept = [r for r in runs if h.state.runs[r].compacted is None]
    assert kept == runs[-2:]  # two fit in 25 kB; the two oldest shrank
    assert all(h.state.runs[r].compacted == retention.BUDGET for r in runs[:2])
    assert h.state.replay_budget.total(TENANT) <= 25_000
    assert all(h.out.state_records(r)[-1].size < 1024 for r in runs[:2])
    h.feed(h.control("replay_run", runs[0]))
    refused = h.out.events(runs[0])[-1]
    assert (
        refused["type"] == "control_refused"
        and "SWITCHYARD_MAX_REPLAY_STATE_BYTES" in refused["detail"]["refusal"]
    )
    h.feed(h.control("replay_run", runs[3]))
    assert h.out.types(runs[3])[-3:] == ["run_replayed", "run_started", "step_scheduled"]
    assert h.state.replay_budget.total(TENANT) < 15_000  # the replayed run keeps no finished state now
    for r in runs:
        assert not history_problems(h.out.events(r))


def test_a_failed_run_alone_over_the_budget_shrinks_at_once() -> None:
    h = Harness(ONE_STEP, max_replay_state_bytes=0)
    run_id = failed_run(h, "f", 100)
    assert h.state.runs[run_id].compacted == retention.BUDGET
    assert snapshot(h, run_id).compacted == retention.BUDGET


def test_finished_runs_expire_after_the_window_with_a_tombstone() -> None:
    h = Harness(ONE_STEP, finished_run_retention_s=60)
    failed = failed_run(h, "f", 100)
    done = h.start("d", wf=ONE_STEP)
    h.feed(h.result(done, "a"))
    h.tick(advance_s=61)
    assert failed not in h.state.runs and done not in h.state.runs
    assert h.state.replay_budget.total(TENANT) == 0
    assert [s.value for s in h.out.state_records(failed)][-1] is None
    assert [s.value for s in h.out.state_records(done)][-1] is None


def test_restore_shrinks_succeeded_runs_of_older_versions_and_applies_the_budget() -> None:
    h = Harness(ONE_STEP, max_replay_state_bytes=15_000)
    runs = [failed_run(h, f"f{i}", 10_000) for i in range(1)]
    done = h.start("d", {"message": "m", "blob": "y" * 5000}, wf=ONE_STEP)
    h.feed(h.result(done, "a"))
    # What an older version wrote for the succeeded run: its whole state.
    old = h.state.runs[done]
    full = RunState(
        old.run_id,
        old.tenant,
        old.workflow,
        old.version,
        0,
        old.correlation_id,
        "d",
        {"event": "go", "data": {"blob": "y" * 5000}},
        old.arrival,
        old.created_ms,
        RunStatus.SUCCEEDED,
        old.seq,
        {},
        old.finished_ms,
    )
    state = h.core.new_partition(0)
    sizes: dict[str, int] = {}
    for r in runs:
        load_record(state, sizes, r.encode(), h.out.state_records(r)[-1].value)
    record = serde.encode(
        "RouterState", {"run_id": done, "tenant": TENANT, "snapshot_json": full.to_json(), "updated_at": 0}
    )
    load_record(state, sizes, done.encode(), record)
    reindex(state, sizes)
    assert state.runs[done].compacted == retention.SUCCEEDED and state.runs[done].trigger == {}
    assert state.runs[runs[0]].compacted is None and state.replay_budget.total(TENANT) == sizes[runs[0]]


def test_the_run_id_is_the_dedupe_key_so_the_compacted_record_drops_the_idempotency_key() -> None:
    h = Harness(ONE_STEP)
    key = "k" * 5000
    run_id = h.start(key, wf=ONE_STEP)
    h.feed(h.result(run_id, "a"))
    assert run_id == run_id_for(TENANT, ONE_STEP.name, key)
    assert h.out.state_records(run_id)[-1].size < 1024
