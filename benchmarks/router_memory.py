"""``python -m benchmarks.router_memory [--runs N]``: router-core bytes per in-flight and per finished run.

Drives a :class:`~services.router.core.CoreProcessor` in memory (no broker: an outbox that only
measures what it is handed, a fixed definitions catalog, a settable clock) through ``N`` runs of
the 4-step ``deploy/examples/linear-chain.yaml`` with realistic small data (a ~150-byte trigger,
~100-byte step outputs), and reports, per run:

* **memory** (``tracemalloc``, after ``gc.collect()``): the core's heap growth divided by ``N`` —
  run state, queues, timers, indexes — with all runs in flight (first step running), half-way
  (two steps done), and finished (succeeded; and failed, which keeps its replay state);
* **changelog record**: the bytes of each run's latest ``router.state`` record at those points;
* the **worst case** of a finished run: a 200 KB trigger and 4 outputs of 50 KB each.

``--top N`` also lists the source lines the in-flight runs' heap comes from (tracemalloc by line,
per run). The script only uses what the core has had for a long time (``process``, ``tick``,
``partitions``), so it also runs against an older checkout for a before/after comparison.
"""

from __future__ import annotations

import argparse
import gc
import json
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

from confluent_kafka import Message

from services.bus.topics import Topics
from services.bus.txloop import Outbox
from services.config import Settings
from services.contracts import serde
from services.router import core as core_module
from services.router.core import CoreProcessor
from services.router.records import run_id_for
from services.tenancy.config import TenantConfig
from services.workflow.compiled import CompiledWorkflow, compile_workflow
from services.workflow.loader import load_definition_file

TENANT = "acme"
EXAMPLE = Path(__file__).resolve().parents[1] / "deploy" / "examples" / "linear-chain.yaml"
STEPS = ["receive", "enrich", "pause", "done"]
BATCH = 500


class MeasuringOutbox(Outbox):  # an Outbox where the core takes one; no producer, no super().__init__
    """Keeps only the size of each run's latest state record (so it costs no traced memory per run)."""

    def __init__(self, topics: Topics) -> None:
        self.topics = topics
        self.max_record_bytes = 999_000
        self.count = 0
        self.state_bytes: dict[str, int] = {}

    def commit_position(self, topic: str, partition: int, offset: int) -> None:
        pass

    def send(
        self,
        topic: str,
        value: bytes | None,
        key: str | bytes | None = None,
        partition: int | None = None,
        headers: Any = None,
    ) -> None:
        self.count += 1
        if topic == self.topics.router_state and key is not None:
            self.state_bytes[key if isinstance(key, str) else key.decode()] = len(value or b"")


class Catalog:
    def __init__(self, wf: CompiledWorkflow) -> None:
        self.wf = wf

    def get(self, tenant: str, name: str, version: int) -> CompiledWorkflow | None:
        return self.wf if (name, version) == (self.wf.name, self.wf.version) else None

    def latest_for(self, tenant: str) -> list[CompiledWorkflow]:
        return []

    def untrusted_reason(self, tenant: str, workflow: str, version: int) -> str | None:
        return None


class Tenants:
    def __init__(self) -> None:
        self.config = TenantConfig(tenant=TENANT, max_concurrent_runs=10**9)

    def get(self, key: str) -> TenantConfig | None:
        return self.config if key == TENANT else None


class Engine:
    def __init__(self, workflow: CompiledWorkflow | None = None, warm: bool = True) -> None:
        self.workflow = workflow or WORKFLOW
        self.settings = Settings(topic_prefix="bench", internal_partitions=1, kafka_options={})
        self.topics = Topics(self.settings.topic_prefix)
        self.now = 1_000_000.0
        self.core = CoreProcessor(
            self.settings, Catalog(self.workflow), Tenants(), clock=lambda: self.now, rand=lambda: 0.5
        )
        new_partition: Callable[[int], Any] = getattr(self.core, "new_partition", core_module.PartitionState)
        self.core.partitions[0] = new_partition(0)
        self.out = MeasuringOutbox(self.topics)
        self.offset = 0
        if warm:
            self.warm_up()

    def warm_up(self) -> None:
        """A few runs of each outcome first: one-time allocations (metric children, caches) are
        not per-run costs."""
        for i in range(5):
            for outcome in ("warm-ok", "warm-failed"):
                run_id = run_id_for(TENANT, WORKFLOW.name, f"{outcome}-{i}")
                self.feed([request(f"{outcome}-{i}", small_trigger(i))])
                if outcome == "warm-ok":
                    self.feed([result(run_id, s, small_output(s, i)) for s in STEPS])
                else:
                    self.feed([result(run_id, "receive", small_output("receive", i))])
                    self.feed([result(run_id, "enrich", None, ok=False)])

    def feed(self, values: list[bytes]) -> None:
        for i in range(0, len(values), BATCH):
            msgs = []
            for value in values[i : i + BATCH]:
                self.offset += 1
                msgs.append(Message(topic=self.topics.inbox, partition=0, offset=self.offset, value=value))
            self.core.process(msgs, self.out)
            self.core.tick(self.out)
            getattr(self.core, "on_committed", lambda: None)()  # as the loop does after each commit


def request(key: str, data: Any, workflow: CompiledWorkflow | None = None) -> bytes:
    wf = workflow or WORKFLOW
    return serde.encode_inbox(
        "RunRequested",
        {
            "run_id": run_id_for(TENANT, wf.name, key),
            "tenant": TENANT,
            "workflow": wf.name,
            "version": wf.version,
            "event_type": wf.definition.trigger.event,
            "data_json": json.dumps(data),
            "idempotency_key": key,
            "correlation_id": f"corr-{key}",
            "requested_at": 0,
            "source": "bench/0/0",
        },
    )


def result(run_id: str, step: str, output: Any, ok: bool = True) -> bytes:
    return serde.encode_inbox(
        "StepResult",
        {
            "run_id": run_id,
            "tenant": TENANT,
            "step_id": step,
            "attempt": 1,
            "status": "succeeded" if ok else "failed",
            "output_json": json.dumps(output) if ok else None,
            "error_kind": None if ok else "upstream_down",
            "error_message": None if ok else "503 from upstream",
            "retryable": False,
            "started_at": 0,
            "finished_at": 0,
            "correlation_id": "c",
            "executor_id": "e1",
        },
    )


def small_trigger(i: int) -> dict[str, Any]:
    return {
        "message": f"hello from client {i}",
        "client": {"id": f"c-{i:08d}", "name": "Acme Widgets Ltd", "country": "DE", "tier": "gold"},
        "amount": 1234.5,
        "tags": ["new", "priority"],
    }


def small_output(step: str, i: int) -> dict[str, Any]:
    return {"message": f"hello from client {i} (seen by {step})", "ok": True, "id": f"{step}-{i}"}


def traced() -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


def average(values: list[int]) -> float:
    return sum(values) / max(1, len(values))


def top_lines(before: tracemalloc.Snapshot, runs: int, top: int) -> list[tuple[str, float, float]]:
    """The source lines whose allocations grew most since ``before``: (line, bytes and blocks per run)."""
    gc.collect()
    stats = tracemalloc.take_snapshot().compare_to(before, "lineno")
    rows = []
    for stat in stats[:top]:
        frame = stat.traceback[0]
        rows.append((f"{frame.filename}:{frame.lineno}", stat.size_diff / runs, stat.count_diff / runs))
    return rows


def measure(runs: int, top: int = 0) -> dict[str, Any]:
    eng = Engine()
    keys = [f"k-{i}" for i in range(runs)]
    ids = [run_id_for(TENANT, WORKFLOW.name, k) for k in keys]
    requests = [request(k, small_trigger(i)) for i, k in enumerate(keys)]
    results = {s: [result(r, s, small_output(s, i)) for i, r in enumerate(ids)] for s in STEPS}
    failures = [result(r, "enrich", None, ok=False) for r in ids]
    figures: dict[str, Any] = {"runs": runs}
    tracemalloc.start()
    before = tracemalloc.take_snapshot() if top else None  # before the base: not counted per run
    base = traced()
    started = time.perf_counter()
    eng.feed(requests)
    figures["in_flight_bytes"] = (traced() - base) / runs
    if before is not None:
        figures["in_flight_top"] = top_lines(before, runs, top)
    figures["in_flight_record"] = average([eng.out.state_bytes[r] for r in ids])
    eng.feed(results["receive"])
    half = ids[: runs // 2]
    eng.feed(results["enrich"][: runs // 2])  # half the runs two steps in, half failing below
    figures["mid_run_bytes"] = (traced() - base) / runs
    figures["mid_run_record"] = average([eng.out.state_bytes[r] for r in half])
    eng.feed(failures[runs // 2 :])
    eng.feed(results["pause"][: runs // 2])
    eng.feed(results["done"][: runs // 2])
    figures["finished_bytes"] = (traced() - base) / runs  # half succeeded, half failed
    figures["succeeded_record"] = average([eng.out.state_bytes[r] for r in half])
    figures["failed_record"] = average([eng.out.state_bytes[r] for r in ids[runs // 2 :]])
    figures["seconds"] = time.perf_counter() - started
    state = eng.core.partitions[0]
    timers = state.timers
    figures["timer_entries"] = getattr(timers, "queued", None) or len(timers)
    tracemalloc.stop()
    del eng
    gc.collect()
    figures.update(measure_split(runs))
    figures.update(worst_case())
    return figures


def measure_split(runs: int) -> dict[str, Any]:
    """Heap per succeeded run and per failed run, each measured on its own."""
    out: dict[str, Any] = {}
    for outcome in ("succeeded", "failed"):
        eng = Engine()
        keys = [f"{outcome}-{i}" for i in range(runs)]
        ids = [run_id_for(TENANT, WORKFLOW.name, k) for k in keys]
        requests = [request(k, small_trigger(i)) for i, k in enumerate(keys)]
        first = [result(r, "receive", small_output("receive", i)) for i, r in enumerate(ids)]
        if outcome == "succeeded":
            rest = [result(r, s, small_output(s, i)) for s in STEPS[1:] for i, r in enumerate(ids)]
        else:
            rest = [result(r, "enrich", None, ok=False) for r in ids]
        tracemalloc.start()
        base = traced()
        eng.feed(requests)
        eng.feed(first)
        eng.feed(rest)
        out[f"{outcome}_bytes"] = (traced() - base) / runs
        tracemalloc.stop()
        del eng
        gc.collect()
    return out


def worst_case() -> dict[str, Any]:
    """One finished run that carried a 200 KB trigger and 4 outputs of 50 KB."""
    out: dict[str, Any] = {}
    for outcome in ("succeeded", "failed"):
        eng = Engine()
        run_id = run_id_for(TENANT, WORKFLOW.name, outcome)
        tracemalloc.start()
        base = traced()
        eng.feed([request(outcome, {"message": "m", "blob": "x" * 200_000})])
        steps = STEPS if outcome == "succeeded" else STEPS[:3]
        eng.feed([result(run_id, s, {"message": "m", "blob": "y" * 50_000}) for s in steps])
        if outcome == "failed":
            eng.feed([result(run_id, "done", None, ok=False)])
        out[f"worst_{outcome}_bytes"] = traced() - base
        out[f"worst_{outcome}_record"] = eng.out.state_bytes[run_id]
        tracemalloc.stop()
        del eng
        gc.collect()
    return out


WORKFLOW = compile_workflow(load_definition_file(EXAMPLE))


def report(f: dict[str, Any]) -> str:
    rows = [
        ("in flight (first step running)", f["in_flight_bytes"], f["in_flight_record"]),
        ("half-way (two steps done)", f["mid_run_bytes"], f["mid_run_record"]),
        ("finished: succeeded", f["succeeded_bytes"], f["succeeded_record"]),
        ("finished: failed (keeps replay state)", f["failed_bytes"], f["failed_record"]),
        (
            "worst succeeded (200 KB trigger, 4x50 KB outputs)",
            f["worst_succeeded_bytes"],
            f["worst_succeeded_record"],
        ),
        ("worst failed (same, failed at the last step)", f["worst_failed_bytes"], f["worst_failed_record"]),
    ]
    lines = [
        f"router core, {f['runs']} runs of linear-chain ({f['seconds']:.1f} s to drive them);"
        f" timer heap entries left at the end: {f['timer_entries']}",
        "",
        "| run | heap bytes per run | changelog record bytes |",
        "| --- | ---: | ---: |",
    ]
    lines += [f"| {name} | {heap:,.0f} | {record:,.0f} |" for name, heap, record in rows]
    return "\n".join(lines)


def short(path: str) -> str:
    """A source path from the checkout or site-packages on, not the machine's prefix."""
    for marker in ("/services/", "/site-packages/", "/lib/python"):
        if marker in path:
            return marker.strip("/") + "/" + path.split(marker, 1)[1]
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=20_000, help="runs per measurement (default 20,000)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    parser.add_argument(
        "--top", type=int, default=0, help="also list the N source lines the in-flight runs' bytes come from"
    )
    args = parser.parse_args()
    figures = measure(args.runs, args.top)
    print(report(figures))
    if args.top:
        print(f"\nin flight, top {args.top} lines by heap growth (tracemalloc):\n")
        print("| line | bytes per run | blocks per run |\n| --- | ---: | ---: |")
        for line, size, count in figures["in_flight_top"]:
            print(f"| {short(line)} | {size:,.1f} | {count:.2f} |")
    if args.json:
        print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
