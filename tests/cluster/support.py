"""A three-node cluster for tests (tests/cluster and the cluster fault scenario): free ports, start, stop."""

from __future__ import annotations

import random
import socket
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from services.devinfra.kafka_cluster import NODES, LocalCluster


def free_port_run(count: int, attempts: int = 200) -> int:
    """A first port such that it and the ``count - 1`` above it are free on loopback now.

    Taken below the ephemeral range (32768+), where every client connection on this busy machine
    takes its local port: a port probed free there is often gone by the time a JVM binds it."""
    rng = random.Random()
    for _ in range(attempts):
        base = rng.randrange(20000, 32768 - count)
        if base + count > 29000 and base < 29400:  # the dev brokers' fixed ports (29092, 29192, 29292...)
            continue
        try:
            with ExitStack() as stack:
                for port in range(base, base + count):
                    sock = stack.enter_context(socket.socket())
                    sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
    raise RuntimeError(f"no run of {count} free ports found")


@contextmanager
def running_cluster(home: Path) -> Iterator[LocalCluster]:
    """A started cluster on free ports with its state under ``home``; stopped on exit, even when
    its start failed half way."""
    cluster = LocalCluster(free_port_run(2 * NODES), home)
    try:
        cluster.start(progress=lambda _msg: None)
        yield cluster
    finally:
        cluster.stop()


def leaders(bootstrap: str, prefix: str) -> Counter[int]:
    """node id -> how many partitions of the topics under ``prefix`` it leads."""
    metadata = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0}).list_topics(timeout=15)
    return Counter(
        partition.leader
        for name, topic in metadata.topics.items()
        if name.startswith(prefix + ".")
        for partition in topic.partitions.values()
        if partition.leader >= 0
    )


def java_hash(text: str) -> int:
    """Java's ``String.hashCode`` (over UTF-16 code units), which Kafka uses to place a
    transactional id or group id on a partition of its internal topics."""
    h = 0
    data = text.encode("utf-16-be")
    for i in range(0, len(data), 2):
        h = (31 * h + int.from_bytes(data[i : i + 2], "big")) & 0xFFFFFFFF
    return h - (1 << 32) if h >= 1 << 31 else h


def coordinator_partition(key: str, partitions: int) -> int:
    """Kafka's ``Utils.abs(key.hashCode()) % partitions``: the partition of ``__transaction_state``
    (transactional ids) or ``__consumer_offsets`` (group ids) whose leader coordinates ``key``."""
    h = java_hash(key)
    return (0 if h == -(1 << 31) else abs(h)) % partitions


def _internal_leader(bootstrap: str, topic: str, key: str) -> int:
    metadata = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0}).list_topics(topic, timeout=15)
    partitions = metadata.topics[topic].partitions
    return int(partitions[coordinator_partition(key, len(partitions))].leader)


def transaction_coordinator(bootstrap: str, transactional_id: str) -> int:
    """Node id of the transaction coordinator of ``transactional_id`` now (confluent-kafka has no
    describe-transactions call: this is the leader of its ``__transaction_state`` partition)."""
    return _internal_leader(bootstrap, "__transaction_state", transactional_id)


def offsets_leader(bootstrap: str, group: str) -> int:
    """Leader of the ``__consumer_offsets`` partition of ``group`` (by the same placement rule)."""
    return _internal_leader(bootstrap, "__consumer_offsets", group)


def group_coordinator(bootstrap: str, group: str) -> int:
    """Node id of the coordinator of consumer group ``group`` now, as the broker reports it."""
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    return int(admin.describe_consumer_groups([group], request_timeout=10)[group].result(15).coordinator.id)


def under_replicated(bootstrap: str, prefix: str | None = None) -> int:
    """Partitions of Kafka's transaction and offsets topics, and of the topics under ``prefix``,
    whose in-sync replicas are fewer than their replicas (or that have no leader)."""
    metadata = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0}).list_topics(timeout=15)
    return sum(
        1
        for name, topic in metadata.topics.items()
        if name in ("__transaction_state", "__consumer_offsets")
        or (prefix is not None and name.startswith(prefix + "."))
        for partition in topic.partitions.values()
        if partition.leader < 0 or len(partition.isrs) < len(partition.replicas)
    )


def warm_up(bootstrap: str, timeout_s: float = 240) -> float:
    """Have a fresh cluster create its transaction state and offsets topics (made on first use,
    replicated 3) and bring every replica in sync, so no scenario times that; returns the seconds.
    """
    started = time.monotonic()
    deadline = started + timeout_s

    def until_deadline(call: Callable[[float], object]) -> None:
        while True:  # NOT_COORDINATOR, COORDINATOR_LOAD_IN_PROGRESS...: the topics are being made
            try:
                call(max(1.0, deadline - time.monotonic()))
                return
            except KafkaException:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": f"warm-up-{uuid.uuid4().hex}"})
    until_deadline(producer.init_transactions)
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"warm-up-{uuid.uuid4().hex}"})
    try:
        until_deadline(lambda t: consumer.committed([TopicPartition("__warm_up", 0)], timeout=t))
    finally:
        consumer.close()
    while True:
        topics = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0}).list_topics(timeout=15).topics
        if {"__transaction_state", "__consumer_offsets"} <= set(topics) and not under_replicated(bootstrap):
            return time.monotonic() - started
        if time.monotonic() > deadline:
            raise TimeoutError(f"the cluster's internal topics not in sync after {timeout_s:.0f}s")
        time.sleep(0.5)
