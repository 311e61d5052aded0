"""Rebalance storm: router and executor instances scaled 1 → 3 → 1, several times, under load."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.config import Settings
from tests.faults.harness import group_members, scale, wait_for
from tests.faults.scenario import Context, run_scenario

pytestmark = [pytest.mark.integration, pytest.mark.faults, pytest.mark.timeout(scale(300, 3600))]

CYCLES = scale(3, 10)


def wait_group_size(ctx: Context, size: int) -> float:
    """Seconds until the router's two groups and the executor group each have ``size`` stable members."""
    prefix = ctx.settings.topic_prefix
    groups = [f"{prefix}.router.core", f"{prefix}.router.intake", f"{prefix}.executor"]

    def settled() -> bool:
        return all(group_members(ctx.settings, g) == ("STABLE", size) for g in groups)

    return wait_for(settled, 120, f"{groups} to have {size} stable members", interval_s=0.5)


def test_scale_routers_and_executors_1_3_1_repeatedly(
    fault_settings: Settings, database_url: str, log_dir: Path
) -> None:
    def faults(ctx: Context) -> None:
        timings: list[dict[str, float]] = []
        for _ in range(CYCLES):
            for i in (2, 3):
                ctx.cluster.start("router", f"r{i}")
                ctx.cluster.start("executor", f"e{i}")
            up_s = wait_group_size(ctx, 3)
            up_progress_s = ctx.wait_progress()
            ctx.load.stop.wait(ctx.rng.uniform(0.5, 3))  # let partitions work on the new owners a while
            for i in (2, 3):
                ctx.cluster.processes[f"router-r{i}"].terminate()
                ctx.cluster.processes[f"executor-e{i}"].terminate()
            down_s = wait_group_size(ctx, 1)
            down_progress_s = ctx.wait_progress()
            timings.append(
                {
                    "scale_up_settled_s": round(up_s, 2),
                    "progress_after_up_s": round(up_progress_s, 2),
                    "scale_down_settled_s": round(down_s, 2),
                    "progress_after_down_s": round(down_progress_s, 2),
                }
            )
        ctx.extra["storm"] = {"cycles": CYCLES, "timings": timings}

    figures = run_scenario("rebalance_storm", fault_settings, database_url, log_dir, faults)
    assert figures["storm"]["cycles"] == CYCLES
