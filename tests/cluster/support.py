"""A three-node cluster for tests (tests/cluster and the cluster fault scenario): free ports, start, stop."""

from __future__ import annotations

import random
import socket
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

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
