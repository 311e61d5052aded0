"""Two projector instances, rebalances in the middle of a load: PostgreSQL equals the Kafka log.

Instance A starts alone; B joins while the load is being produced (A gives up partitions
mid-stream), then A leaves while the load goes on (B takes everything). Afterwards every record
of the log is in ``run_events`` exactly once, at its own coordinates, the stored offsets are the
log's ends, and re-projecting the log from scratch (``audit rebuild``) gives the same tables.
The instances read the dead-letter topic too, in a group of its own: each topic is shared on its
own, so both instances own history partitions (one group for both topics would balance the
*total* partition count and could leave one instance every history partition).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from confluent_kafka import Consumer, TopicPartition

from services.bus.clients import consumer_config
from services.bus.fetch import consume_ready
from services.config import Settings
from services.contracts.serde import decode
from services.projector.compare import compare_schemas, current_schema
from services.projector.db import make_engine
from services.projector.rebuild import (
    capture_end_offsets,
    create_schema,
    drop_schema,
    new_schema_name,
    rebuild,
)
from services.projector.runner import Projector
from tests.integration.test_projector_support import (
    RunHistory,
    create_projector_topics,
    encoded,
    produce,
    rows,
    scalar,
    settings_for,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

PARTITIONS = 4
RUNS_PER_CHUNK = 40
CHUNKS = 6


@pytest.fixture
def engine(database_url: str) -> Iterator[sa.Engine]:
    eng = make_engine(database_url)
    yield eng
    eng.dispose()


def chain(steps: int = 4) -> RunHistory:
    h = RunHistory(tenant="acme").pending().started()
    for i in range(steps):
        h.scheduled(f"s{i}").succeeded(f"s{i}")
    h.add("run_succeeded", state="succeeded")
    return h


class Instance:
    """A projector in its own thread, started and stopped by the test (small batches: many commits)."""

    def __init__(self, projector: Projector) -> None:
        self.projector = projector
        self.stop, self.ready = threading.Event(), threading.Event()
        self.failure: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.projector.run(self.stop, self.ready)
        except BaseException as exc:
            self.failure.append(exc)
            self.ready.set()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(30)
        assert not self.thread.is_alive(), "projector did not stop"
        assert not self.failure, self.failure


def log_records(settings: Settings, topic: str, count: int) -> set[tuple[str, int, int]]:
    """(event_id, partition, offset) of the first ``count`` committed records of ``topic``."""
    consumer = Consumer(consumer_config(settings, f"reader-{settings.topic_prefix}"))
    consumer.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
    out: set[tuple[str, int, int]] = set()
    deadline = time.monotonic() + 60
    try:
        while len(out) < count and time.monotonic() < deadline:
            for msg in consume_ready(consumer, 500, 0.5):
                assert msg.error() is None, msg.error()
                partition, offset = msg.partition(), msg.offset()
                assert partition is not None and offset is not None
                _, record = decode(msg.value(), expected="RunEvent")
                out.add((str(record["event_id"]), partition, offset))
    finally:
        consumer.close()
    return out


def test_two_instances_with_rebalances_mid_load_project_the_log_exactly_once(
    kafka_bootstrap: str, database_url: str, unique: str, engine: sa.Engine
) -> None:
    settings = settings_for(kafka_bootstrap, database_url, unique, partitions=PARTITIONS)
    events_topic, dlq_topic = create_projector_topics(settings)
    group = f"scale-{unique}"
    histories = [[chain() for _ in range(RUNS_PER_CHUNK)] for _ in range(CHUNKS)]
    total = sum(len(h.events) for chunk in histories for h in chunk)

    a = Instance(Projector(settings, group_id=group, batch_size=7, poll_timeout_s=0.2))
    b: Instance | None = None
    try:
        assert a.ready.wait(30), "first instance never got its assignment"
        for chunk in histories[:2]:
            produce(settings, events_topic, encoded(*chunk))
        # B joins mid-load: A's partitions are split while it is still writing (7 records a batch).
        second = b = Instance(Projector(settings, group_id=group, batch_size=7, poll_timeout_s=0.2))

        def owned(instance: Instance, topic: str) -> set[int]:
            return {p for t, p in instance.projector.assigned if t == topic}

        wait_for(
            lambda: all(owned(i, t) for i in (a, second) for t in (events_topic, dlq_topic)),
            timeout_s=60,
            what="history and dead-letter partitions split between the two instances",
        )
        # Each topic is balanced on its own: two history partitions each, whatever the dlq holds.
        assert len(owned(a, events_topic)) == len(owned(second, events_topic)) == PARTITIONS // 2
        assert not owned(a, events_topic) & owned(second, events_topic)
        assert not owned(a, dlq_topic) & owned(second, dlq_topic)
        for chunk in histories[2:4]:
            produce(settings, events_topic, encoded(*chunk))
        # A leaves mid-load: B takes its partitions over from the offsets stored in PostgreSQL.
        a.close()
        wait_for(
            lambda: len(second.projector.assigned_partitions) == PARTITIONS,
            timeout_s=60,
            what="the remaining instance owns every partition",
        )
        for chunk in histories[4:]:
            produce(settings, events_topic, encoded(*chunk))
        wait_for(
            lambda: scalar(engine, "select count(*) from run_events") == total,
            timeout_s=90,
            what="every event projected",
        )
        ends = capture_end_offsets(settings)
    finally:
        if not a.stop.is_set():
            a.close()
        if b is not None:
            b.close()

    # Exactly the log: every record once, at its own coordinates; offsets just past the last one.
    log = log_records(settings, events_topic, total)
    assert len(log) == total
    projected = {
        (r.event_id, r.kafka_partition, r.kafka_offset)
        for r in rows(engine, "select event_id, kafka_partition, kafka_offset from run_events")
    }
    assert projected == log
    last: dict[int, int] = {}
    for _, partition, offset in log:
        last[partition] = max(last.get(partition, 0), offset + 1)
    stored = rows(
        engine, "select partition, next_offset from consumer_offsets where topic = :t", t=events_topic
    )
    assert {r.partition: r.next_offset for r in stored} == last
    assert scalar(engine, "select count(*) from runs where state = 'succeeded'") == RUNS_PER_CHUNK * CHUNKS
    assert (
        scalar(engine, "select count(*) from steps where state = 'succeeded'") == RUNS_PER_CHUNK * CHUNKS * 4
    )
    assert scalar(engine, "select count(*) from attempts") == RUNS_PER_CHUNK * CHUNKS * 4
    assert scalar(engine, "select count(*) from projector_rejects") == 0
    assert scalar(engine, "select count(*) from runs where last_seq <> 11") == 0

    # And the same tables as one projector reading the whole log from scratch.
    assert settings.database_url
    schema = new_schema_name()
    create_schema(engine, settings.database_url, schema)
    rebuilt = make_engine(settings.database_url, schema=schema)
    try:
        rebuild(settings, rebuilt, ends, batch_size=500)
        report = compare_schemas(engine, current_schema(engine), schema, ends.end)
    finally:
        rebuilt.dispose()
        drop_schema(engine, schema)
    assert report.equal, report.as_dict()
