"""A local three-node Kafka cluster (`switchyard dev up --brokers 3`'s shape) for these tests.

Started once per session on free loopback ports with its own state directory, beside whatever
broker the other tests use, and stopped at the end. ``kafka_bootstrap`` is overridden here, so the
shared engine fixtures (tests/fixtures/engine.py) run on the cluster.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from services.devinfra.kafka_cluster import LocalCluster
from services.devinfra.kafka_local import LauncherError
from tests.cluster.support import running_cluster


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    try:
        with running_cluster(tmp_path_factory.mktemp("kafka-cluster")) as kafka:
            yield kafka
    except LauncherError as exc:
        pytest.fail(f"no Kafka cluster for these tests: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def kafka_bootstrap(cluster: LocalCluster) -> str:
    return cluster.bootstrap
