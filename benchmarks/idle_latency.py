"""``python -m benchmarks idle``: trigger → ``succeeded`` in PostgreSQL after idle, against warm.

A low-traffic tenant meets the engine after seconds or minutes without traffic: every first
trigger pays whatever the clients lost while idle (connections closed, coordinators forgotten,
fetch sessions gone). This workload measures exactly that, as a user sees it:

1. router, executor and projector start as child processes (the engine's default settings, a
   fresh topic prefix and database), one tenant with a 4-step no-op chain;
2. **warm**: ``--warm-runs`` runs one after another, each triggered (plain JSON, as any app or
   ``kcat`` would) as soon as the previous one is ``succeeded`` in PostgreSQL; the median of all
   but the first two is the warm latency;
3. **after idle**: for each of ``--idle`` (seconds, default 5, 30, 120) nothing is sent for that
   long, then one run is triggered; its latency / the warm latency is the figure (target ≤ 1.5).

Latency = from the produce call to the first poll (every 5 ms) that reads the run ``succeeded``
in PostgreSQL. Each run's events (``run_events.at``, the router's and executor's own clocks)
split it per hop: intake (trigger → ``run_pending``), each step (scheduled → executor start →
succeeded), the run's end, and the projector (``run_succeeded`` → visible in PostgreSQL).

``--before REV`` measures a git worktree of REV first, on the same broker and server, so the
figures compare in one run.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from confluent_kafka import Producer

from benchmarks import infra
from benchmarks.harness import Shape, Workload
from benchmarks.projector import worktree
from benchmarks.switchyard_system import WORKFLOW, SwitchyardSystem
from services.bus.clients import plain_producer_config
from services.config import Settings
from services.router.records import run_id_for

CHAIN4 = Workload("chain4", Shape("chain", 4))
DEFAULT_IDLES = (5.0, 30.0, 120.0)
COMMIT_INTERVAL_MS = 100  # the engine's default (SWITCHYARD_COMMIT_INTERVAL_MS)
PARTITIONS = 12  # the engine's default (SWITCHYARD_INTERNAL_PARTITIONS)
POLL_S = 0.005
RUN_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Variant:
    name: str
    tree: Path


def _engine(tree: Path) -> list[str]:
    """The engine's command line, importing ``services`` from ``tree`` (not the editable install)."""
    code = f"import sys; sys.path.insert(0, {str(tree)!r}); from services.cli import main; main()"
    return [sys.executable, "-c", code]


class IdleProbe:
    """Triggers one run at a time and times it to ``succeeded`` in PostgreSQL."""

    def __init__(self, system: SwitchyardSystem, database_url: str) -> None:
        self.system = system
        self.tenant = system.tenants[0]
        self.topic = system.topics.tenant_triggers(self.tenant)
        settings = Settings(kafka_bootstrap_servers=system.bootstrap)
        self.producer = Producer(plain_producer_config(settings, **{"linger.ms": 0}))
        self.conn = psycopg.connect(database_url, autocommit=True)
        self.count = 0

    def close(self) -> None:
        self.producer.flush(10)
        self.conn.close()

    def one(self) -> dict[str, Any]:
        """Trigger one run; its end-to-end latency and its per-hop split (seconds)."""
        self.count += 1
        key = f"idle-{self.count}-{infra.unique('k')}"
        run_id = run_id_for(self.tenant, WORKFLOW, key)
        body = json.dumps({"event_type": "bench.go", "data": {"n": self.count}, "idempotency_key": key})
        sent = time.time()
        self.producer.produce(self.topic, key=key, value=body.encode())
        self.producer.poll(0)
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while True:
            try:
                row = self.conn.execute("select state from runs where run_id = %s", (run_id,)).fetchone()
            except psycopg.errors.UndefinedTable:
                row = None  # the projector has not migrated the database yet
            if row is not None and row[0] == "succeeded":
                done = time.time()
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"run {run_id} not succeeded in PostgreSQL after {RUN_TIMEOUT_S} s")
            self.system._check_alive()  # a dead service must fail the run, not time out
            self.producer.poll(0)
            time.sleep(POLL_S)
        return {"latency_s": round(done - sent, 4), "hops_s": self._hops(run_id, sent, done)}

    def _hops(self, run_id: str, sent: float, done: float) -> dict[str, float]:
        rows = self.conn.execute(
            "select type, step_id, extract(epoch from at), detail from run_events"
            " where run_id = %s order by seq",
            (run_id,),
        ).fetchall()
        hops: dict[str, float] = {}
        previous = sent
        for kind, step, at, detail in rows:
            at = float(at)
            if kind == "step_succeeded" and isinstance(detail, dict) and detail.get("started_at"):
                started = float(detail["started_at"]) / 1000
                hops[f"{step}: scheduled → executor start"] = round(started - previous, 4)
                previous = started
            label = f"{kind}" + (f" {step}" if step else "")
            hops[label] = round(at - previous, 4)
            previous = at
        hops["projector: visible in PostgreSQL"] = round(done - previous, 4)
        return hops


def measure_variant(
    variant: Variant,
    bootstrap: str,
    admin_url: str,
    idles: list[float],
    warm_runs: int,
    log: Callable[[str], None],
) -> dict[str, Any]:
    db_url = infra.fresh_database(admin_url, infra.unique(f"sy_bench_idle_{variant.name[:3]}_"))
    extra_env = {"PYTHONPATH": str(variant.tree)}
    system = SwitchyardSystem(
        bootstrap,
        db_url,
        partitions=PARTITIONS,
        commit_interval_ms=COMMIT_INTERVAL_MS,
        wrapper=_engine(variant.tree),
        extra_env=extra_env,
    )
    system.start(CHAIN4)
    probe = IdleProbe(system, db_url)
    try:
        log(f"{variant.name}: waiting for the first run (services starting)")
        first = _first_run(probe)
        log(f"{variant.name}: first run {first:.2f} s after start; {warm_runs} warm runs")
        warm = [probe.one() for _ in range(warm_runs)]
        warm_s = statistics.median(r["latency_s"] for r in warm[2:] or warm)
        log(f"{variant.name}: warm median {warm_s * 1000:.0f} ms")
        after: list[dict[str, Any]] = []
        for idle in idles:
            log(f"{variant.name}: idle {idle:g} s")
            time.sleep(idle)  # the workload itself: nothing may happen for this long
            result = probe.one()
            result["idle_s"] = idle
            result["x_warm"] = round(result["latency_s"] / warm_s, 2)
            result["load_1m"] = round(os.getloadavg()[0], 1)  # a shared box: say how busy it was
            log(
                f"{variant.name}: after {idle:g} s idle: {result['latency_s'] * 1000:.0f} ms"
                f" ({result['x_warm']}x warm; load average {result['load_1m']})"
            )
            after.append(result)
        return {
            "variant": variant.name,
            "tree": str(variant.tree),
            "warm_s": round(warm_s, 4),
            "warm_runs_s": [r["latency_s"] for r in warm],
            "warm_hops_s": warm[len(warm) // 2]["hops_s"],
            "after_idle": after,
        }
    finally:
        probe.close()
        system.stop()


def _first_run(probe: IdleProbe) -> float:
    """The services are up when a run goes through (the first one also pays the group joins)."""
    started = time.monotonic()
    deadline = started + 180
    while True:
        try:
            probe.one()
            return time.monotonic() - started
        except TimeoutError:
            if time.monotonic() > deadline:
                raise


def run_idle_benchmark(
    before: str | None, idles: list[float], warm_runs: int, log: Callable[[str], None]
) -> dict[str, Any]:
    infra.install_cleanup()
    bootstrap = infra.kafka_bootstrap(log)
    admin_url = infra.postgres_admin_url(log)
    variants = []
    if before:
        variants.append(Variant("before", worktree(before, log)))
    variants.append(Variant("after" if before else "this tree", infra.REPO_ROOT))
    results = [measure_variant(v, bootstrap, admin_url, idles, warm_runs, log) for v in variants]
    return {"before": before, "idles_s": idles, "warm_runs": warm_runs, "results": results}


def markdown(doc: dict[str, Any]) -> str:
    idles = doc["idles_s"]
    head = "| variant | warm (median) | " + " | ".join(f"after {i:g} s idle" for i in idles) + " |"
    lines = [head, "| --- " * (2 + len(idles)) + "|"]
    for r in doc["results"]:
        cells = [
            f"{a['latency_s'] * 1000:,.0f} ms ({a['x_warm']}x, load {a.get('load_1m', '?')})"
            for a in r["after_idle"]
        ]
        lines.append(f"| {r['variant']} | {r['warm_s'] * 1000:,.0f} ms | " + " | ".join(cells) + " |")
    for r in doc["results"]:
        lines += ["", f"Per hop, {r['variant']} (ms): warm run, then each idle run", ""]
        rows = [r["warm_hops_s"], *(a["hops_s"] for a in r["after_idle"])]
        lines.append("| hop | warm | " + " | ".join(f"{i:g} s idle" for i in idles) + " |")
        lines.append("| --- " * (2 + len(idles)) + "|")
        for hop in r["warm_hops_s"]:
            values = [f"{row.get(hop, float('nan')) * 1000:,.0f}" for row in rows]
            lines.append(f"| {hop} | " + " | ".join(values) + " |")
    return "\n".join(lines)


__all__ = ["CHAIN4", "IdleProbe", "markdown", "measure_variant", "run_idle_benchmark"]
