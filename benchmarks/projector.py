"""``python -m benchmarks projector``: the projector alone, before and after a change, in one run.

History of chain10 runs (run_pending, run_started, 10 x step_scheduled + step_succeeded,
run_succeeded: 23 events a run, details as the router writes them) is produced straight into a
history topic; the projector under test (``switchyard projector`` as a child process, from this
checkout or from a git worktree of ``--before``) writes it into a fresh database. Per variant:

1. **catch-up**: a burst of ``--runs`` runs committed in one Kafka transaction while the projector
   is idle and warmed up; *steps/s* = the burst's steps / time from the commit until every
   offset is stored in PostgreSQL; *CPU s per 1,000 steps* of the projector process over that
   window (psutil);
2. **paced load**: ``--rate`` runs/s for ``--load-seconds``, each run's 23 events spread over
   ~2.3 s, committed every 10 ms (as the engine's commit interval); *lag* of each event = when
   PostgreSQL's stored offset of its partition first passes it (polled every 20 ms) minus its
   commit time; p50 / p99 / max.

Both variants run on the same broker and server, one after the other, on fresh topics and
databases (dropped at exit). The other services of the engine are not running: the figures are
the projector's own capacity and latency.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import psycopg
from confluent_kafka import Producer

from benchmarks import infra
from benchmarks.harness import percentile
from services.bus.topics import Topics, admin_client, ensure_topics, internal_specs
from services.config import Settings
from services.contracts.serde import encode

STEPS = 10
EVENTS_PER_RUN = 2 * STEPS + 3
BASE_MS = 1_760_000_000_000


def chain10_events(run_id: str, tenant: str, start_ms: int) -> list[dict[str, Any]]:
    """The history of one succeeded chain10 run, as the router emits it (seq 1..23)."""
    out: list[dict[str, Any]] = []
    corr = f"corr-{run_id[:8]}"

    def add(type_: str, state: str | None, step: str | None, attempt: int | None, detail: Any) -> None:
        seq = len(out) + 1
        out.append(
            {
                "event_id": str(uuid.uuid5(uuid.UUID(run_id), str(seq))),
                "run_id": run_id,
                "tenant": tenant,
                "workflow": "chain10",
                "version": 1,
                "seq": seq,
                "type": type_,
                "step_id": step,
                "attempt": attempt,
                "state": state,
                "at": start_ms + seq * 10,
                "correlation_id": corr,
                "detail_json": json.dumps(detail) if detail is not None else None,
            }
        )

    trigger = {"event_type": "bench.chain10", "data": {"n": 1}, "idempotency_key": run_id}
    add("run_pending", "pending", None, None, {"trigger": trigger, "source": "intake"})
    add("run_started", "running", None, None, None)
    for i in range(STEPS):
        step = f"s{i}"
        at = start_ms + (len(out) + 1) * 10
        add("step_scheduled", "running", step, 1, {
            "action": "noop", "inputs": {"i": i}, "idempotency_key": f"{run_id}:{step}:1",
            "deadline": at + 60_000,
        })  # fmt: skip
        add("step_succeeded", "succeeded", step, 1, {
            "output": {"i": i}, "started_at": at + 2, "finished_at": at + 4, "executor_id": "exec-1",
        })  # fmt: skip
    add("run_succeeded", "succeeded", None, None, None)
    return out


@dataclass
class Variant:
    name: str
    tree: Path  # the checkout whose ``services`` runs as the projector


class History:
    """Produces runs into the history topic in Kafka transactions; remembers each commit time."""

    def __init__(self, settings: Settings, topic: str) -> None:
        self.topic = topic
        self.producer = Producer(
            {
                "bootstrap.servers": settings.kafka_bootstrap_servers,
                "transactional.id": f"bench-history-{uuid.uuid4()}",
                "linger.ms": 2,
                "compression.type": "lz4",
            }
        )
        self.producer.init_transactions(30)
        self.delivered: list[tuple[int, int]] = []

    def _on_delivery(self, err: Any, msg: Any) -> None:
        if err is None:
            self.delivered.append((msg.partition(), msg.offset()))

    def commit(self, events: list[dict[str, Any]]) -> float:
        """Produce ``events`` in one transaction; returns the commit's wall time."""
        self.producer.begin_transaction()
        for ev in events:
            self.producer.produce(self.topic, key=ev["run_id"].encode(), value=encode("RunEvent", ev),
                                  on_delivery=self._on_delivery)  # fmt: skip
        self.producer.commit_transaction(30)
        return time.time()

    def ends(self) -> dict[int, int]:
        last: dict[int, int] = {}
        for partition, offset in self.delivered:
            last[partition] = max(last.get(partition, 0), offset + 1)
        return last


def _stored(conn: psycopg.Connection[Any], topic: str) -> dict[int, int]:
    try:
        rows = conn.execute(
            "SELECT partition, next_offset FROM consumer_offsets WHERE topic = %s", (topic,)
        ).fetchall()
    except psycopg.errors.UndefinedTable:
        conn.rollback()
        return {}
    conn.rollback()  # no snapshot kept between polls
    return {int(p): int(o) for p, o in rows}


def _wait(cond: Callable[[], bool], timeout_s: float, what: str, poll_s: float = 0.02) -> float:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not within {timeout_s}s")
        time.sleep(poll_s)
    return time.time()


def _cpu(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    total = float(times.user + times.system)
    for child in proc.children(recursive=True):
        try:
            t = child.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            continue
    return total


def measure_variant(
    variant: Variant, bootstrap: str, admin_url: str, runs: int, rate: float, load_s: float, partitions: int,
    log: Callable[[str], None],
) -> dict[str, Any]:  # fmt: skip
    prefix = infra.unique(f"pj{variant.name[:3]}")
    db_url = infra.fresh_database(admin_url, f"sy_bench_{prefix}")
    settings = Settings(topic_prefix=prefix, kafka_bootstrap_servers=bootstrap, database_url=db_url,
                        internal_partitions=partitions)  # fmt: skip
    topics = Topics(prefix)
    wanted = {topics.events, topics.dlq}
    ensure_topics(admin_client(settings), [s for s in internal_specs(settings) if s.name in wanted])
    env = {**os.environ, "DATABASE_URL": db_url, "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
           "SWITCHYARD_TOPIC_PREFIX": prefix, "SWITCHYARD_INTERNAL_PARTITIONS": str(partitions),
           "SWITCHYARD_LOG_LEVEL": "WARNING", "PYTHONPATH": str(variant.tree)}  # fmt: skip
    for name in ("SWITCHYARD_DATABASE_URL", "SWITCHYARD_KAFKA_BOOTSTRAP_SERVERS"):
        env.pop(name, None)
    argv = [sys.executable, "-c", "from services.cli import main; main()", "projector"]
    child = infra.PROCESSES.start(f"projector-{variant.name}", argv, env=env, cwd=variant.tree)
    history = History(settings, topics.events)
    conn = psycopg.connect(db_url)
    try:
        # warm-up: the projector is up, migrated, assigned and has written once
        history.commit([e for i in range(5) for e in chain10_events(str(uuid.uuid4()), "acme", BASE_MS + i)])
        ends = history.ends()
        _wait(lambda: _stored(conn, topics.events) == ends, 120, "warm-up projected")
        proc = psutil.Process(child.pid)

        # 1. catch-up burst
        burst = [chain10_events(str(uuid.uuid4()), f"t{i % 4}", BASE_MS + i * 100) for i in range(runs)]
        burst_events = [e for j in range(EVENTS_PER_RUN) for run in burst for e in run[j : j + 1]]
        log(f"{variant.name}: producing a burst of {runs} runs ({len(burst_events)} events)")
        cpu0 = _cpu(proc)
        committed = history.commit(burst_events)
        cpu_at_commit = _cpu(proc)
        ends = history.ends()
        done = _wait(lambda: _stored(conn, topics.events) == ends, 1800, "burst projected")
        cpu1 = _cpu(proc)
        elapsed = done - committed
        steps = runs * STEPS
        log(f"{variant.name}: burst projected in {elapsed:.2f} s")

        # 2. paced load
        lags = _paced(history, conn, topics.events, rate, load_s)
        return {
            "variant": variant.name,
            "tree": str(variant.tree),
            "catch_up_runs": runs,
            "catch_up_events": len(burst_events),
            "catch_up_s": round(elapsed, 3),
            "steps_per_s": round(steps / elapsed, 1),
            "events_per_s": round(len(burst_events) / elapsed, 1),
            "cpu_s_per_1k_steps": round((cpu1 - cpu_at_commit) / (steps / 1000), 3),
            "cpu_s_while_producing": round(cpu_at_commit - cpu0, 3),
            "paced_runs_per_s": rate,
            "paced_steps_per_s": rate * STEPS,
            "paced_seconds": load_s,
            "lag_events": len(lags),
            "lag_ms_p50": round(percentile(lags, 50) * 1000, 1),
            "lag_ms_p99": round(percentile(lags, 99) * 1000, 1),
            "lag_ms_max": round(max(lags, default=0.0) * 1000, 1),
        }
    finally:
        conn.close()
        infra.PROCESSES.stop(child)


def _paced(
    history: History, conn: psycopg.Connection[Any], topic: str, rate: float, load_s: float
) -> list[float]:
    """Open loop: run i starts at i / rate, its events 100 ms apart; a commit every 10 ms."""
    schedule: list[tuple[float, dict[str, Any]]] = []
    for i in range(int(rate * load_s)):
        start = i / rate
        for j, ev in enumerate(chain10_events(str(uuid.uuid4()), f"t{i % 4}", BASE_MS + i)):
            schedule.append((start + j * 0.1, ev))
    schedule.sort(key=lambda item: item[0])
    commits: list[tuple[float, int]] = []  # (commit time, number of delivered records before it)
    poll: list[tuple[float, dict[int, int]]] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            poll.append((time.time(), _stored(conn, topic)))
            time.sleep(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    t0 = time.monotonic()
    i = 0
    first = len(history.delivered)
    watcher.start()
    while i < len(schedule):
        now = time.monotonic() - t0
        due = []
        while i < len(schedule) and schedule[i][0] <= now:
            due.append(schedule[i][1])
            i += 1
        if due:
            history.commit(due)
            commits.append((time.time(), len(history.delivered)))
        time.sleep(max(0.0, 0.01 - (time.monotonic() - t0 - now)))
    ends = history.ends()
    try:
        _wait(lambda: bool(poll) and poll[-1][1] == ends, 600, "paced load projected")
    finally:
        stop.set()
        watcher.join(5)
    # Stored offsets only grow: per partition, the first poll past a record is a bisection.
    seen: dict[int, tuple[list[int], list[float]]] = {}
    for at, stored in poll:
        for partition, next_offset in stored.items():
            offsets, times = seen.setdefault(partition, ([], []))
            offsets.append(next_offset)
            times.append(at)
    lags: list[float] = []
    start = first
    for committed_at, upto in commits:
        for partition, offset in history.delivered[start:upto]:
            offsets, times = seen[partition]
            lags.append(max(0.0, times[bisect_right(offsets, offset)] - committed_at))
        start = upto
    return lags


def worktree(rev: str, log: Callable[[str], None]) -> Path:
    """A detached git worktree of ``rev`` (removed at exit)."""
    path = Path(tempfile.mkdtemp(prefix="sy-bench-before-"))
    subprocess.run(["git", "worktree", "add", "--detach", str(path), rev], cwd=infra.REPO_ROOT, check=True,
                   capture_output=True)  # fmt: skip
    log(f"before: worktree of {rev} at {path}")

    def remove() -> None:
        subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=infra.REPO_ROOT,
                       check=False, capture_output=True)  # fmt: skip

    infra.on_exit(remove)
    return path


def run_projector_benchmark(
    before: str | None, runs: int, rate: float, load_s: float, partitions: int, log: Callable[[str], None]
) -> dict[str, Any]:
    infra.install_cleanup()
    bootstrap = infra.kafka_bootstrap(log)
    admin_url = infra.postgres_admin_url(log)
    variants = []
    if before:
        variants.append(Variant("before", worktree(before, log)))
    variants.append(Variant("after", infra.REPO_ROOT))
    results = [
        measure_variant(v, bootstrap, admin_url, runs, rate, load_s, partitions, log) for v in variants
    ]
    doc: dict[str, Any] = {"before_rev": before, "results": results}
    if len(results) == 2:
        b, a = results
        doc["ratios_after_over_before"] = {
            key: round(a[key] / b[key], 3) if b[key] else None
            for key in ("steps_per_s", "cpu_s_per_1k_steps", "catch_up_s", "lag_ms_p50", "lag_ms_p99")
        }
    return doc


def markdown(doc: dict[str, Any]) -> str:
    cols = [
        ("variant", "variant"),
        ("steps/s (catch-up)", "steps_per_s"),
        ("events/s", "events_per_s"),
        ("catch-up s", "catch_up_s"),
        ("CPU s / 1k steps", "cpu_s_per_1k_steps"),
        ("paced steps/s", "paced_steps_per_s"),
        ("lag p50 ms", "lag_ms_p50"),
        ("lag p99 ms", "lag_ms_p99"),
        ("lag max ms", "lag_ms_max"),
    ]
    lines = ["| " + " | ".join(c for c, _ in cols) + " |", "|" + " --- |" * len(cols)]
    for r in doc["results"]:
        lines.append(
            "| " + " | ".join(f"{r[k]:,}" if isinstance(r[k], float) else str(r[k]) for _, k in cols) + " |"
        )
    ratios = doc.get("ratios_after_over_before")
    if ratios:
        lines.append("")
        lines.append("after ÷ before: " + ", ".join(f"{k} {v}x" for k, v in ratios.items()))
    return "\n".join(lines)
