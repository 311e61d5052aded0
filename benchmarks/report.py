"""Turn measurements into ratios, target checks, a markdown report and a JSON document."""

from __future__ import annotations

import math
import os
import platform
from typing import Any

import psutil

SWITCHYARD = "switchyard"
BASELINES = ("kafka-floor", "celery-redis", "procrastinate-pg")


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    model = ""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next((ln.split(":", 1)[1].strip() for ln in cpuinfo if ln.startswith("model name")), "")
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
    }


def _find(results: list[dict[str, Any]], system: str, workload: str) -> dict[str, Any] | None:
    return next(
        (r for r in results if r["system"] == system and r["workload"] == workload and "error" not in r), None
    )


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not b or math.isnan(a) or math.isnan(b):
        return None
    return round(a / b, 3)


def baseline_latency(result: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """A baseline's latency figures to compare with Switchyard's: at Switchyard's 50% rate when
    measured (same offered load), else at the baseline's own 50%."""
    same = result.get("same_load")
    if same and "skipped" not in same:
        return same, "same offered load"
    return result["half_load"], "own 50% load"


def ratios(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Switchyard / baseline, per workload both ran: throughput (higher is better for Switchyard)
    and p99 latencies (lower is better for Switchyard; see :func:`baseline_latency`)."""
    rows = []
    for sy in (r for r in results if r["system"] == SWITCHYARD and "error" not in r):
        for baseline in BASELINES:
            other = _find(results, baseline, sy["workload"])
            if other is None:
                continue
            latency, basis = baseline_latency(other)
            mine = sy["half_load"]
            rows.append(
                {
                    "workload": sy["workload"],
                    "baseline": baseline,
                    "steps_per_s": _ratio(
                        sy["saturation"]["steps_per_s"], other["saturation"]["steps_per_s"]
                    ),
                    "first_step_p99": _ratio(mine["first_step_ms_p99"], latency["first_step_ms_p99"]),
                    "completion_p99": _ratio(mine["completion_ms_p99"], latency["completion_ms_p99"]),
                    "latency_basis": basis,
                }
            )
    return rows


def targets(results: list[dict[str, Any]], ratio_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's targets, checked against the chain workload."""
    chain = _find(results, SWITCHYARD, "chain10")

    def figure(section: str, key: str) -> float | None:
        return None if chain is None else float(chain[section][key])

    def ratio_to(baseline: str) -> float | None:
        row = next((r for r in ratio_rows if r["workload"] == "chain10" and r["baseline"] == baseline), None)
        return None if row is None else row["steps_per_s"]

    def with_history() -> float | None:
        value = None if chain is None else chain["saturation"].get("steps_per_s_with_history")
        return None if value is None else float(value)

    def history_over(value: float | None) -> float | None:
        history = with_history()
        return None if history is None or not value else round(history / value, 2)

    def celery_steps() -> float | None:
        row = _find(results, "celery-redis", "chain10")
        return None if row is None or "error" in row else float(row["saturation"]["steps_per_s"])

    def projector_cpu() -> float | None:
        figures = None if chain is None else chain["saturation"].get("resources", {}).get("projector")
        value = None if figures is None else figures.get("cpu_s_per_1k_steps_incl_catch_up")
        return None if value is None else float(value)

    checks: list[tuple[str, float | None, str, float]] = [
        ("no-op steps/s end to end (chain10)", figure("saturation", "steps_per_s"), ">=", 5000),
        ("x Celery+Redis steps/s (chain10)", ratio_to("celery-redis"), ">=", 3.0),
        ("x raw Kafka floor steps/s (chain10)", ratio_to("kafka-floor"), ">=", 0.5),
        ("steps/s with history in PostgreSQL (chain10)", with_history(), ">=", 5000),
        (
            "history-in-PG steps/s x engine steps/s (chain10)",
            history_over(figure("saturation", "steps_per_s")),
            ">=",
            0.9,
        ),
        ("history-in-PG steps/s x Celery+Redis steps/s (chain10)", history_over(celery_steps()), ">=", 3.0),
        ("projector CPU s per 1,000 steps incl. catch-up (chain10)", projector_cpu(), "<=", 0.3),
        (
            "trigger→first-step p99 ms at 50% load",
            figure("half_load", "first_step_ms_p99"),
            "<=",
            50,
        ),
        (
            "10-step completion p99 ms at 50% load",
            figure("half_load", "completion_ms_p99"),
            "<=",
            500,
        ),
    ]
    rows = []
    for name, value, op, goal in checks:
        met = None if value is None else (value >= goal if op == ">=" else value <= goal)
        rows.append({"target": f"{name} {op} {goal:g}", "measured": value, "met": met})
    return rows


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def _pair(a: Any, b: Any) -> str:
    return f"{_fmt(a)} / {_fmt(b)}"


def markdown(doc: dict[str, Any]) -> str:
    """The whole report as markdown (what ``python -m benchmarks run`` prints)."""
    meta, results = doc["meta"], doc["results"]
    m = meta["machine"]
    out = [
        f"## Switchyard benchmarks ({meta['mode']}, {meta['started_at']})",
        "",
        f"Machine: {m['cpus']} cores ({m['cpu_model'] or 'unknown CPU'}), {m['memory_gib']} GiB, {m['os']}, "
        f"Python {m['python']}; Kafka and PostgreSQL on the same machine. Engine settings: "
        + ", ".join(f"{k}={v}" for k, v in meta["engine_settings"].items())
        + f". Command: `{meta['command']}`.",
        "",
        "### Throughput at saturation, latency at 50% of it (open loop)",
        "",
        "| workload | system | steps/s | runs/s | first-step p50 / p99 ms | completion p50 / p99 ms |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        if "error" in r:
            out.append(f"| {r['workload']} | {r['system']} | error: {r['error'][:80]} | | | |")
            continue
        sat, load = r["saturation"], r["half_load"]
        out.append(
            f"| {r['workload']} | {r['system']} | {_fmt(sat['steps_per_s'])} | {_fmt(sat['runs_per_s'])} | "
            f"{_pair(load['first_step_ms_p50'], load['first_step_ms_p99'])} | "
            f"{_pair(load['completion_ms_p50'], load['completion_ms_p99'])} |"
        )
    out += [
        "",
        "### Switchyard ÷ baseline",
        "",
        "Throughput: > 1 means Switchyard is faster. Latency: < 1 means Switchyard is quicker.",
        "",
        "| workload | baseline | steps/s | first-step p99 | completion p99 | latency compared at |",
        "| --- | --- | ---: | ---: | ---: | --- |",
    ]
    for row in doc["ratios"]:
        out.append(
            f"| {row['workload']} | {row['baseline']} | {_fmt(row['steps_per_s'], 2)}x | "
            f"{_fmt(row['first_step_p99'], 2)}x | {_fmt(row['completion_p99'], 2)}x | "
            f"{row['latency_basis']} |"
        )
    same_rows = [r for r in results if "same_load" in r]
    if same_rows:
        out += [
            "",
            "### Baselines at Switchyard's 50% rate (same offered load)",
            "",
            "| workload | system | offered runs/s | first-step p50 / p99 ms | completion p50 / p99 ms |",
            "| --- | --- | ---: | ---: | ---: |",
        ]
        for r in same_rows:
            same = r["same_load"]
            if "skipped" in same:
                out.append(
                    f"| {r['workload']} | {r['system']} | {_fmt(same['offered_runs_per_s'])} | "
                    f"skipped: {same['skipped']} | |"
                )
                continue
            out.append(
                f"| {r['workload']} | {r['system']} | {_fmt(same['offered_runs_per_s'])} | "
                f"{_pair(same['first_step_ms_p50'], same['first_step_ms_p99'])} | "
                f"{_pair(same['completion_ms_p50'], same['completion_ms_p99'])} |"
            )
    out += [
        "",
        "### Targets",
        "",
        "| target | measured | met |",
        "| --- | ---: | --- |",
    ]
    for row in doc["targets"]:
        met = {True: "yes", False: "**no**", None: "-"}[row["met"]]
        out.append(f"| {row['target']} | {_fmt(row['measured'], 2)} | {met} |")
    noisy = _find(results, SWITCHYARD, "noisy20")
    if noisy is not None:
        load = noisy["half_load"]
        out += [
            "",
            "### Noisy neighbour (noisy20: tenant 0 at 20x each of 19 others, 50% load)",
            "",
            "| tenants | first-step p50 / p99 ms | completion p50 / p99 ms |",
            "| --- | ---: | ---: |",
            f"| noisy (1) | {_pair(load['noisy_first_step_ms_p50'], load['noisy_first_step_ms_p99'])} | "
            f"{_pair(load['noisy_completion_ms_p50'], load['noisy_completion_ms_p99'])} |",
            f"| quiet (19) | {_pair(load['quiet_first_step_ms_p50'], load['quiet_first_step_ms_p99'])} | "
            f"{_pair(load['quiet_completion_ms_p50'], load['quiet_completion_ms_p99'])} |",
        ]
    lag_rows = [
        r for r in results if r["system"] == SWITCHYARD and "projector_lag_s_max" in r.get("saturation", {})
    ]
    if lag_rows:
        out += [
            "",
            "### Projector lag during saturation (history → PostgreSQL)",
            "",
            "| workload | lag p50 s | lag max s | catch-up after last run s | steps/s with history in PG |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for r in lag_rows:
            sat = r["saturation"]
            out.append(
                f"| {r['workload']} | {_fmt(sat['projector_lag_s_p50'], 2)} | "
                f"{_fmt(sat['projector_lag_s_max'], 2)} | {_fmt(sat['projector_catch_up_s'], 2)} | "
                f"{_fmt(sat.get('steps_per_s_with_history'))} |"
            )
    out += [
        "",
        "### Resources during saturation",
        "",
        "CPU seconds per 1,000 steps and peak RSS, per service (psutil, children included; `kafka`, "
        "`postgres` are the shared servers, `harness` the load generator and observer; "
        "`(not ours)` is the machine's busy CPU in the window minus all of these: other processes "
        "on a shared machine).",
        "",
        "| workload | system | service | CPU s / 1k steps | same, incl. projector catch-up | peak RSS MiB |",
        "| --- | --- | --- | ---: | ---: | ---: |",
    ]
    for r in results:
        if "error" in r:
            continue
        for service, figures in r["saturation"]["resources"].items():
            out.append(
                f"| {r['workload']} | {r['system']} | {service} | {_fmt(figures['cpu_s_per_1k_steps'], 3)} | "
                f"{_fmt(figures.get('cpu_s_per_1k_steps_incl_catch_up'), 3)} | "
                f"{_fmt(figures['peak_rss_mib'])} |"
            )
        if "unattributed_cpu_s" in r["saturation"]:
            sat = r["saturation"]
            per_k = sat["unattributed_cpu_s"] / sat["steps"] * 1000
            out.append(f"| {r['workload']} | {r['system']} | (not ours) | {_fmt(per_k, 3)} | | - |")
    profile = doc.get("profile")
    if profile and "services" in profile:
        out += [
            "",
            f"### CPU profile of one chain10 saturation run ({profile['profiler']}, "
            f"{profile['runs']} runs, {_fmt(profile['steps_per_s'])} steps/s under the profiler)",
        ]
        for service, summary in profile["services"].items():
            if "error" in summary:
                out += ["", f"**{service}**: profile failed: {summary['error']}"]
                continue
            out += [
                "",
                f"**{service}** ({summary['total']} {summary['unit']}) — own time by function, and by file:",
                "",
                "| own % | function | | own % | file |",
                "| ---: | --- | --- | ---: | --- |",
            ]
            funcs, files = summary["top_own"][:10], summary["top_files"][:10]
            for i in range(max(len(funcs), len(files))):
                f = funcs[i] if i < len(funcs) else {"pct": None, "function": ""}
                g = files[i] if i < len(files) else {"pct": None, "file": ""}
                out.append(f"| {_fmt(f['pct'])} | `{f['function']}` | | {_fmt(g['pct'])} | `{g['file']}` |")
    elif profile and "error" in profile:
        out += ["", f"Profile failed: {profile['error']}"]
    if doc.get("skipped"):
        out += ["", "Skipped: " + "; ".join(doc["skipped"])]
    return "\n".join(out) + "\n"
