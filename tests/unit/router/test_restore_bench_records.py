"""The restore benchmark's records (``benchmarks.router_restore``) are what the run store loads:
every run comes back in flight, on its partition, with its deadline timer."""

from __future__ import annotations

import pytest

from benchmarks import router_restore
from benchmarks.router_restore import build_records, settings_for, tenants_for
from services.bus.placement import tenant_base
from services.router.run_store import PartitionState, load_record, reindex
from services.router.state import RunStatus


def test_the_benchmark_records_restore_as_in_flight_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(router_restore, "CHUNK", 100)  # several building cores, as for a large N
    runs, partitions = 300, 3
    records = [r for batch in build_records(settings_for("unit-bench", partitions), runs) for r in batch]
    assert len(records) == runs and len({key for _, key, _ in records}) == runs
    states = {n: PartitionState(n) for n in range(partitions)}
    sizes: dict[int, dict[str, int]] = {n: {} for n in range(partitions)}
    for partition, key, value in records:
        load_record(states[partition], sizes[partition], key.encode(), value)
    for number, state in states.items():
        reindex(state, sizes[number])
        assert state.runs and all(run.partition == number for run in state.runs.values())
        assert all(tenant_base(run.tenant, partitions) == number for run in state.runs.values())
        assert all(run.status == RunStatus.RUNNING for run in state.runs.values())
        assert len(state.timers) == len(state.runs)  # the first step's deadline
        assert state.admission.active_by_tenant == {tenants_for(partitions)[number]: len(state.runs)}
    assert sum(len(s.runs) for s in states.values()) == runs
    # Arrival order goes on from one building core to the next: unique within each partition.
    for state in states.values():
        assert len({run.arrival for run in state.runs.values()}) == len(state.runs)
