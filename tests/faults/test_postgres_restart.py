"""A PostgreSQL restart during load, on a private embedded server (never the shared one)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.config import Settings
from tests.faults.harness import pg_event_count, scale, wait_for
from tests.faults.infra import PrivatePostgres
from tests.faults.scenario import Context, run_scenario

pytestmark = [pytest.mark.integration, pytest.mark.faults, pytest.mark.timeout(scale(300, 1800))]

RESTARTS = scale(1, 3)


@pytest.fixture
def private_postgres(tmp_path: Path) -> Iterator[tuple[PrivatePostgres, str]]:
    server = PrivatePostgres(tmp_path / "pg")
    url = server.start()
    yield server, url
    server.stop()


def test_postgres_restart_during_load(
    private_postgres: tuple[PrivatePostgres, str], fault_settings: Settings, log_dir: Path
) -> None:
    server, url = private_postgres

    def faults(ctx: Context) -> None:
        restarts = []
        for _ in range(RESTARTS):
            wait_for(lambda: pg_event_count(url) > 0, 60, "rows in PostgreSQL")
            ctx.load.stop.wait(ctx.rng.uniform(0.5, 3))  # a random instant under load
            stopped = time.time()
            stop_s = server.stop()
            ctx.load.stop.wait(ctx.rng.uniform(2, 5))  # the database stays down a while
            server.start()
            back = time.time()
            baseline = pg_event_count(url)

            def written(baseline: int = baseline) -> bool:
                return pg_event_count(url) > baseline

            wait_for(written, 120, "the projector to write after the restart")
            restarts.append(
                {
                    "stop_s": round(stop_s, 2),
                    "outage_s": round(back - stopped, 2),
                    "first_rows_after_start_s": round(time.time() - back, 2),
                }
            )
        ctx.extra["postgres_restarts"] = restarts

    figures = run_scenario("postgres_restart", fault_settings, url, log_dir, faults)
    assert len(figures["postgres_restarts"]) == RESTARTS
