"""A broker restart (stop, start) during load, on a private broker (never the shared dev broker)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from services.config import Settings
from tests.faults.harness import router_progress, scale, wait_for
from tests.faults.infra import PrivateKafka
from tests.faults.scenario import Context, run_scenario
from tests.fixtures.engine import make_settings

pytestmark = [pytest.mark.integration, pytest.mark.faults, pytest.mark.timeout(scale(300, 1800))]

RESTARTS = scale(1, 3)


@pytest.fixture
def private_kafka(tmp_path: Path) -> Iterator[PrivateKafka]:
    kafka = PrivateKafka.create(tmp_path / "kafka")
    kafka.start(progress=lambda _msg: None)
    yield kafka
    kafka.stop()


def test_broker_restart_during_load(
    private_kafka: PrivateKafka, database_url: str, log_dir: Path, unique: str
) -> None:
    settings: Settings = make_settings(private_kafka.bootstrap, f"b{unique}")

    def faults(ctx: Context) -> None:
        restarts = []
        for _ in range(RESTARTS):
            ctx.wait_progress()
            ctx.load.stop.wait(ctx.rng.uniform(0.5, 3))  # a random instant under load
            stopped = time.time()
            private_kafka.stop()
            down_s = time.time() - stopped
            private_kafka.start(progress=lambda _msg: None)
            back = time.time()
            back_ms = int(back * 1000)

            def committed_after(back_ms: int = back_ms) -> bool:
                return ctx.tail.first_event_after(back_ms, router_progress) is not None

            wait_for(
                committed_after,
                90,
                "a history event committed after the broker restart",
            )
            first = ctx.tail.first_event_after(back_ms, router_progress) or back_ms
            restarts.append(
                {
                    "stop_s": round(down_s, 2),
                    "start_s": round(back - stopped - down_s, 2),
                    "outage_s": round(back - stopped, 2),
                    "first_committed_event_after_start_s": round((first - back_ms) / 1000, 2),
                }
            )
        ctx.extra["broker_restarts"] = restarts

    with psycopg.connect(database_url) as conn:  # the scenario's fresh database is reachable
        conn.execute("select 1")
    figures = run_scenario("broker_restart", settings, database_url, log_dir, faults)
    assert len(figures["broker_restarts"]) == RESTARTS
