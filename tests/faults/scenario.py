"""One fault scenario end to end: start the engine as processes, load it, inject faults, check invariants.

:func:`run_scenario` owns the sequence every scenario shares — warm-up, faults under load, the end
of the load, waiting (with deadlines) until every triggered run finished and PostgreSQL caught up,
then :func:`~tests.faults.harness.check_invariants` — and asserts that no invariant was violated.
A scenario only supplies its ``faults`` function.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.config import Settings
from tests.faults.harness import (
    Cluster,
    EventTail,
    LoadGenerator,
    Recovery,
    Sink,
    Workload,
    check_invariants,
    executor_progress,
    pg_event_count,
    recovery_figures,
    router_progress,
    wait_for,
    write_results,
)


@dataclass
class Context:
    """What a scenario's ``faults`` function can use."""

    settings: Settings
    database_url: str
    cluster: Cluster
    tail: EventTail
    load: LoadGenerator
    rng: random.Random
    recoveries: list[Recovery] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, recovery: Recovery) -> None:
        with self.lock:
            self.recoveries.append(recovery)

    def wait_progress(self, timeout_s: float = 60) -> float:
        """Seconds until the history grows by at least one committed event."""
        before = self.tail.count()
        return wait_for(lambda: self.tail.count() > before, timeout_s, "progress in the run history")


def kill_and_measure(ctx: Context, name: str, timeout_s: float = 90) -> Recovery:
    """SIGKILL process ``name``, restart it with the same instance id, and time its recovery.

    Recovery is the time from the kill to the next committed progress of that role: for the
    router, a history event created after the kill; for an executor, an event applying a result
    of an attempt that *finished* after the kill; for the projector, a new row in PostgreSQL.
    """
    process = ctx.cluster.processes[name]
    role = process.role
    killed = process.kill()
    process.start()
    killed_ms = int(killed * 1000)
    recovered: float | None = None
    deadline = time.monotonic() + timeout_s
    if role == "projector":
        baseline = pg_event_count(ctx.database_url)
        while time.monotonic() < deadline:
            if pg_event_count(ctx.database_url) > baseline:
                recovered = time.time() - killed
                break
            time.sleep(0.05)
    else:
        predicate = router_progress if role == "router" else executor_progress(killed_ms)
        while time.monotonic() < deadline:
            at = ctx.tail.first_event_after(killed_ms, predicate)
            if at is not None:
                recovered = (at - killed_ms) / 1000
                break
            time.sleep(0.05)
    recovery = Recovery(role, killed, recovered)
    ctx.record(recovery)
    return recovery


def run_scenario(
    name: str,
    settings: Settings,
    database_url: str,
    log_dir: Path,
    faults: Callable[[Context], None],
    *,
    tenants: int = 3,
    rate: float = 4.0,
    seed: int | None = None,
    drain_timeout_s: float = 240,
    instances: int = 1,
    warmup_timeout_s: float = 120,
) -> dict[str, Any]:
    """Run one scenario and assert its invariants; returns the figures (also written as JSON).

    ``instances`` routers (``r1``...), executors (``e1``...) and projectors (``projector``,
    ``projector-p2``...) share the work through their consumer groups."""
    seed = seed if seed is not None else random.randrange(1 << 30)
    started = time.monotonic()
    sink = Sink().start()
    workload = Workload(settings, sink, tenants, seed).setup()
    cluster = Cluster(settings, database_url, log_dir)
    tail = EventTail(settings).start()
    load: LoadGenerator | None = None
    try:
        for i in range(1, instances + 1):
            cluster.start("projector", None if i == 1 else f"p{i}")
            cluster.start("router", f"r{i}")
            cluster.start("executor", f"e{i}")
        load = LoadGenerator(workload, rate, seed).start()
        ctx = Context(settings, database_url, cluster, tail, load, random.Random(seed))
        wait_for(
            lambda: tail.finished(load.triggered()) > 0, warmup_timeout_s, "the first run to finish (warm-up)"
        )
        wait_for(lambda: pg_event_count(database_url) > 0, 60, "the projector's first rows (warm-up)")
        warmup_s = time.monotonic() - started
        fault_started = time.monotonic()
        faults(ctx)
        fault_s = time.monotonic() - fault_started
        load.finish()
        sent = load.triggered()
        drain_started = time.monotonic()
        wait_for(
            lambda: tail.finished(sent) == len(sent) or bool(cluster.check()),
            drain_timeout_s,
            f"all {len(sent)} runs to finish (finished so far: {tail.finished(sent)})",
            interval_s=0.25,
        )
        # Not caught up by the deadline: the invariants below name what PostgreSQL lacks (and any
        # duplicate in Kafka) with every figure, which a timeout here would not.
        with contextlib.suppress(AssertionError):
            wait_for(
                lambda: pg_event_count(database_url) >= tail.distinct() or bool(cluster.check()),
                drain_timeout_s,
                "PostgreSQL to catch up with the history topic",
                interval_s=0.25,
            )
        drain_s = time.monotonic() - drain_started
        crashes = cluster.check()
        figures, violations = check_invariants(settings, database_url, sent, workload, sink, crashes)
        figures.update(
            seed=seed,
            tenants=tenants,
            workflows={f"{w.tenant}/{w.name}": w.steps for w in workload.workflows},
            trigger_rate_per_s=rate,
            trigger_delivery_failures=len(load.failed),
            recovery=recovery_figures(ctx.recoveries),
            seconds={
                "warmup": round(warmup_s, 1),
                "faults": round(fault_s, 1),
                "drain": round(drain_s, 1),
                "total": round(time.monotonic() - started, 1),
            },
            **ctx.extra,
        )
        not_recovered = [r for r in ctx.recoveries if r.recovered_s is None]
        if not_recovered:
            violations.append(f"{len(not_recovered)} kills without recovery within the deadline")
        write_results(name, figures, violations)
        assert not violations, f"{name}: invariants violated:\n  " + "\n  ".join(violations)
        return figures
    finally:
        if load is not None and not load.stop.is_set():
            load.stop.set()
        cluster.stop_all()
        tail.close()
        sink.stop()
