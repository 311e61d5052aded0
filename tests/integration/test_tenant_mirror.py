"""The projector mirrors the tenants registry into PostgreSQL."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest

from services.bus.topics import admin_client, ensure_topics, internal_specs
from services.projector.runner import run_projector
from services.tenancy.admin import save_tenant
from services.tenancy.config import TenantConfig
from tests.fixtures.engine import make_settings

pytestmark = pytest.mark.integration


def _rows(url: str) -> dict[str, tuple[str, int]]:
    with psycopg.connect(url) as conn:
        try:
            rows = conn.execute(
                "select tenant, status, (config->>'max_concurrent_runs')::int from tenants"
            ).fetchall()
        except psycopg.errors.UndefinedTable:
            return {}
    return {r[0]: (r[1], r[2]) for r in rows}


def wait_rows(url: str, expected: dict[str, tuple[str, int]], timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _rows(url) == expected:
            return
        time.sleep(0.1)
    raise AssertionError(f"tenants table is {_rows(url)}, expected {expected}")


def test_tenants_registry_is_mirrored(kafka_bootstrap: str, database_url: str, unique: str) -> None:
    settings = make_settings(kafka_bootstrap, f"m{unique}", database_url=database_url)
    ensure_topics(admin_client(settings), internal_specs(settings))
    save_tenant(settings, TenantConfig(tenant="acme", max_concurrent_runs=7))
    stop = threading.Event()
    thread = threading.Thread(target=run_projector, args=(settings, stop), daemon=True)
    thread.start()
    try:
        wait_rows(database_url, {"acme": ("active", 7)})
        save_tenant(settings, TenantConfig(tenant="acme", max_concurrent_runs=7, status="suspended"))
        # jsonb refuses NUL: the mirror stores it escaped instead of stopping for every tenant
        save_tenant(settings, TenantConfig(tenant="beta", max_concurrent_runs=2, operators=["ops\x00x"]))
        wait_rows(database_url, {"acme": ("suspended", 7), "beta": ("active", 2)})
        with psycopg.connect(database_url) as conn:
            row = conn.execute("select config->'operators' from tenants where tenant = 'beta'").fetchone()
        assert row is not None and row[0] == ["ops\\u0000x"]
    finally:
        stop.set()
        thread.join(30)
