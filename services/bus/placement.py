"""Partition placement: which partition of the co-partitioned internal topics owns a run.

A run's inbox, commands, events and router-state records all go to the same partition number,
so one router instance owns everything about a run. A tenant's runs live on the tenant's own
*slices*: ``slices`` consecutive partitions starting at a base — derived from the tenant id (a
shared pool: small tenants may hash to the same partition), or pinned in the tenant's config
(``base_partition``: dedicated partitions, when the operator keeps pinned ranges apart). With
one slice (the default) a single router instance sees all of a tenant's runs and enforces its
concurrency limit exactly; with ``k`` slices each slice enforces ``limit / k`` (rounded so the
slices add up to the limit), still without any cross-instance coordination.

Hashes are CRC32: stable across processes and Python versions, unlike ``hash()``.
"""

from __future__ import annotations

import zlib


def tenant_base(tenant: str, partitions: int, pinned: int | None = None) -> int:
    if pinned is not None:
        return pinned % partitions
    return zlib.crc32(tenant.encode()) % partitions


def partition_for(
    tenant: str, run_id: str, partitions: int, slices: int = 1, pinned: int | None = None
) -> int:
    slices = max(1, min(slices, partitions))
    offset = zlib.crc32(run_id.encode()) % slices if slices > 1 else 0
    return (tenant_base(tenant, partitions, pinned) + offset) % partitions


def slice_limit(limit: int, slices: int, slice_index: int) -> int:
    """The share of ``limit`` enforced by one slice; shares differ by at most one and sum to ``limit``."""
    base, extra = divmod(limit, slices)
    return base + (1 if slice_index < extra else 0)


def tenant_partitions(tenant: str, partitions: int, slices: int = 1, pinned: int | None = None) -> list[int]:
    """Every partition of the tenant's slices (where any of its runs may live), in slice order."""
    slices = max(1, min(slices, partitions))
    base = tenant_base(tenant, partitions, pinned)
    return [(base + i) % partitions for i in range(slices)]
