"""SIGKILL of the router, an executor and the projector at random instants, many times, under load."""

from __future__ import annotations

import random
import threading
from pathlib import Path

import pytest

from services.config import Settings
from tests.faults.harness import scale
from tests.faults.scenario import Context, kill_and_measure, run_scenario

pytestmark = [pytest.mark.integration, pytest.mark.faults, pytest.mark.timeout(scale(420, 3600))]

KILLS = scale(10, 50)


def kill_repeatedly(ctx: Context, name: str, kills: int, seed: int) -> None:
    """Kill ``name`` ``kills`` times: a random delay, SIGKILL, restart, wait for its recovery."""
    rng = random.Random(seed)
    for _ in range(kills):
        ctx.load.stop.wait(rng.uniform(0.2, 1.5))  # a random instant, not a wait for correctness
        kill_and_measure(ctx, name)


def test_sigkill_router_executor_projector_under_load(
    fault_settings: Settings, database_url: str, log_dir: Path
) -> None:
    """Three killers run side by side (one per role), each killing its process ``KILLS`` times."""

    def faults(ctx: Context) -> None:
        names = ["router-r1", "executor-e1", "projector"]
        threads = [
            threading.Thread(target=kill_repeatedly, args=(ctx, name, KILLS, ctx.rng.randrange(1 << 30)))
            for name in names
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        ctx.extra["kills"] = {name: KILLS for name in names}

    figures = run_scenario("sigkill", fault_settings, database_url, log_dir, faults)
    assert all(v["kills"] == KILLS for v in figures["recovery"].values())
