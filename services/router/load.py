"""Per-tenant load the core reports and intake reads (pending runs), shared inside one router process.

Intake pauses a tenant whose pending queue is over its bound. The figure is what the core of
*this* process owns; with several router instances a tenant's core slices and its trigger
partitions may live in different processes, and then the trigger rate limit alone bounds the
queue (documented trade-off, see README "Tenancy").
"""

from __future__ import annotations

import threading


class TenantLoad:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[str, int] = {}

    def set_pending(self, pending: dict[str, int]) -> None:
        with self._lock:
            self._pending = dict(pending)

    def pending(self, tenant: str) -> int:
        with self._lock:
            return self._pending.get(tenant, 0)
