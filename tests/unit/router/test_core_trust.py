"""Runs whose definition loses its trust (key expired or revoked, definition removed) end with a
final event, free their concurrency slot, and let the next pending run start."""

from __future__ import annotations

import pytest

from services.router import core as core_module
from services.router.state import RunStatus
from tests.unit.router.fakes import ONE_STEP, TENANT, Harness, history_problems, workflow

OTHER = workflow(
    """
name: other
version: 1
trigger: {event: go}
steps:
  - {id: b, action: noop}
"""
)
REASON = "key_revoked: key 'k1' was revoked at 2026-11-30T00:00:00Z"


def untrust(h: Harness) -> None:
    h.catalog.untrusted[(TENANT, ONE_STEP.name, ONE_STEP.version)] = REASON


def test_active_and_pending_runs_of_an_untrusted_definition_fail_and_free_their_slot() -> None:
    h = Harness(ONE_STEP, OTHER, max_concurrent_runs=1)
    active = h.start("active", wf=ONE_STEP)
    queued = h.start("queued", wf=ONE_STEP)
    other = h.start("other", wf=OTHER)
    assert [h.state.runs[r].status for r in (active, queued, other)] == [
        RunStatus.RUNNING,
        RunStatus.PENDING,
        RunStatus.PENDING,
    ]
    untrust(h)
    h.tick()
    for run_id, types in (
        (active, ["run_pending", "run_started", "step_scheduled", "step_cancelled", "run_failed"]),
        (queued, ["run_pending", "run_failed"]),
    ):
        events = h.out.events(run_id)
        assert [e["type"] for e in events] == types
        assert events[-1]["detail"]["error_kind"] == "definition_untrusted"
        assert REASON in events[-1]["detail"]["error_message"]
        assert not history_problems(events)
        assert h.state.timers.of_run(run_id) == []
    # The slot the active run held went to the next pending run, of a trusted definition.
    assert h.out.types(other)[:2] == ["run_pending", "run_started"]
    assert h.state.admission.active_by_tenant[TENANT] == 1 and h.state.admission.pending[TENANT] == []
    assert h.state.open_runs.get((TENANT, ONE_STEP.name, 1)) is None
    # Checked again a while later: nothing more to end, nothing written twice.
    sent = len(h.out.sent)
    h.tick(advance_s=5)
    assert len(h.out.sent) == sent


def test_trusted_definitions_are_left_alone() -> None:
    h = Harness(ONE_STEP)
    run_id = h.start("r", wf=ONE_STEP)
    h.tick(advance_s=1)
    assert h.state.runs[run_id].status == RunStatus.RUNNING


def test_the_work_per_tick_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(core_module, "UNTRUSTED_PER_TICK", 2)
    h = Harness(ONE_STEP)
    runs = [h.start(f"r{i}", wf=ONE_STEP) for i in range(5)]
    untrust(h)
    ended = []
    for _ in range(3):
        h.tick()
        ended.append(sum(h.state.runs[r].status == RunStatus.FAILED for r in runs))
    assert ended == [2, 4, 5]


def test_a_late_result_for_a_run_ended_by_lost_trust_is_ignored_with_the_reason() -> None:
    h = Harness(ONE_STEP)
    run_id = h.start("r", wf=ONE_STEP)
    untrust(h)
    h.tick()
    h.feed(h.result(run_id, "a"))
    assert h.out.events(run_id)[-1]["detail"] == {"reason": "run_failed"}
    assert not h.out.dead_letters()
