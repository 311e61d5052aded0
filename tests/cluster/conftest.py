"""A local three-node Kafka cluster (`switchyard dev up --brokers 3`'s shape) for these tests.

Started once per session on free loopback ports with its own state directory, beside whatever
broker the other tests use, and stopped at the end. ``kafka_bootstrap`` is overridden here, so the
shared engine fixtures (tests/fixtures/engine.py) run on the cluster.
"""

from __future__ import annotations

import random
import socket
from collections.abc import Iterator
from contextlib import ExitStack

import pytest

from services.devinfra.kafka_cluster import NODES, LocalCluster
from services.devinfra.kafka_local import LauncherError


def _free_port_run(count: int, attempts: int = 200) -> int:
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


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    kafka = LocalCluster(_free_port_run(2 * NODES), tmp_path_factory.mktemp("kafka-cluster"))
    try:
        kafka.start(progress=lambda msg: None)
    except LauncherError as exc:
        kafka.stop()
        pytest.fail(f"no Kafka cluster for these tests: {exc}", pytrace=False)
    yield kafka
    kafka.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(cluster: LocalCluster) -> str:
    return cluster.bootstrap
