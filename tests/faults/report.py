"""Turn the fault scenarios' result files into the figures table of tests/faults/README.md.

python -m tests.faults.report                # reads tests/faults/results/*.json
python -m tests.faults.report out.txt        # or the ``[faults] <scenario>: {...}`` blocks of a log
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

from tests.faults.harness import RESULTS_DIR

ORDER = ["sigkill", "rebalance_storm", "postgres_restart", "broker_restart"]
HOSTILE = "hostile_tenant"  # its figures have their own shape and table


def load(source: Path | None) -> dict[str, dict[str, Any]]:
    if source is None:
        return {p.stem: json.loads(p.read_text()) for p in sorted(RESULTS_DIR.glob("*.json"))}
    text = "\n".join(line for line in source.read_text().splitlines() if not line.startswith("%"))
    return {
        name: json.loads(block) for name, block in re.findall(r"\[faults\] (\w+): (\{.*?\n\})", text, re.S)
    }


def n(value: float) -> str:
    return f"{value:,}".replace(",", " ")


def faults_cell(name: str, f: dict[str, Any]) -> str:
    if name == "sigkill":
        kills = f["kills"]
        return "SIGKILL " + ", ".join(f"{role} x{count}" for role, count in sorted(kills.items()))
    if name == "rebalance_storm":
        return f"rebalance storm 1 → 3 → 1 x{f['storm']['cycles']}"
    if name == "postgres_restart":
        return f"PostgreSQL restart x{len(f['postgres_restarts'])}"
    return f"broker restart x{len(f['broker_restarts'])}"


def recovery_cell(name: str, f: dict[str, Any]) -> str:
    if name == "sigkill":
        return "; ".join(
            f"{role} {r['p50_s']} s / {r['p99_s']} s ({r['not_recovered']} not recovered)"
            for role, r in sorted(f["recovery"].items())
        )
    if name == "rebalance_storm":
        t = f["storm"]["timings"]
        up = [x["scale_up_settled_s"] for x in t]
        down = [x["scale_down_settled_s"] for x in t]
        progress = max(max(x["progress_after_up_s"], x["progress_after_down_s"]) for x in t)
        return (
            f"scale-up settles in {min(up)}-{max(up)} s, scale-down in {min(down)}-{max(down)} s;"
            f" progress within {progress} s of each"
        )
    if name == "postgres_restart":
        r = f["postgres_restarts"]
        return "; ".join(
            f"outage {x['outage_s']} s, first rows {x['first_rows_after_start_s']} s after" for x in r
        )
    r = f["broker_restarts"]
    return "; ".join(
        f"outage {x['outage_s']} s, first event {x['first_committed_event_after_start_s']} s after" for x in r
    )


def row(name: str, result: dict[str, Any]) -> str:
    f = result["figures"]
    outcomes = f["outcomes"]
    sink = f["sink"]
    bad = [
        f["runs_with_wrong_outcome"],
        f["runs_with_more_than_one_terminal_event"],
        f["runs_with_a_seq_gap"],
        f["step_attempts_committed_twice"] + f["pg_step_attempts_twice"],
        f["crashes"],
    ]
    cells = [
        faults_cell(name, f),
        f"{n(f['runs_triggered'])} / {n(f['runs_completed'])} ({n(outcomes.get('run_succeeded', 0))} ok,"
        f" {n(outcomes.get('run_failed', 0))} failed as designed)",
        f"{n(f['kafka_events_drained'])} = {n(f['pg_distinct_event_ids'])}",
        ", ".join(str(b) for b in bad),
        f"{n(sink['calls'])} / {n(sink['distinct_keys'])} / {n(sink['redelivered_calls'])} /"
        f" {n(sink['effects_applied'])}"
        + (" (once each)" if sink["effects_applied_once"] else " (NOT once each)"),
        recovery_cell(name, f),
        str(len(result["violations"])),
    ]
    return "| " + " | ".join(cells) + " |"


def main(argv: list[str]) -> int:
    results = load(Path(argv[0]) if argv else None)
    if not results:
        print("no results found", file=sys.stderr)
        return 1
    header = [
        "faults",
        "runs triggered / completed",
        "events Kafka = PG (distinct ids)",
        "wrong outcome, >1 terminal, seq gaps, attempts twice, crashes",
        "sink calls / distinct keys / redelivered / effects applied",
        "recovery p50 / p99",
        "violations",
    ]
    generic = {k: v for k, v in results.items() if k != HOSTILE}
    if generic:
        print("| " + " | ".join(header) + " |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for name in sorted(generic, key=lambda s: ORDER.index(s) if s in ORDER else len(ORDER)):
            print(row(name, generic[name]))
    if HOSTILE in results:
        print(hostile_table(results[HOSTILE]))
    return 0


def hostile_table(result: dict[str, Any]) -> str:
    """The hostile-tenant scenario's own table: good's runs and latency, evil's records, /metrics."""
    f = result["figures"]
    good, hostile, m = f["good"], f["hostile"], f["router_metrics"]
    solo, during = good["latency_solo"], good["latency_hostile"]
    cells = [
        f"{n(good['runs_triggered'])} / {n(good['runs_completed'])}"
        f" ({good['runs_not_succeeded']} not ok, {good['runs_touched_by_control']} touched)",
        f"{solo.get('p50_s')} / {solo.get('p99_s')} s → {during.get('p50_s')} / {during.get('p99_s')} s",
        f"{n(hostile['records'])} / {n(hostile['accounted'])} ("
        + ", ".join(f"{k} {n(v)}" for k, v in sorted(hostile["by_how"].items()))
        + ")",
        f"{n(m['bytes_before'])} → {n(m['bytes_after'] or 0)}",
        f"{f['crashes']}, "
        + ", ".join(f"{k} {'ok' if v else 'NOT ok'}" for k, v in f["readyz_at_end"].items()),
        str(len(result["violations"])),
    ]
    header = [
        "good runs triggered / completed",
        "good latency p50 / p99: solo → hostile",
        "hostile records / accounted",
        "router /metrics bytes",
        "crashes, /readyz at the end",
        "violations",
    ]
    return "\n".join(
        [
            "",
            "| " + " | ".join(header) + " |",
            "| " + " | ".join("---" for _ in header) + " |",
            "| " + " | ".join(cells) + " |",
        ]
    )


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
