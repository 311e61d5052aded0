"""``python -m benchmarks.router_history [--runs 1000000] [--batches 200]``: what the router core's
history lookup (durable trigger deduplication, :mod:`services.router.history`) costs on the hot path.

Makes a scratch database (dropped at the end), migrates it, loads ``--runs`` finished runs into
``runs`` with one ``INSERT … SELECT generate_series`` and marks it as the projection of the
benchmark's prefix. Then:

1. times :meth:`PostgresHistory.known` alone for batches of 1, 10, 100 and 500 new run ids (half
   of them in the history), ``--batches`` times each: p50 / p99 per call and per run id;
2. times the router core's ``process`` on batches of 500 run requests (a one-step workflow, real
   encoding, an in-memory outbox), without a history and with this one: the lookup's share of
   the core's own work per batch.
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from typing import Any

import psycopg
from confluent_kafka import Message

from benchmarks.infra import postgres_admin_url, with_dbname
from services.config import Settings
from services.contracts import serde
from services.projector.db import upgrade_database
from services.router.core import CoreProcessor
from services.router.history import NoHistory, PostgresHistory, RunHistory
from services.router.records import run_id_for
from services.tenancy.config import TenantConfig
from services.workflow.compiled import CompiledWorkflow, compile_workflow
from services.workflow.loader import load_definition_text

PREFIX = "bench"
TENANT = "acme"
WORKFLOW = compile_workflow(
    load_definition_text(
        "name: one\nversion: 1\ntrigger: {event: go}\nsteps:\n  - {id: a, action: echo, inputs: {x: 1}}\n",
        filename="one.yaml",
    )
)


def load(url: str, runs: int) -> None:
    with psycopg.connect(url) as conn:
        conn.execute(
            """
            insert into runs (run_id, tenant, workflow, version, state, correlation_id, idempotency_key,
                              created_at, finished_at, updated_at, last_seq)
            select 'run-' || i, 'acme', 'one', 1, 'succeeded', 'c-' || i, 'k-' || i,
                   now(), now(), now(), 5
            from generate_series(1, %s) as i
            """,
            (runs,),
        )
        conn.execute(
            "insert into consumer_offsets (consumer, topic, partition, next_offset) values (%s, %s, 0, 1)",
            ("bench", f"{PREFIX}.events"),
        )
        conn.execute("analyze runs")


def bounded(line: str, width: int = 110) -> str:
    return line if len(line) <= width else line[: width - 1] + "…"


def quantiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def time_known(history: PostgresHistory, url: str, runs: int, batches: int) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        floor = []
        for _ in range(batches):
            started = time.perf_counter()
            conn.execute("select 1").fetchone()
            floor.append(time.perf_counter() - started)
        plan = conn.execute(
            "explain analyze select run_id, tenant, state, finished_at from runs where run_id = any(%s)"
            " and exists (select 1 from consumer_offsets where topic = %s)",
            ([f"run-{i}" for i in range(1, 501)], f"{PREFIX}.events"),
        ).fetchall()
    p50, p99 = quantiles(floor)
    print(f"round-trip floor (psycopg, select 1): p50 {p50 * 1000:.2f} ms, p99 {p99 * 1000:.2f} ms")
    print("plan of a 500-id lookup:\n  " + "\n  ".join(bounded(row[0]) for row in plan) + "\n")
    print("| run ids per batch | p50 ms | p99 ms | p50 µs per run id |")
    print("| ---: | ---: | ---: | ---: |")
    for size in (1, 10, 100, 500):
        samples = []
        for b in range(batches):
            present = [f"run-{(b * size + i) % runs + 1}" for i in range(size // 2)]
            absent = [str(uuid.uuid4()) for _ in range(size - len(present))]
            started = time.perf_counter()
            found = history.known(present + absent)
            samples.append(time.perf_counter() - started)
            assert len(found) == len(present)
        p50, p99 = quantiles(samples)
        print(f"| {size} | {p50 * 1000:.2f} | {p99 * 1000:.2f} | {p50 * 1e6 / size:.1f} |")


class Outbox:
    max_record_bytes = 999_000

    def __init__(self) -> None:
        self.count = 0
        self.positions: dict[tuple[str, int], int] = {}

    def send(self, topic: str, value: bytes | None, **_: Any) -> None:
        self.count += 1

    def commit_position(self, topic: str, partition: int, offset: int) -> None:
        self.positions[(topic, partition)] = offset


class Catalog:
    def get(self, tenant: str, name: str, version: int) -> CompiledWorkflow | None:
        return WORKFLOW

    def latest_for(self, tenant: str) -> list[CompiledWorkflow]:
        return []

    def untrusted_reason(self, tenant: str, workflow: str, version: int) -> str | None:
        return None


class Tenants:
    config = TenantConfig(tenant=TENANT, max_concurrent_runs=1_000_000)

    def get(self, key: str) -> TenantConfig | None:
        return self.config


def request(key: str) -> bytes:
    body = {
        "run_id": run_id_for(TENANT, WORKFLOW.name, key),
        "tenant": TENANT,
        "workflow": WORKFLOW.name,
        "version": WORKFLOW.version,
        "event_type": "go",
        "data_json": '{"n": 1}',
        "idempotency_key": key,
        "correlation_id": f"c-{key}",
        "requested_at": 0,
        "source": "t/0/0",
    }
    return serde.encode_inbox("RunRequested", body)


def time_core(histories: dict[str, RunHistory], batches: int) -> dict[str, list[float]]:
    """Batches of 500 new run requests through one core per history, interleaved (so that the
    machine's load hits both alike)."""
    settings = Settings(topic_prefix=PREFIX, internal_partitions=1, kafka_bootstrap_servers=None)
    cores = {
        label: CoreProcessor(settings, Catalog(), Tenants(), history=h) for label, h in histories.items()
    }
    samples: dict[str, list[float]] = {label: [] for label in cores}
    offset = 0
    for _ in range(batches):
        for label, core in cores.items():
            core.partitions[0] = core.new_partition(0)  # memory stays small: every batch is new runs
            messages = []
            for _ in range(500):
                offset += 1
                value = request(uuid.uuid4().hex)
                messages.append(Message(topic=f"{PREFIX}.inbox", partition=0, offset=offset, value=value))
            started = time.perf_counter()
            core.process(messages, Outbox())  # type: ignore[arg-type]
            samples[label].append(time.perf_counter() - started)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=1_000_000)
    parser.add_argument("--batches", type=int, default=200, help="lookups timed per batch size")
    parser.add_argument("--core-batches", type=int, default=40, help="core batches timed per variant")
    args = parser.parse_args()
    admin = postgres_admin_url()
    name = f"sy_bench_history_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = with_dbname(admin, name)
    try:
        upgrade_database(url)
        started = time.monotonic()
        load(url, args.runs)
        print(f"loaded {args.runs:,} runs in {time.monotonic() - started:.1f} s (database {name})\n")
        history = PostgresHistory(url, f"{PREFIX}.events")
        time_known(history, url, args.runs, args.batches)
        timed = time_core({"no history": NoHistory(), "with the history lookup": history}, args.core_batches)
        print("\n| router core, 500 new run requests per batch | p50 ms | p99 ms |")
        print("| --- | ---: | ---: |")
        for label, samples in timed.items():
            p50, p99 = quantiles(samples)
            print(f"| {label} | {p50 * 1000:.1f} | {p99 * 1000:.1f} |")
        bare, checked = (statistics.median(s) for s in timed.values())
        extra = checked - bare
        print(f"\nlookup share of a batch (p50): {extra * 1000:.1f} ms = {extra / bare:.1%}")
        history.close()
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
