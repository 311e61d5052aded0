"""Kafka client configuration: one place that knows our exactly-once settings."""

from __future__ import annotations

from typing import Any, TypeAlias

from services.bus.group_protocol import (
    CLASSIC_HEARTBEAT_INTERVAL_MS,
    CLASSIC_SESSION_TIMEOUT_MS,
    group_protocol,
)
from services.config import Settings

#: A librdkafka configuration: property name → value (strings, numbers, booleans, callbacks), as
#: confluent-kafka's clients take it.
ClientConfig: TypeAlias = dict[str, Any]


def consumer_config(settings: Settings, group_id: str, **overrides: Any) -> ClientConfig:
    """A group consumer's configuration, for the group protocol chosen for the cluster
    (:func:`services.bus.group_protocol.group_protocol`: with ``auto``, the broker is asked once)."""
    chosen = group_protocol(settings)
    conf = settings.kafka_config()
    conf.update(
        {
            "group.id": group_id,
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "max.poll.interval.ms": 300_000,
            "topic.metadata.refresh.interval.ms": 10_000,  # regex subscriptions see new tenants fast
        }
    )
    if chosen == "consumer":
        # KIP-848: the broker assigns (incrementally) and owns session timeout and heartbeat;
        # librdkafka refuses the classic settings below with this protocol.
        conf["group.protocol"] = "consumer"
    else:
        conf.update(
            {
                "partition.assignment.strategy": "cooperative-sticky",
                "session.timeout.ms": CLASSIC_SESSION_TIMEOUT_MS,
                "heartbeat.interval.ms": CLASSIC_HEARTBEAT_INTERVAL_MS,
            }
        )
    conf.update(overrides)
    return conf


#: A transactional producer's idle connections close after this long (see the comment below).
PRODUCER_IDLE_CLOSE_MS = 5_000
#: Longest reconnect backoff of a transactional producer: under half of PRODUCER_IDLE_CLOSE_MS.
PRODUCER_RECONNECT_BACKOFF_MAX_MS = 1_000


def transactional_producer_config(
    settings: Settings, transactional_id: str, **overrides: Any
) -> ClientConfig:
    conf = settings.kafka_config()
    conf.update(
        {
            "transactional.id": transactional_id,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 2,
            "compression.type": "lz4",
            # A crashed instance that never comes back blocks read_committed readers of its partitions
            # until its open transaction times out; keep that window short.
            "transaction.timeout.ms": settings.transaction_timeout_ms,
            # librdkafka's send_offsets_to_transaction can wait on a group coordinator whose
            # connection died in a broker restart (librdkafka #5456/#5511) until some broker
            # changes state. Idle connections closing provide such changes; the loop also replaces
            # a producer that lost the cluster (services/bus/txloop.py).
            "connections.max.idle.ms": PRODUCER_IDLE_CLOSE_MS,
            # The cost of that: an idle producer's connections (the transaction coordinator's
            # above all) close and reconnect every few seconds, and librdkafka doubles a broker's
            # reconnect backoff on every attempt unless the last one is more than
            # reconnect.backoff.max.ms old. With the default (10 s) the backoff grows to seconds
            # and the first transaction after idle waits for it ("Delaying next reconnect by
            # 4679ms": a 5.2 s commit; 4-9 s from trigger to done over three hops). Below half the
            # idle close, every reconnect after an idle close starts from the initial backoff,
            # i.e. at once (and a broker outage is retried every second at most).
            "reconnect.backoff.max.ms": PRODUCER_RECONNECT_BACKOFF_MAX_MS,
        }
    )
    conf.update(overrides)
    return conf


def plain_producer_config(settings: Settings, **overrides: Any) -> ClientConfig:
    conf = settings.kafka_config()
    conf.update({"enable.idempotence": True, "acks": "all", "linger.ms": 5, "compression.type": "lz4"})
    conf.update(overrides)
    return conf


def headers_for(
    tenant: str | None, run_id: str | None, correlation_id: str | None
) -> list[tuple[str, str | bytes | None]]:
    """Identity headers carried by every record we produce."""
    return [
        (name, value.encode())
        for name, value in (("tenant", tenant), ("run_id", run_id), ("correlation_id", correlation_id))
        if value
    ]
