"""``python -m benchmarks.waiting_runs [--runs N] [--no-restore]``: what a *waiting* run costs the router.

A run parked on a step the router runs itself — a durable ``wait``, a ``wait_for`` an event, an
``approval`` — holds no executor slot; what it holds is router memory (its state, its durable
timer, and for ``wait_for`` an entry in the partition's index of waiting runs) and changelog
records that a restarting router reads back. For each kind this measures, with ``N`` runs (default
10,000) parked at their first step, and against the baseline of ``N`` in-flight runs of the 4-step
``deploy/examples/linear-chain.yaml`` (first step running on an executor) measured in the same run:

* **heap bytes per run** (``tracemalloc`` after ``gc.collect()``; the router core in memory, as
  :mod:`benchmarks.router_memory` drives it);
* **changelog record bytes** (the run's ``router.state`` record);
* with a broker (``KAFKA_BOOTSTRAP_SERVERS``; ``--no-restore`` skips it): **restore seconds** of
  the ``N`` runs by a new core, and the floor of reading the same records, as
  :mod:`benchmarks.router_restore` measures them (each restored run must have its timer back, and
  each ``wait_for`` run its entry in the index of waiting runs).
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tracemalloc
from typing import Any

from benchmarks import router_restore
from benchmarks.router_memory import WORKFLOW, Engine, request, small_trigger, traced
from services.router.records import run_id_for
from services.workflow.compiled import CompiledWorkflow, compile_workflow
from services.workflow.loader import load_definition_text

_WAITING_STEP = {
    "wait": "wait: {duration: 86400}",
    "wait_for": (
        "wait_for: {event: document.received, "
        "match: 'event.data.client_id == trigger.data.client.id', timeout: 604800}"
    ),
    "approval": "approval: {prompt: 'Approve the engagement letter?', timeout: 604800}",
}

KINDS = tuple(_WAITING_STEP)


def waiting_workflow(kind: str) -> CompiledWorkflow:
    """A two-step workflow whose first step is a ``kind`` step (parked at once), then a no-op."""
    text = f"""
name: waiting-{kind.replace("_", "-")}
version: 1
trigger: {{event: demo.linear}}
steps:
  - id: first
    {_WAITING_STEP[kind]}
  - id: done
    action: noop
    needs: [first]
"""
    return compile_workflow(load_definition_text(text, f"<waiting-{kind}>"))


def heap_per_run(workflow: CompiledWorkflow, runs: int) -> dict[str, float]:
    """Heap growth and state-record bytes per run, ``runs`` runs started and parked (or running)."""
    eng = Engine(workflow, warm=False)
    eng.feed([request(f"warm-{i}", small_trigger(i), workflow) for i in range(10)])
    keys = [f"k-{i}" for i in range(runs)]
    requests = [request(k, small_trigger(i), workflow) for i, k in enumerate(keys)]
    tracemalloc.start()
    base = traced()
    eng.feed(requests)
    heap = (traced() - base) / runs
    tracemalloc.stop()
    ids = [run_id_for("acme", workflow.name, k) for k in keys]
    record = sum(eng.out.state_bytes[r] for r in ids) / runs
    state = eng.core.partitions[0]
    timers = len(state.timers)
    if timers < runs:
        raise RuntimeError(f"{timers} live timers for {runs} runs: the runs are not parked")
    del eng
    gc.collect()
    return {"heap_bytes": heap, "record_bytes": record}


def measure(runs: int, restore: bool) -> dict[str, Any]:
    cases = {"in flight (linear-chain, baseline)": ("action", WORKFLOW)}
    cases.update({f"waiting: {kind}": (kind, waiting_workflow(kind)) for kind in KINDS})
    figures: dict[str, Any] = {"runs": runs, "cases": {}}
    for name, (kind, workflow) in cases.items():
        print(f"{name}: memory…", file=sys.stderr, flush=True)
        row: dict[str, Any] = heap_per_run(workflow, runs)
        if restore:
            print(f"{name}: restore…", file=sys.stderr, flush=True)
            restored = router_restore.measure(runs, 1, workflow=workflow)
            if kind == "wait_for" and restored["restored_event_waits"] != runs:
                raise RuntimeError(
                    f"{restored['restored_event_waits']} runs back in the event-wait index of {runs}"
                )
            row.update(
                restore_s=restored["restore_s"],
                floor_s=restored["floor_s"],
                restore_over_floor=restored["restore_over_floor"],
            )
        figures["cases"][name] = row
    return figures


def report(f: dict[str, Any]) -> str:
    baseline = f["cases"]["in flight (linear-chain, baseline)"]
    lines = [
        f"router cost of {f['runs']:,} runs parked at their first step (one partition)",
        "",
        "| runs | heap B/run | x baseline | state record B | restore s | floor s | restore ÷ floor |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, row in f["cases"].items():
        restore = (
            f"{row['restore_s']:.2f} | {row['floor_s']:.2f} | {row['restore_over_floor']:.1f}"
            if "restore_s" in row
            else "- | - | -"
        )
        lines.append(
            f"| {name} | {row['heap_bytes']:,.0f} | {row['heap_bytes'] / baseline['heap_bytes']:.2f} |"
            f" {row['record_bytes']:,.0f} | {restore} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=10_000, help="runs per case (default 10,000)")
    parser.add_argument(
        "--no-restore", action="store_true", help="memory only (no broker needed); skip the restore"
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    figures = measure(args.runs, not args.no_restore)
    print(report(figures))
    if args.json:
        print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
