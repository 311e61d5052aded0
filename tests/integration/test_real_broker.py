"""The infrastructure is real: Kafka transactions commit and abort, PostgreSQL runs SQL."""

from __future__ import annotations

from collections.abc import Callable

import psycopg
import pytest
from confluent_kafka import Consumer, Producer

from tests.fixtures.kafka import consume_until, create_topics, value_of

pytestmark = pytest.mark.integration


def test_read_committed_sees_only_committed_transactions(
    kafka_bootstrap: str, unique: str, make_consumer: Callable[..., Consumer]
) -> None:
    topic = f"test-txn-{unique}"
    create_topics(kafka_bootstrap, [topic])
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "transactional.id": f"txn-{unique}"})
    producer.init_transactions(60)
    producer.begin_transaction()
    for i in range(3):
        producer.produce(topic, value=f"committed-{i}".encode())
    producer.commit_transaction(30)
    producer.begin_transaction()
    for i in range(3):
        producer.produce(topic, value=f"aborted-{i}".encode())
    producer.flush(10)
    producer.abort_transaction(30)
    producer.begin_transaction()
    producer.produce(topic, value=b"marker")
    producer.commit_transaction(30)

    consumer = make_consumer([topic])
    seen = consume_until(consumer, lambda msgs: any(m.value() == b"marker" for m in msgs), timeout_s=60)
    values = [m.value() for m in seen]
    assert values == [b"committed-0", b"committed-1", b"committed-2", b"marker"]

    uncommitted = make_consumer([topic], **{"isolation.level": "read_uncommitted"})
    raw = consume_until(uncommitted, lambda msgs: any(m.value() == b"marker" for m in msgs), timeout_s=60)
    assert sum(1 for m in raw if value_of(m).startswith(b"aborted-")) == 3


def test_postgres_is_a_real_server(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        version = conn.execute("show server_version_num").fetchone()
        conn.execute("create table t (id int primary key)")
        conn.execute("insert into t values (1), (2)")
        count = conn.execute("select count(*) from t").fetchone()
    assert version is not None and int(version[0]) >= 140000
    assert count == (2,)
