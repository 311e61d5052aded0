"""Smoke check of the benchmark harness: ``python -m benchmarks run --quick`` on the real broker.

Quick mode runs every workload and every baseline, tiny, plus the profiled saturation run. This
test checks that the harness works and reports what it should — the table, the JSON document with
its keys, positive figures — and never how fast anything is (no timed assertions).

The Celery and procrastinate baselines need the ``bench`` extra (``pip install -e '.[bench]'``)
and ``redis-server`` (installed by the harness with apt-get when running as root). Without the
extra, the harness lists those baselines under ``skipped``, and this test checks exactly that.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CORE_SYSTEMS = {"switchyard", "kafka-floor"}
EXTRA_SYSTEMS = {"celery-redis", "procrastinate-pg"}
OWN_SERVICES = {
    "switchyard": {"router", "executor", "projector"},
    "kafka-floor": {"router", "executor"},
    "celery-redis": {"celery-worker", "redis"},
    "procrastinate-pg": {"workers"},
}
EXPECTED_RUNS = {
    "switchyard": {"chain10", "fanout10", "noisy20"},
    "kafka-floor": {"chain10", "fanout10"},
    "celery-redis": {"chain10", "fanout10"},
    "procrastinate-pg": {"chain10"},
}


def _bench_extra_installed() -> bool:
    return all(importlib.util.find_spec(name) is not None for name in ("celery", "redis", "procrastinate"))


def _positive(value: Any) -> bool:
    return isinstance(value, int | float) and not math.isnan(value) and value > 0


@pytest.fixture(scope="module")
def quick_report(
    kafka_bootstrap: str, database_admin_url: str, tmp_path_factory: pytest.TempPathFactory
) -> tuple[dict[str, Any], str, Path]:
    out = tmp_path_factory.mktemp("bench")
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "DATABASE_URL": database_admin_url}
    env.pop("SWITCHYARD_TOPIC_PREFIX", None)
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "run", "--quick", "--output", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert proc.returncode == 0, f"harness failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    doc = json.loads((out / "latest.json").read_text())
    return doc, proc.stdout, out


def test_quick_run_covers_every_system_and_workload(quick_report: tuple[dict[str, Any], str, Path]) -> None:
    doc, _, _ = quick_report
    errors = [f"{r['system']}/{r['workload']}: {r['error']}" for r in doc["results"] if "error" in r]
    assert not errors, errors
    ran: dict[str, set[str]] = {}
    for result in doc["results"]:
        ran.setdefault(result["system"], set()).add(result["workload"])
    expected = CORE_SYSTEMS | (EXTRA_SYSTEMS if _bench_extra_installed() else set())
    assert set(ran) == expected
    for system in expected:
        assert ran[system] == EXPECTED_RUNS[system], system
    if not _bench_extra_installed():
        skipped = " ".join(doc["skipped"])
        assert all(name in skipped for name in EXTRA_SYSTEMS), doc["skipped"]
    assert doc["meta"]["mode"] == "quick"
    assert doc["meta"]["machine"]["cpus"] >= 1


def test_figures_are_present_and_positive(quick_report: tuple[dict[str, Any], str, Path]) -> None:
    doc, _, _ = quick_report
    for result in doc["results"]:
        label = f"{result['system']}/{result['workload']}"
        sat, load = result["saturation"], result["half_load"]
        assert sat["failed_runs"] == 0 and load["failed_runs"] == 0, label
        for key in ("steps_per_s", "runs_per_s", "wall_s"):
            assert _positive(sat[key]), (label, key, sat[key])
        for key in ("first_step_ms_p50", "first_step_ms_p99", "completion_ms_p50", "completion_ms_p99"):
            assert _positive(load[key]), (label, key, load[key])
        assert load["first_step_ms_p50"] <= load["first_step_ms_p99"], label
        assert load["completion_ms_p50"] <= load["completion_ms_p99"], label
        resources = sat["resources"]
        assert OWN_SERVICES[result["system"]] <= set(resources), (label, resources)
        for service in OWN_SERVICES[result["system"]]:
            assert _positive(resources[service]["peak_rss_mib"]), (label, service)
            assert resources[service]["cpu_s_per_1k_steps"] >= 0, (label, service)
        if result["system"] == "switchyard":
            assert sat["projector_lag_s_max"] >= 0 and sat["projector_catch_up_s"] is not None, label
            if result["workload"] == "noisy20":
                assert _positive(load["quiet_completion_ms_p99"]) and _positive(
                    load["noisy_completion_ms_p99"]
                )


def test_ratios_targets_and_profile(quick_report: tuple[dict[str, Any], str, Path]) -> None:
    doc, _, _ = quick_report
    baselines = {r["system"] for r in doc["results"]} - {"switchyard"}
    ratio_pairs = {(row["workload"], row["baseline"]) for row in doc["ratios"]}
    for baseline in baselines:
        for workload in EXPECTED_RUNS[baseline]:
            assert (workload, baseline) in ratio_pairs
    for row in doc["ratios"]:
        assert _positive(row["steps_per_s"]), row
    assert len(doc["targets"]) == 9
    assert all(row["measured"] is not None for row in doc["targets"] if "Celery" not in row["target"])
    profile = doc["profile"]
    assert profile and "error" not in profile, profile
    for service in ("router", "executor", "projector"):
        summary = profile["services"][service]
        assert "error" not in summary, (service, summary)
        assert summary["total"] > 0 and summary["top_own"], (service, summary)


def test_markdown_table_printed_and_saved(quick_report: tuple[dict[str, Any], str, Path]) -> None:
    _, stdout, out = quick_report
    header = "| workload | system | steps/s | runs/s | first-step p50 / p99 ms | completion p50 / p99 ms |"
    assert header in stdout
    assert "| chain10 | switchyard |" in stdout
    assert "### Switchyard ÷ baseline" in stdout and "### Targets" in stdout
    assert (out / "latest.md").read_text().strip() in stdout
    assert list(out.glob("*-quick.json"))
