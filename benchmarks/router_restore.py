"""``python -m benchmarks.router_restore --runs N [--partitions P]``: how long a router takes to read
``N`` in-flight runs back from its changelog, against the floor of reading the same records.

It needs only the broker in ``KAFKA_BOOTSTRAP_SERVERS`` (no PostgreSQL):

1. **records**: a :class:`~services.router.core.CoreProcessor` in memory (the workflow catalog
   of ``benchmarks.router_memory``, a fixed clock) starts ``N`` runs of the 4-step
   ``deploy/examples/linear-chain.yaml`` with a ~150-byte trigger, spread over ``P`` tenants
   placed on the ``P`` partitions; the ``router.state`` records its outbox is handed are the
   changelog records (each run in flight: its first step running, a deadline timer set).
   They are produced to a fresh, uniquely named topic prefix's router-state topic in
   transactions of 500 records (the engine's batch), as the core's loop writes them;
2. **floor**: a plain consumer (the restore's client settings, read committed) reads those
   partitions from the beginning to their end; no decoding;
3. **restore**: a new core is assigned the partitions and its first ``tick`` restores them
   (:func:`services.router.restore.read_changelog` feeding the run store's ``load_record``, then
   ``reindex``: slots, open runs, timers), as on a rebalance. Its runs and live timers are counted
   (each must equal ``N``).

It prints a table (seconds, runs/s, restore ÷ floor, bytes per record) and deletes its topics.
The machine may be shared: the ratio to the floor, measured in the same run, is the figure to
read. ``--profile FILE`` writes a cProfile of the restore alone.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, Producer, TopicPartition

from benchmarks.router_memory import WORKFLOW, Catalog, small_trigger
from services.bus.clients import transactional_producer_config
from services.bus.placement import tenant_base
from services.bus.topics import Topics, admin_client, ensure_topics, internal_specs
from services.bus.txloop import Outbox
from services.config import Settings
from services.contracts import serde
from services.router import restore as restore_module
from services.router.core import CoreProcessor
from services.router.records import run_id_for
from services.tenancy.config import TenantConfig
from services.workflow.compiled import CompiledWorkflow

CLOCK_S = 1_000_000.0  # the cores' clock: no deadline of a run started at it is due at it
BATCH = 500  # runs per core batch, and records per produced transaction
CHUNK = 10_000  # runs per building core (memory stays bounded at any N)

#: A changelog record: partition, key (the run id), value.
Record = tuple[int, str, bytes]


def tenants_for(partitions: int) -> list[str]:
    """One tenant per partition, each placed on its own (a tenant's runs share one partition)."""
    names: dict[int, str] = {}
    i = 0
    while len(names) < partitions:
        name = f"bench-{i}"
        names.setdefault(tenant_base(name, partitions), name)
        i += 1
    return [names[p] for p in range(partitions)]


class Tenants:
    def __init__(self, names: list[str]) -> None:
        self.configs = {n: TenantConfig(tenant=n, max_concurrent_runs=10**9) for n in names}

    def get(self, key: str) -> TenantConfig | None:
        return self.configs.get(key)


class CapturingOutbox(Outbox):  # an Outbox where the core takes one; no producer, no super().__init__
    """Keeps the router-state records it is handed; everything else is dropped."""

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self.max_record_bytes = 999_000
        self.records: list[Record] = []

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
        if topic == self.topic and value is not None and key is not None and partition is not None:
            self.records.append((partition, key if isinstance(key, str) else key.decode(), value))


def settings_for(prefix: str, partitions: int) -> Settings:
    return Settings(
        topic_prefix=prefix,
        internal_partitions=partitions,
        kafka_bootstrap_servers=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", ""),
        kafka_options={},
    )


def new_core(settings: Settings, tenants: list[str], workflow: CompiledWorkflow = WORKFLOW) -> CoreProcessor:
    return CoreProcessor(
        settings, Catalog(workflow), Tenants(tenants), clock=lambda: CLOCK_S, rand=lambda: 0.5
    )


def build_records(
    settings: Settings, runs: int, workflow: CompiledWorkflow = WORKFLOW
) -> Iterator[list[Record]]:
    """The changelog records of ``runs`` in-flight runs, a batch at a time, as a core writes them."""
    partitions = settings.internal_partitions
    tenants = tenants_for(partitions)
    topics = Topics(settings.topic_prefix)
    arrivals = [0] * partitions
    offset = 0
    for first in range(0, runs, CHUNK):
        core = new_core(settings, tenants, workflow)
        for number in range(partitions):
            core.partitions[number] = core.new_partition(number)
            core.partitions[number].arrivals = arrivals[number]  # FIFO order goes on across chunks
        for start in range(first, min(first + CHUNK, runs), BATCH):
            out = CapturingOutbox(topics.router_state)
            msgs = []
            for i in range(start, min(start + BATCH, runs, first + CHUNK)):
                offset += 1
                partition = i % partitions
                value = request(tenants[partition], f"k-{i}", i, workflow)
                msgs.append(Message(topic=topics.inbox, partition=partition, offset=offset, value=value))
            core.process(msgs, out)
            core.tick(out)
            core.on_committed()
            yield out.records
        arrivals = [core.partitions[n].arrivals for n in range(partitions)]


def request(tenant: str, key: str, i: int, workflow: CompiledWorkflow = WORKFLOW) -> bytes:
    return serde.encode_inbox(
        "RunRequested",
        {
            "run_id": run_id_for(tenant, workflow.name, key),
            "tenant": tenant,
            "workflow": workflow.name,
            "version": workflow.version,
            "event_type": workflow.definition.trigger.event,
            "data_json": json.dumps(small_trigger(i)),
            "idempotency_key": key,
            "correlation_id": f"corr-{key}",
            "requested_at": 0,
            "source": "bench/0/0",
        },
    )


@dataclass
class Produced:
    records: int = 0
    value_bytes: int = 0
    key_bytes: int = 0


def produce(
    settings: Settings,
    runs: int,
    progress: Callable[[str], None],
    workflow: CompiledWorkflow = WORKFLOW,
) -> Produced:
    conf = transactional_producer_config(settings, f"{settings.topic_prefix}.restore-bench")
    producer = Producer(conf)
    producer.init_transactions(30)
    topic = Topics(settings.topic_prefix).router_state
    done = Produced()
    started = time.monotonic()
    for batch in build_records(settings, runs, workflow):
        producer.begin_transaction()
        for partition, key, value in batch:
            producer.produce(topic, value, key.encode(), partition=partition)
            producer.poll(0)
            done.records += 1
            done.value_bytes += len(value)
            done.key_bytes += len(key)
        producer.commit_transaction(60)
        if done.records % 10_000 < BATCH or done.records == runs:
            rate = done.records / max(1e-9, time.monotonic() - started)
            progress(f"\rproducing: {done.records:,}/{runs:,} records ({rate:,.0f}/s)")
    progress("\n")
    producer.flush(60)
    return done


def read_floor(settings: Settings) -> tuple[float, int]:
    """Seconds and records of a plain read of every router-state partition, beginning to end, with
    the restore's client settings and batch wait (an older checkout's: its settings, 0.5 s)."""
    reader_config = getattr(restore_module, "reader_config", None)
    if reader_config is not None:
        conf = reader_config(settings, "floor")
    else:
        conf = settings.kafka_config()
        conf.update(
            {
                "group.id": f"{settings.topic_prefix}.floor",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
                "enable.partition.eof": True,
            }
        )
    batch = getattr(restore_module, "CONSUME_BATCH", 1000)
    wait_s = getattr(restore_module, "CONSUME_WAIT_S", 0.5)
    ready = getattr(restore_module, "consume_ready", None)  # how the restore reads, where it has it
    topic = Topics(settings.topic_prefix).router_state
    numbers = list(range(settings.internal_partitions))
    started = time.perf_counter()
    consumer = Consumer(conf)
    count = 0
    try:
        consumer.assign([TopicPartition(topic, n, OFFSET_BEGINNING) for n in numbers])
        remaining = set(numbers)
        while remaining:
            messages = ready(consumer, batch, wait_s) if ready else consumer.consume(batch, wait_s)
            for msg in messages:
                err = msg.error()
                if err is None:
                    count += 1
                elif err.code() == KafkaError._PARTITION_EOF:
                    remaining.discard(msg.partition() or 0)
    finally:
        consumer.close()
    return time.perf_counter() - started, count


@dataclass
class Restored:
    seconds: float
    runs: int
    timers: int
    waiting_for_events: int = 0  # entries of the index of runs waiting for an event (wait_for)


def restore(settings: Settings, profile: str | None, workflow: CompiledWorkflow = WORKFLOW) -> Restored:
    """A new core restores every partition on its first tick, as after an assignment."""
    core = new_core(settings, tenants_for(settings.internal_partitions), workflow)
    topics = Topics(settings.topic_prefix)
    core.on_assigned([TopicPartition(topics.inbox, n) for n in range(settings.internal_partitions)])
    out = CapturingOutbox(topics.router_state)
    profiler = cProfile.Profile() if profile else None
    started = time.perf_counter()
    if profiler is not None:
        profiler.enable()
    core.tick(out)
    if profiler is not None:
        profiler.disable()
    seconds = time.perf_counter() - started
    if profiler is not None and profile:
        profiler.dump_stats(profile)
    runs = sum(len(state.runs) for state in core.partitions.values())
    timers = sum(len(state.timers) for state in core.partitions.values())
    waiting = sum(len(getattr(state, "waits", ())) for state in core.partitions.values())
    if out.records:
        raise RuntimeError(f"the restore wrote {len(out.records)} state records; a restore writes none")
    return Restored(seconds, runs, timers, waiting)


def delete_topics(settings: Settings) -> None:
    admin = admin_client(settings)
    names = [spec.name for spec in internal_specs(settings)]
    for future in admin.delete_topics(names, operation_timeout=30).values():
        try:
            future.result(timeout=60)
        except Exception as exc:  # reported, not fatal: the figures are measured
            print(f"could not delete a topic: {exc}", file=sys.stderr)


def measure(
    runs: int, partitions: int, profile: str | None = None, workflow: CompiledWorkflow = WORKFLOW
) -> dict[str, Any]:
    prefix = f"rbench-{uuid.uuid4().hex[:10]}"
    settings = settings_for(prefix, partitions)
    ensure_topics(admin_client(settings), internal_specs(settings))
    try:
        produced = produce(
            settings, runs, lambda text: print(text, end="", file=sys.stderr, flush=True), workflow
        )
        floor_s, floor_records = read_floor(settings)
        restored = restore(settings, profile, workflow)
    finally:
        delete_topics(settings)
    if floor_records != produced.records:
        raise RuntimeError(f"the floor read {floor_records} records of {produced.records}")
    if restored.runs != runs or restored.timers != runs:
        raise RuntimeError(
            f"restored {restored.runs} runs and {restored.timers} timers; expected {runs} each"
        )
    return {
        "runs": runs,
        "partitions": partitions,
        "topic_prefix": prefix,
        "records": produced.records,
        "value_bytes_per_record": produced.value_bytes / max(1, produced.records),
        "key_bytes_per_record": produced.key_bytes / max(1, produced.records),
        "floor_s": floor_s,
        "restore_s": restored.seconds,
        "restored_runs": restored.runs,
        "restored_timers": restored.timers,
        "restored_event_waits": restored.waiting_for_events,
        "floor_runs_per_s": runs / floor_s,
        "restore_runs_per_s": runs / restored.seconds,
        "restore_over_floor": restored.seconds / floor_s,
    }


def report(f: dict[str, Any]) -> str:
    return "\n".join(
        [
            f"router restore: {f['runs']:,} in-flight runs of linear-chain on {f['partitions']}"
            f" partition(s); changelog record {f['value_bytes_per_record']:,.0f} B value"
            f" + {f['key_bytes_per_record']:.0f} B key",
            "",
            "| read | seconds | runs/s | ÷ floor |",
            "| --- | ---: | ---: | ---: |",
            f"| floor: plain consumer, no decoding | {f['floor_s']:.2f}"
            f" | {f['floor_runs_per_s']:,.0f} | 1.00 |",
            f"| restore: read_changelog → load_record → reindex ({f['restored_runs']:,} runs,"
            f" {f['restored_timers']:,} timers) | {f['restore_s']:.2f} | {f['restore_runs_per_s']:,.0f}"
            f" | {f['restore_over_floor']:.2f} |",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0].replace("``", ""),
        epilog="Needs KAFKA_BOOTSTRAP_SERVERS (a broker; no PostgreSQL). Creates and deletes its own topics.",
    )
    parser.add_argument(
        "--runs", type=int, default=100_000, help="in-flight runs to restore (default 100,000)"
    )
    parser.add_argument("--partitions", type=int, default=1, help="router-state partitions (default 1)")
    parser.add_argument("--output", help="also write the figures to this JSON file")
    parser.add_argument("--profile", help="write a cProfile of the restore alone to this file")
    args = parser.parse_args()
    if not os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        parser.error("set KAFKA_BOOTSTRAP_SERVERS to a broker")
    figures = measure(args.runs, args.partitions, args.profile)
    print(report(figures))
    if args.output:
        with open(args.output, "w", encoding="utf-8") as fh:
            json.dump(figures, fh, indent=2)


if __name__ == "__main__":
    main()
