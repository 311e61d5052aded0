"""Partition placement and how limits split across a tenant's slices."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from services.bus.placement import partition_for, slice_limit, tenant_base


@given(st.integers(1, 1000), st.integers(1, 64))
def test_slice_limits_add_up_and_differ_by_at_most_one(limit: int, slices: int) -> None:
    shares = [slice_limit(limit, slices, i) for i in range(slices)]
    assert sum(shares) == limit
    assert max(shares) - min(shares) <= 1


@given(st.text(min_size=1, max_size=20), st.integers(1, 48), st.integers(1, 8))
def test_runs_stay_on_the_tenants_slices(tenant: str, partitions: int, slices: int) -> None:
    base = tenant_base(tenant, partitions)
    allowed = {(base + i) % partitions for i in range(min(slices, partitions))}
    for n in range(50):
        assert partition_for(tenant, f"run-{n}", partitions, slices) in allowed


def test_pinned_placement_and_single_slice_is_one_partition() -> None:
    assert {partition_for("acme", f"r{n}", 12, 1, pinned=5) for n in range(100)} == {5}
    assert {partition_for("acme", f"r{n}", 12, 3, pinned=11) for n in range(200)} == {11, 0, 1}
    assert len({partition_for("acme", f"r{n}", 12) for n in range(100)}) == 1
