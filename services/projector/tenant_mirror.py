"""Mirrors the compacted tenants registry into the ``tenants`` table, for audit and SQL joins.

Tenants are few and change rarely, so on every registry change the whole table is synchronised
in one transaction (upsert the present ones, delete the tombstoned ones). Tenant ids are checked
by the registry (at most 63 characters); the configuration is made storable like any value the
projector copies (see :mod:`.bounds`: a NUL in a description must not stop the mirror for all).
"""

from __future__ import annotations

import logging
import threading

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert

from services.config import Settings
from services.projector.bounds import MAX_KIND, storable_json, storable_text
from services.projector.db import make_engine
from services.projector.models import TenantRow
from services.registry.tenants import tenants_table
from services.tenancy.config import TenantConfig

log = logging.getLogger(__name__)


def sync_tenants(engine: sa.Engine, tenants: dict[str, TenantConfig]) -> None:
    with engine.begin() as conn:
        for name, config in tenants.items():
            row = {
                "tenant": name,
                "status": storable_text(config.status, MAX_KIND),
                "config": storable_json(config.model_dump(mode="json")),
                "updated_at": sa.func.now(),
            }
            stmt = insert(TenantRow).values(**row)
            conn.execute(stmt.on_conflict_do_update(index_elements=["tenant"], set_=row))
        conn.execute(sa.delete(TenantRow).where(TenantRow.tenant.not_in(list(tenants) or [""])))


def run_tenant_mirror(settings: Settings, stop: threading.Event) -> None:
    """Keep the ``tenants`` table equal to the registry until ``stop`` is set."""
    assert settings.database_url
    engine = make_engine(settings.database_url)
    table = tenants_table(settings).start()
    seen = -1
    try:
        while not stop.is_set():
            if table.version != seen:
                seen = table.version
                try:
                    sync_tenants(engine, dict(table.items()))
                except Exception as exc:  # the mirror must outlive a bad round
                    seen = -1  # retry on the next round
                    log.warning("tenant mirror sync failed", extra={"error": str(exc)})
            stop.wait(0.5)
    finally:
        table.stop()
        engine.dispose()
